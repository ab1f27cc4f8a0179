//! Choreography: services react to each other's events without a coordinator. A
//! reaction is a consumer handler — "on event X, send command Y / publish Z" — so it runs
//! on the consumer router with its retries, dead letters and inbox; [`react`] only adds
//! what every reaction needs: the outgoing messages carry the incoming event's correlation
//! id (or its id) and the event as their causation, and are published only if the
//! handler succeeds.
//!
//! ```
//! use runnel::consumer::Router;
//! use runnel::core::{Message, TopicName};
//! use runnel::saga::choreography::react;
//!
//! // Billing: when an order is placed, charge it; when it is cancelled, refund it.
//! let billing = Router::new()
//!     .route("OrderPlaced", react(|event: &Message| {
//!         let order: serde_json::Value = event.payload_json()?;
//!         Ok(vec![(
//!             TopicName::new("payments.commands")?,
//!             Message::json("ChargePayment", &serde_json::json!({"order": order["order"]})),
//!         )])
//!     }))
//!     .route("OrderCancelled", react(|event: &Message| {
//!         Ok(vec![(
//!             TopicName::new("payments.commands")?,
//!             Message::json("RefundPayment", &event.payload_json()?),
//!         )])
//!     }));
//! assert!(billing.routes("OrderPlaced"));
//! ```

use std::sync::Arc;

use futures_util::future::BoxFuture;

use runnel_core::{Message, TopicName};

use crate::consumer::{BoxError, HandlerContext, HandlerError};

/// A handler that turns each event into messages to publish (commands to send, events to
/// publish), stamped with the event's correlation and causation. An error from `react`
/// is permanent (the event is dead-lettered): it saw the same event every time.
pub fn react<F>(
    react: F,
) -> impl Fn(HandlerContext) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static
where
    F: Fn(&Message) -> Result<Vec<(TopicName, Message)>, BoxError> + Send + Sync + 'static,
{
    let react = Arc::new(react);
    move |ctx: HandlerContext| {
        let react = Arc::clone(&react);
        Box::pin(async move {
            let out = react(ctx.message()).map_err(HandlerError::permanent)?;
            for (topic, mut message) in out {
                let incoming = ctx.message();
                if message.correlation_id.is_none() {
                    message.correlation_id = Some(
                        incoming
                            .correlation_id
                            .clone()
                            .unwrap_or_else(|| incoming.id.clone()),
                    );
                }
                if message.causation_id.is_none() {
                    message.causation_id = Some(incoming.id.clone());
                }
                ctx.publish(&topic, vec![message]).await?;
            }
            Ok(())
        })
    }
}

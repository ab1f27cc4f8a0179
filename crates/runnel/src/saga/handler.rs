//! The consumer handler that feeds a saga's replies from its reply topic into its
//! runtime, with the error classes the consumer router acts on.

use std::sync::Arc;

use crate::consumer::layers::consumer_name;
use crate::consumer::{HandlerContext, HandlerError};

use super::definition::{OrphanPolicy, SagaData};
use super::runtime::{SagaError, SagaRuntime, METRIC_IGNORED};

/// Attempts a reply for an unknown instance gets (its instance's start may not have
/// committed yet) before the saga's [`OrphanPolicy`] applies.
pub const ORPHAN_ATTEMPTS: u32 = 5;

/// A handler for the consumer of `runtime`'s reply topic: each reply settles its step
/// once (marked in the inbox under the consumer's name, `{topic}/{group}`). Replies that
/// are not the saga's are dead-lettered; a reply for an unknown instance is retried, then
/// dead-lettered or discarded by the saga's [`OrphanPolicy`]; store trouble is retried.
pub fn reply_handler<D: SagaData>(
    runtime: SagaRuntime<D>,
) -> impl Fn(HandlerContext) -> futures_util::future::BoxFuture<'static, Result<(), HandlerError>>
       + Send
       + Sync
       + 'static {
    let runtime = Arc::new(runtime);
    move |ctx: HandlerContext| {
        let runtime = Arc::clone(&runtime);
        Box::pin(async move {
            let handler = consumer_name(ctx.topic(), ctx.group());
            match runtime.handle_reply(ctx.message(), &handler).await {
                Ok(_) => Ok(()),
                Err(e @ SagaError::NotAReply { .. }) => Err(HandlerError::permanent(e)),
                Err(e @ SagaError::UnknownInstance { .. }) => {
                    if ctx.attempt() < ORPHAN_ATTEMPTS {
                        return Err(HandlerError::retryable(e));
                    }
                    match runtime.definition().orphans {
                        OrphanPolicy::DeadLetter => Err(HandlerError::permanent(e)),
                        OrphanPolicy::Discard => {
                            metrics::counter!(
                                METRIC_IGNORED,
                                "saga" => runtime.definition().name().to_string(),
                                "reason" => "orphan"
                            )
                            .increment(1);
                            tracing::warn!(
                                saga = %runtime.definition().name(),
                                id = %ctx.message().id,
                                error = %e,
                                "discarding a reply for an unknown instance"
                            );
                            Ok(())
                        }
                    }
                }
                Err(e) if e.is_transient() => Err(HandlerError::retryable(e)),
                Err(e) => Err(HandlerError::permanent(e)),
            }
        })
    }
}

//! The [`CommandBus`]: one handler per command type, dispatched by type or by name.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use runnel_core::Metadata;
use serde_json::Value;
use tracing::Instrument;

use super::envelope::CommandEnvelope;
use super::handler::{Command, CommandHandler, FnCommandHandler};
use crate::bus::registry::{JsonCall, JsonFuture, Registry};
use crate::bus::DispatchError;

/// The future a typed command handler returns once its error is boxed.
type TypedFuture<C> = BoxFuture<'static, Result<<C as Command>::Output, DispatchError>>;

/// The typed side of a registration: the handler with its error already boxed.
struct TypedCommandHandler<C: Command> {
    call: Arc<dyn Fn(CommandEnvelope<C>) -> TypedFuture<C> + Send + Sync>,
}

/// Routes each command to its one registered handler.
///
/// Dispatch by type ([`CommandBus::dispatch`]) for Rust callers; by name with a JSON payload
/// ([`CommandBus::dispatch_json`]) for the HTTP API and the CLI. A payload that does not
/// deserialize is [`DispatchError::InvalidPayload`] and nothing runs. Cloning is cheap and every
/// clone is the same bus.
///
/// ```
/// use runnel::{Command, CommandBus, CommandEnvelope};
/// use runnel::core::Metadata;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Double {
///     n: i64,
/// }
///
/// impl Command for Double {
///     const NAME: &'static str = "Double";
///     type Output = i64;
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let bus = CommandBus::new();
/// bus.register_fn(|env: CommandEnvelope<Double>| async move {
///     Ok::<_, std::convert::Infallible>(env.command.n * 2)
/// })
/// .unwrap();
///
/// assert_eq!(bus.send(Double { n: 21 }).await.unwrap(), 42);
/// let out = bus
///     .dispatch_json("Double", serde_json::json!({"n": 4}), Metadata::default())
///     .await
///     .unwrap();
/// assert_eq!(out, serde_json::json!(8));
/// # });
/// ```
#[derive(Clone, Default)]
pub struct CommandBus {
    registry: Arc<Registry<CommandEnvelope<Value>>>,
}

impl fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBus")
            .field("commands", &self.names())
            .finish()
    }
}

impl CommandBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for commands of type `C`. A second handler for the same name is
    /// [`DispatchError::AlreadyRegistered`].
    pub fn register<C, H>(&self, handler: H) -> Result<(), DispatchError>
    where
        C: Command,
        H: CommandHandler<C>,
    {
        let handler = Arc::new(handler);
        let typed = TypedCommandHandler::<C> {
            call: Arc::new(move |envelope: CommandEnvelope<C>| {
                let handler = Arc::clone(&handler);
                Box::pin(async move {
                    handler
                        .handle(envelope)
                        .await
                        .map_err(|e| DispatchError::Handler(Box::new(e)))
                })
            }),
        };
        let call = Arc::clone(&typed.call);
        let json: JsonCall<CommandEnvelope<Value>> =
            Arc::new(move |envelope: CommandEnvelope<Value>| -> JsonFuture {
                let call = Arc::clone(&call);
                Box::pin(async move {
                    let CommandEnvelope {
                        command_id,
                        command,
                        metadata,
                    } = envelope;
                    let command: C = serde_json::from_value(command).map_err(|e| {
                        DispatchError::InvalidPayload {
                            name: C::NAME.to_string(),
                            message: e.to_string(),
                        }
                    })?;
                    let output = call(CommandEnvelope {
                        command_id,
                        command,
                        metadata,
                    })
                    .await?;
                    serde_json::to_value(output).map_err(|e| DispatchError::EncodeOutput {
                        name: C::NAME.to_string(),
                        message: e.to_string(),
                    })
                })
            });
        self.registry
            .insert(C::NAME, std::any::type_name::<C>(), Arc::new(typed), json)
    }

    /// Registers an async closure as the handler for commands of type `C`.
    pub fn register_fn<C, F, Fut, E>(&self, f: F) -> Result<(), DispatchError>
    where
        C: Command,
        F: Fn(CommandEnvelope<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.register::<C, _>(FnCommandHandler::new(f))
    }

    /// Runs `envelope` through the handler registered for `C`.
    pub async fn dispatch<C: Command>(
        &self,
        envelope: CommandEnvelope<C>,
    ) -> Result<C::Output, DispatchError> {
        let handler = self
            .registry
            .typed::<TypedCommandHandler<C>>(C::NAME, std::any::type_name::<C>())?;
        let span =
            tracing::debug_span!("command", name = C::NAME, command_id = %envelope.command_id);
        (handler.call)(envelope).instrument(span).await
    }

    /// Wraps `command` in a fresh [`CommandEnvelope`] and dispatches it.
    pub async fn send<C: Command>(&self, command: C) -> Result<C::Output, DispatchError> {
        self.dispatch(CommandEnvelope::new(command)).await
    }

    /// Dispatches the command registered as `name`, deserialized from `payload`, with a
    /// fresh command id and `metadata`; returns the handler's output as JSON.
    pub async fn dispatch_json(
        &self,
        name: &str,
        payload: Value,
        metadata: Metadata,
    ) -> Result<Value, DispatchError> {
        self.dispatch_json_envelope(name, CommandEnvelope::new(payload).with_metadata(metadata))
            .await
    }

    /// Like [`CommandBus::dispatch_json`], with the caller's command id (for example an
    /// idempotency key from an HTTP header).
    pub async fn dispatch_json_envelope(
        &self,
        name: &str,
        envelope: CommandEnvelope<Value>,
    ) -> Result<Value, DispatchError> {
        let call = self.registry.json(name)?;
        let span = tracing::debug_span!("command", name, command_id = %envelope.command_id);
        call(envelope).instrument(span).await
    }

    /// The registered command names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.registry.names()
    }

    /// Whether a handler is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.registry.contains(name)
    }
}

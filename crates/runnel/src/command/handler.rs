//! The [`Command`] and [`CommandHandler`] traits.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::envelope::CommandEnvelope;

/// A command type the [`crate::CommandBus`] can route.
///
/// `NAME` is how the command is dispatched by name (HTTP API, CLI); it must be unique on
/// a bus. The payload of a dispatch by name is the command's serde JSON form.
///
/// ```
/// use runnel::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct RenameProduct {
///     product_id: String,
///     name: String,
/// }
///
/// impl Command for RenameProduct {
///     const NAME: &'static str = "RenameProduct";
///     type Output = ();
/// }
/// assert_eq!(RenameProduct::NAME, "RenameProduct");
/// ```
pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name the command is registered and dispatched under.
    const NAME: &'static str;
    /// What a successful handling returns to the sender.
    type Output: Serialize + Send + 'static;
}

/// Handles one command type.
///
/// Closures can be registered directly with [`crate::CommandBus::register_fn`].
///
/// ```
/// use runnel::{async_trait, Command, CommandBus, CommandEnvelope, CommandHandler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Greet {
///     name: String,
/// }
///
/// impl Command for Greet {
///     const NAME: &'static str = "Greet";
///     type Output = String;
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("names may not be empty")]
/// struct EmptyName;
///
/// struct Greeter;
///
/// #[async_trait]
/// impl CommandHandler<Greet> for Greeter {
///     type Error = EmptyName;
///     async fn handle(&self, envelope: CommandEnvelope<Greet>) -> Result<String, EmptyName> {
///         if envelope.command.name.is_empty() {
///             return Err(EmptyName);
///         }
///         Ok(format!("hello, {}", envelope.command.name))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let bus = CommandBus::new();
/// bus.register(Greeter).unwrap();
/// let greeting = bus.send(Greet { name: "Ada".into() }).await.unwrap();
/// assert_eq!(greeting, "hello, Ada");
/// let err = bus.send(Greet { name: String::new() }).await.unwrap_err();
/// assert!(err.downcast_handler_error::<EmptyName>().is_some());
/// # });
/// ```
#[async_trait]
pub trait CommandHandler<C: Command>: Send + Sync + 'static {
    /// Why handling fails; the bus keeps it inspectable inside [`crate::DispatchError::Handler`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Handles one command.
    async fn handle(&self, envelope: CommandEnvelope<C>) -> Result<C::Output, Self::Error>;
}

/// A closure as a [`CommandHandler`] (see [`crate::CommandBus::register_fn`]).
pub(crate) struct FnCommandHandler<F, C, Fut, E> {
    f: F,
    // `fn(..) -> ..`: only marks the types; keeps the handler Send + Sync whatever they are.
    _types: PhantomData<fn(C) -> (Fut, E)>,
}

impl<F, C, Fut, E> FnCommandHandler<F, C, Fut, E> {
    pub(crate) fn new(f: F) -> Self {
        FnCommandHandler {
            f,
            _types: PhantomData,
        }
    }
}

#[async_trait]
impl<F, C, Fut, E> CommandHandler<C> for FnCommandHandler<F, C, Fut, E>
where
    C: Command,
    F: Fn(CommandEnvelope<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    async fn handle(&self, envelope: CommandEnvelope<C>) -> Result<C::Output, E> {
        (self.f)(envelope).await
    }
}

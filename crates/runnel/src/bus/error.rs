//! [`DispatchError`]: why a dispatch or a registration failed.

/// A handler's own error, boxed so one bus can carry handlers of different error types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the [`crate::CommandBus`] and [`crate::QueryBus`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// Nothing is registered under this name. Nothing ran.
    #[error(
        "no handler is registered for {name:?}; check the name (the bus lists its names) or \
         register a handler at startup"
    )]
    NoHandler { name: String },

    /// A second handler for the same name. Each command or query has exactly one handler.
    #[error("a handler for {name:?} is already registered; each name has exactly one handler")]
    AlreadyRegistered { name: String },

    /// The name is empty.
    #[error("a command or query type has an empty NAME; give it a unique, non-empty name")]
    InvalidName,

    /// The JSON payload does not deserialize into the command or query type. Nothing ran.
    #[error(
        "the payload for {name:?} does not match its schema: {message}; fix the JSON and send \
         it again (nothing was run)"
    )]
    InvalidPayload { name: String, message: String },

    /// The name is registered for a different Rust type: two types share one `NAME`.
    #[error(
        "{name:?} is registered for {registered}, not {requested}: two types share one NAME; \
         give each a unique NAME"
    )]
    TypeMismatch {
        name: String,
        registered: &'static str,
        requested: &'static str,
    },

    /// The handler succeeded, but its result could not be serialized to JSON. For a
    /// command, its effects happened: do not blindly send it again.
    #[error(
        "the handler for {name:?} succeeded but its result cannot be serialized to JSON: \
         {message}; the command's effects are stored, so do not resend it blindly"
    )]
    EncodeOutput { name: String, message: String },

    /// The handler failed. The handler's own error is inside: inspect it with
    /// [`DispatchError::handler_error`] or [`DispatchError::downcast_handler_error`].
    #[error(transparent)]
    Handler(BoxError),
}

impl DispatchError {
    /// The handler's own error, if the handler failed.
    pub fn handler_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            DispatchError::Handler(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The handler's own error as `E`, if the handler failed with an `E`.
    ///
    /// ```
    /// use runnel::DispatchError;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("out of stock")]
    /// struct OutOfStock;
    ///
    /// let err = DispatchError::Handler(Box::new(OutOfStock));
    /// assert!(err.downcast_handler_error::<OutOfStock>().is_some());
    /// assert_eq!(err.to_string(), "out of stock");
    /// ```
    pub fn downcast_handler_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.handler_error()?.downcast_ref::<E>()
    }

    /// Whether nothing ran because the input was wrong (unknown name or bad payload): the
    /// caller's mistake, worth a 4xx rather than a 5xx.
    pub fn is_rejected_input(&self) -> bool {
        matches!(
            self,
            DispatchError::NoHandler { .. } | DispatchError::InvalidPayload { .. }
        )
    }
}

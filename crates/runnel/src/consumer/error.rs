//! Errors of the consumer router: [`HandlerError`] (what a handler returns, classified as
//! retryable or permanent), the [`Classify`] hook, the router's own failure reasons
//! ([`RouterFailure`]) and [`ConsumerError`] (starting and stopping a consumer).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use runnel_core::message::BusError;
use runnel_core::StoreError;

/// A boxed error of any type.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What the router does with a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Worth trying again (a timeout, an unavailable dependency): retried with backoff,
    /// dead-lettered after the last attempt.
    Retryable,
    /// Will fail the same way every time (malformed payload, a business rule): skips the
    /// remaining attempts and goes straight to the dead-letter store.
    Permanent,
    /// Not the message's fault and not a failed attempt (the dedup or inbox store is down,
    /// another consumer is handling the same message, shutdown interrupted a backoff): the
    /// delivery is nacked so the transport redelivers it after `after`; never dead-lettered.
    Redeliver { after: Option<Duration> },
    /// Handling never started or the delivery was lost (shutdown before its turn, lease
    /// taken over): the delivery is left unsettled and the transport redelivers it after
    /// its ack timeout. Nothing is acked.
    Abandoned,
}

/// Why a handler (or a layer on its behalf) failed, and whether trying again may help.
///
/// Build one explicitly with [`HandlerError::retryable`] or [`HandlerError::permanent`], or
/// let `?` convert any `std::error::Error`: such *unclassified* errors go through the
/// [`Classify`] hook of the retry layer (by default they are retryable).
///
/// ```
/// use runnel::consumer::{ErrorKind, HandlerError};
///
/// fn parse(text: &str) -> Result<u32, HandlerError> {
///     // A malformed number will never parse: do not retry it.
///     text.parse::<u32>().map_err(HandlerError::permanent)
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), ErrorKind::Permanent);
///
/// fn io() -> Result<(), HandlerError> {
///     Err(std::io::Error::other("connection reset"))?; // unclassified, retryable by default
///     Ok(())
/// }
/// let e = io().unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Retryable);
/// assert!(!e.is_classified());
/// ```
pub struct HandlerError {
    kind: ErrorKind,
    /// Whether `kind` was chosen on purpose (a constructor or the classifier) rather than
    /// defaulted by a `?` conversion.
    classified: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::with_kind(ErrorKind::Retryable, error)
    }

    /// A failure that retrying cannot fix: dead-lettered at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::with_kind(ErrorKind::Permanent, error)
    }

    /// Hands the delivery back to the transport, to come again after `after` (not counted
    /// as a failed attempt, never dead-lettered). For a handler whose dependency is not
    /// ready yet, or the router when its own stores are unavailable.
    pub fn redeliver(error: impl Into<BoxError>, after: Option<Duration>) -> Self {
        Self::with_kind(ErrorKind::Redeliver { after }, error)
    }

    /// An error whose kind is left to the [`Classify`] hook (what `?` produces).
    pub fn unclassified(error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: ErrorKind::Retryable,
            classified: false,
            source: error.into(),
        }
    }

    pub(crate) fn abandoned(error: impl Into<BoxError>) -> Self {
        Self::with_kind(ErrorKind::Abandoned, error)
    }

    fn with_kind(kind: ErrorKind, error: impl Into<BoxError>) -> Self {
        HandlerError {
            kind,
            classified: true,
            source: error.into(),
        }
    }

    /// What the router does with it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the kind was chosen explicitly (by a constructor or a [`Classify`] hook).
    pub fn is_classified(&self) -> bool {
        self.classified
    }

    /// The same error with its kind decided (what the retry layer does with the
    /// [`Classify`] hook's answer).
    pub fn classified_as(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self.classified = true;
        self
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// The underlying error, owned.
    pub fn into_error(self) -> BoxError {
        self.source
    }

    /// The error and its chain of causes, `": "`-separated (what dead letters record).
    pub fn report(&self) -> String {
        let mut text = self.source.to_string();
        let mut cause = self.source.source();
        while let Some(c) = cause {
            let next = c.to_string();
            // Many errors repeat their source in their own message; skip the echo.
            if !text.ends_with(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cause = c.source();
        }
        text
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("classified", &self.classified)
            .field("error", &self.source)
            .finish()
    }
}

// Like `anyhow::Error`, `HandlerError` is deliberately not an `std::error::Error` itself, so
// that `?` can convert every error type into it.
impl<E> From<E> for HandlerError
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        HandlerError::unclassified(error)
    }
}

/// Decides whether an unclassified error (one a handler returned through `?`) is worth
/// retrying. Errors built with [`HandlerError::retryable`] or [`HandlerError::permanent`]
/// are never reclassified.
///
/// Closures implement it:
///
/// ```
/// use runnel::consumer::{Classify, ErrorKind};
///
/// let classify = |e: &(dyn std::error::Error + 'static)| {
///     if e.is::<serde_json::Error>() { ErrorKind::Permanent } else { ErrorKind::Retryable }
/// };
/// let bad_json = serde_json::from_str::<u32>("x").unwrap_err();
/// assert_eq!(classify.classify(&bad_json), ErrorKind::Permanent);
/// ```
pub trait Classify: Send + Sync + 'static {
    /// The kind of `error`.
    fn classify(&self, error: &(dyn StdError + 'static)) -> ErrorKind;
}

impl<F> Classify for F
where
    F: Fn(&(dyn StdError + 'static)) -> ErrorKind + Send + Sync + 'static,
{
    fn classify(&self, error: &(dyn StdError + 'static)) -> ErrorKind {
        self(error)
    }
}

/// The default [`Classify`]: every unclassified error is retryable, except a
/// `serde_json::Error` (a payload that does not decode will never decode).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {
    fn classify(&self, error: &(dyn StdError + 'static)) -> ErrorKind {
        if error.is::<serde_json::Error>() {
            ErrorKind::Permanent
        } else {
            ErrorKind::Retryable
        }
    }
}

/// Failures the router itself reports on a handler's behalf (the source of a
/// [`HandlerError`] built by a layer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterFailure {
    /// The attempt ran longer than the handler timeout (counts as a retryable failure).
    #[error("the handler timed out after {after:?}; raise the consumer's handler timeout if it needs longer")]
    TimedOut { after: Duration },
    /// The handler panicked (counts as a retryable failure).
    #[error("the handler panicked: {message}")]
    Panicked { message: String },
    /// The handler published, but no publisher was configured on the consumer.
    #[error("the handler published a message but the consumer has no publisher; set one with `ConsumerBuilder::publisher`")]
    NoPublisher,
    /// The handler published after it returned (from a task it spawned).
    #[error("the handler published after its attempt ended; publish before returning")]
    PublishedAfterReturn,
    /// Too many messages published in one attempt.
    #[error("the handler published more than {limit} messages in one attempt")]
    TooManyEffects { limit: usize },
    /// The handler published an invalid message (a permanent failure).
    #[error("the handler published an invalid message: {0}")]
    InvalidEffect(#[source] BusError),
    /// Publishing the handler's messages failed after it succeeded.
    #[error("publishing the handler's messages failed: {0}")]
    EffectsNotPublished(#[source] BusError),
    /// The handler asked for an inbox scope but no inbox layer is configured, or for a
    /// scope of another type than the inbox provides.
    #[error("no inbox scope of type {expected}: {reason}")]
    NoInboxScope {
        expected: &'static str,
        reason: &'static str,
    },
    /// The inbox store failed; the delivery is redelivered later.
    #[error("the inbox store failed: {0}")]
    InboxUnavailable(#[source] StoreError),
    /// The dedup store failed; the delivery is redelivered later.
    #[error("the dedup store failed: {0}")]
    DedupUnavailable(#[source] StoreError),
    /// Another consumer kept the message's dedup lock past the wait deadline.
    #[error("message {message_id} is still being handled elsewhere after {waited:?}; redelivering it later")]
    DedupBusy {
        message_id: String,
        waited: Duration,
    },
    /// Storing the dead letter failed; the delivery is nacked, never dropped.
    #[error("storing the dead letter failed ({store_error}); the message is nacked and will come back. Last handler error: {handler_error}")]
    DeadLetterStoreFailed {
        store_error: StoreError,
        handler_error: String,
    },
    /// The delivery's lease could not be kept (it expired and was handed to another
    /// consumer, or was already settled).
    #[error("the delivery's lease was lost: {0}")]
    LeaseLost(#[source] BusError),
    /// Shutdown began before this delivery's turn came.
    #[error("the consumer is shutting down; the delivery was not started and will be redelivered")]
    ShuttingDown,
    /// Shutdown interrupted a retry backoff.
    #[error(
        "the consumer is shutting down during a retry backoff; the last error was: {last_error}"
    )]
    InterruptedBackoff { last_error: String },
    /// The layer below was not ready (a broken custom layer).
    #[error("the service below was not ready: {0}")]
    NotReady(String),
}

/// Errors starting or running a consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The builder was given no handler.
    #[error("the consumer for topic {topic} / group {group} has no handler; call `.handler(..)` or `.service(..)`")]
    NoHandler { topic: String, group: String },
    /// A setting is out of range.
    #[error("invalid consumer setting: {0}")]
    InvalidSetting(String),
    /// Subscribing failed.
    #[error("subscribing to topic {topic} as group {group} failed: {source}")]
    Subscribe {
        topic: String,
        group: String,
        #[source]
        source: BusError,
    },
    /// The consumer task panicked or was cancelled.
    #[error("the consumer task for topic {topic} / group {group} ended abnormally: {reason}")]
    TaskFailed {
        topic: String,
        group: String,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_includes_the_cause_chain_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = HandlerError::retryable(Outer(std::io::Error::other("inner")));
        assert_eq!(e.report(), "outer: inner");
    }

    #[test]
    fn explicit_kinds_are_classified_and_conversions_are_not() {
        assert!(HandlerError::permanent("x").is_classified());
        let e: HandlerError = std::io::Error::other("x").into();
        assert!(!e.is_classified());
        assert_eq!(
            e.classified_as(ErrorKind::Permanent).kind(),
            ErrorKind::Permanent
        );
    }

    #[test]
    fn default_classify_treats_bad_json_as_permanent() {
        let bad = serde_json::from_str::<u32>("nope").unwrap_err();
        assert_eq!(DefaultClassify.classify(&bad), ErrorKind::Permanent);
        let io = std::io::Error::other("x");
        assert_eq!(DefaultClassify.classify(&io), ErrorKind::Retryable);
    }
}

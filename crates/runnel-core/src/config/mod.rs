//! One configuration grammar for every store and bus URL.
//!
//! Every backend reads the query parameters of its URL (`nats://…?retention=7d`,
//! `sqlite:runnel.db?durability=relaxed`) through [`UrlQuery`], so the rules are the same
//! everywhere:
//!
//! * values are percent-decoded (`+` is a space, as in HTML forms);
//! * a parameter may be given once; a second occurrence is an error;
//! * durations are written one way: a whole number and a unit, `250ms`, `30s`, `5m`,
//!   `2h`, `7d` (see [`parse_duration`]) — a bare number is refused because its unit would
//!   be a guess;
//! * a parameter the backend does not know is refused with an error listing the ones it
//!   does, and a parameter that was renamed is refused with an error naming the new
//!   spelling;
//! * a concept shared by several backends has one name everywhere: `max_deliveries`,
//!   `retention`, `ack_timeout`, `batch_size`, `publish_timeout`, `connect_timeout`,
//!   `max_payload_bytes` (see [`shared`]).
//!
//! Nothing here does I/O; errors are [`ConfigError`]s, which convert into
//! [`crate::BusError::InvalidArgument`] and [`crate::StoreError::InvalidArgument`].
//!
//! ```
//! use std::time::Duration;
//! use runnel_core::config::UrlQuery;
//!
//! let mut query = UrlQuery::parse("nats", "retention=7d&max_deliveries=5")?;
//! assert_eq!(query.duration("retention")?, Some(Duration::from_secs(7 * 86_400)));
//! assert_eq!(query.integer("max_deliveries", 2..=10_000u32)?, Some(5));
//! assert_eq!(query.integer("replicas", 1..=5u32)?, None);
//! query.finish()?;
//! # Ok::<(), runnel_core::config::ConfigError>(())
//! ```

mod duration;
mod error;
mod query;

pub use duration::{format_duration, parse_duration, DurationError};
pub use error::ConfigError;
pub use query::{percent_decode, split_query, UrlQuery};

/// The names of concepts several backends share. A backend that has the concept reads it
/// under this name and no other.
pub mod shared {
    /// Deliveries after which the transport stops handing a message out and moves it to its
    /// native dead letter (an integer).
    pub const MAX_DELIVERIES: &str = "max_deliveries";
    /// How long messages are kept for replay (a duration).
    pub const RETENTION: &str = "retention";
    /// How long a delivery may stay unacknowledged before it is handed out again (a
    /// duration).
    pub const ACK_TIMEOUT: &str = "ack_timeout";
    /// How many messages or rows one round trip carries (an integer).
    pub const BATCH_SIZE: &str = "batch_size";
    /// How long a publish keeps retrying through an outage before it fails (a duration).
    pub const PUBLISH_TIMEOUT: &str = "publish_timeout";
    /// How long opening a connection may take (a duration).
    pub const CONNECT_TIMEOUT: &str = "connect_timeout";
    /// The largest payload accepted, in bytes (an integer).
    pub const MAX_PAYLOAD_BYTES: &str = "max_payload_bytes";
}

//! [`ConnectError`]: why a store or a bus could not be opened from its URL.

use runnel_core::config::ConfigError;
use runnel_core::{BusError, StoreError};

/// Why opening a store or a bus from configuration failed. Each variant says what to do;
/// [`ConnectError::is_bad_input`] tells configuration mistakes (fix the URL, nothing was
/// touched) from servers that could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL's scheme names no backend Runnel knows.
    #[error("unsupported {what} URL {url:?}; expected {expected}")]
    UnsupportedScheme {
        what: &'static str,
        /// The URL with its password redacted.
        url: String,
        expected: &'static str,
    },

    /// The URL names a known backend but is malformed.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// A URL parameter is unknown, renamed, repeated or has a bad value (the message
    /// lists the valid parameters or the new spelling).
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The backend is known, but this build of Runnel leaves it out.
    #[error(
        "this build of runnel leaves out {name}; rebuild with the cargo feature `{feature}` \
         (e.g. `cargo build --features {feature}`)"
    )]
    NotBuiltIn {
        name: &'static str,
        feature: &'static str,
    },

    /// A store that must exist does not.
    #[error("no store at {location}: nothing has been written there yet (check the store URL)")]
    NoSuchStore { location: String },

    /// A configuration file could not be read or is not valid.
    #[error("{path}: {reason}")]
    ConfigFile { path: String, reason: String },

    /// Two settings at the same level name the store (for example both a URL and a file).
    #[error("{0}")]
    Ambiguous(String),

    /// The store refused or could not be reached (the cause is the error's `source`).
    #[error("cannot open the {backend} store {location}")]
    Store {
        /// `SQLite`, `PostgreSQL` or `Redis`.
        backend: &'static str,
        location: String,
        #[source]
        source: StoreError,
    },

    /// The bus refused or could not be reached (the cause is the error's `source`).
    #[error("cannot connect to the {name} bus {url}")]
    Bus {
        name: &'static str,
        /// The URL with its password redacted.
        url: String,
        #[source]
        source: BusError,
    },
}

impl ConnectError {
    /// Whether the configuration is at fault (fix it and try again; nothing was written),
    /// rather than a server that could not be reached.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ConnectError::UnsupportedScheme { .. }
            | ConnectError::InvalidUrl { .. }
            | ConnectError::Config(_)
            | ConnectError::NotBuiltIn { .. }
            | ConnectError::ConfigFile { .. }
            | ConnectError::Ambiguous(_) => true,
            ConnectError::NoSuchStore { .. } => false,
            ConnectError::Store { source, .. } => matches!(source, StoreError::InvalidArgument(_)),
            ConnectError::Bus { source, .. } => matches!(
                source,
                BusError::InvalidArgument(_) | BusError::InvalidName { .. }
            ),
        }
    }
}

//! [`ConfigError`]: what is wrong with a configuration URL and what to do about it.

use super::duration::DurationError;

/// Longest part of a user-supplied name or value echoed in an error (URLs may be long,
/// and an error message should stay readable).
pub(crate) const ECHO_CHARS_MAX: usize = 64;

/// A configuration URL that cannot be used. Each variant names the URL scheme and the
/// parameter at fault and says how to fix it. Values of secret parameters never appear
/// here: only typed values (numbers, durations, choices) are echoed, and only the first
/// [`ECHO_CHARS_MAX`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL has a parameter the backend does not know (a typo must not silently change
    /// behaviour).
    #[error(
        "{scheme} URL: unknown parameter {name:?}; the valid parameters are {}",
        .valid.join(", ")
    )]
    UnknownParameter {
        scheme: &'static str,
        name: String,
        /// Every parameter the backend reads, sorted.
        valid: Vec<String>,
    },

    /// The URL uses a parameter's old name.
    #[error("{scheme} URL: parameter {old} was renamed {new}; write {new}={example}")]
    RenamedParameter {
        scheme: &'static str,
        old: &'static str,
        new: &'static str,
        /// A value in the new parameter's syntax (e.g. `7d` for a duration).
        example: &'static str,
    },

    /// The URL gives the same parameter more than once.
    #[error("{scheme} URL: parameter {name} is given more than once; give it once")]
    DuplicateParameter { scheme: &'static str, name: String },

    /// A parameter's value is not of the expected type or outside its bounds.
    #[error("{scheme} URL: {name}={value:?} is invalid; expected {expected}")]
    InvalidValue {
        scheme: &'static str,
        name: &'static str,
        value: String,
        /// What the parameter accepts, e.g. `a whole number in 1..=1000`.
        expected: String,
    },

    /// A duration parameter's value is not in the duration syntax.
    #[error("{scheme} URL: {name}={value:?} is not a duration: {source}")]
    InvalidDuration {
        scheme: &'static str,
        name: &'static str,
        value: String,
        source: DurationError,
    },

    /// A parameter's name or value is not valid percent-encoded UTF-8.
    #[error(
        "{scheme} URL: the query string is not valid percent-encoded UTF-8 near {near:?}; \
         percent-encode the UTF-8 bytes of names and values"
    )]
    InvalidEncoding { scheme: &'static str, near: String },

    /// The URL itself (scheme, hosts, path, credentials) is malformed. The reason never
    /// echoes credentials.
    #[error("{scheme} URL: {reason}")]
    InvalidUrl {
        scheme: &'static str,
        reason: String,
    },
}

impl ConfigError {
    /// A malformed URL (not one parameter): `reason` must not echo credentials.
    pub fn invalid_url(scheme: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::InvalidUrl {
            scheme,
            reason: reason.into(),
        }
    }

    /// A parameter value outside what the backend accepts (checks that span several
    /// parameters, or bounds the typed readers cannot express).
    pub fn invalid_value(
        scheme: &'static str,
        name: &'static str,
        value: impl AsRef<str>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::InvalidValue {
            scheme,
            name,
            value: echo(value.as_ref()),
            expected: expected.into(),
        }
    }
}

/// `text` cut to [`ECHO_CHARS_MAX`] characters (marked with `…` when cut).
pub(crate) fn echo(text: &str) -> String {
    if text.chars().count() <= ECHO_CHARS_MAX {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(ECHO_CHARS_MAX).collect();
        cut.push('…');
        cut
    }
}

impl From<ConfigError> for crate::BusError {
    fn from(e: ConfigError) -> Self {
        crate::BusError::InvalidArgument(e.to_string())
    }
}

impl From<ConfigError> for crate::StoreError {
    fn from(e: ConfigError) -> Self {
        crate::StoreError::InvalidArgument(e.to_string())
    }
}

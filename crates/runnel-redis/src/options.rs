//! How a [`crate::RedisDedupStore`] connects and names its keys.

use std::time::Duration;

use runnel_core::BusError;

/// The key prefix used when none is configured.
pub const KEY_PREFIX_DEFAULT: &str = "runnel:dedup";
/// Longest key prefix, in bytes.
pub const KEY_PREFIX_LEN_MAX: usize = 128;
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long one command may wait for its reply before it fails as `Unavailable`.
pub const RESPONSE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Reconnection attempts after a lost connection before a command fails (the next command
/// starts a new round of attempts).
pub const RECONNECT_ATTEMPTS_DEFAULT: usize = 6;
/// Longest pause between two reconnection attempts.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// Options for [`crate::RedisDedupStore::connect_with`].
///
/// ```
/// use runnel_redis::RedisOptions;
/// let options = RedisOptions::new("redis://127.0.0.1:6379").key_prefix("shop:dedup");
/// assert_eq!(options.key_prefix, "shop:dedup");
/// ```
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]` (or `rediss://` for TLS, when the crate
    /// is built with a TLS feature of the `redis` crate).
    pub url: String,
    /// Every key is `{key_prefix}:{dedup key}`. Give each application (and each test) its
    /// own prefix so their keys never collide.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub reconnect_attempts: usize,
}

impl RedisOptions {
    /// Defaults for `url`: prefix [`KEY_PREFIX_DEFAULT`], 5 s timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            key_prefix: KEY_PREFIX_DEFAULT.to_string(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            response_timeout: RESPONSE_TIMEOUT_DEFAULT,
            reconnect_attempts: RECONNECT_ATTEMPTS_DEFAULT,
        }
    }

    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets how many reconnection attempts a lost (or never made) connection gets before a
    /// command — or [`crate::RedisDedupStore::connect_with`] — fails.
    pub fn reconnect_attempts(mut self, attempts: usize) -> Self {
        self.reconnect_attempts = attempts;
        self
    }

    /// Checks the options (not the URL: the client parses that).
    pub fn validate(&self) -> Result<(), BusError> {
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > KEY_PREFIX_LEN_MAX
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(BusError::InvalidArgument(format!(
                "Redis key prefix {:?}: must be 1..={KEY_PREFIX_LEN_MAX} bytes without \
                 spaces or control characters",
                prefix.chars().take(64).collect::<String>()
            )));
        }
        for (what, t) in [
            ("connect timeout", self.connect_timeout),
            ("response timeout", self.response_timeout),
        ] {
            if t.is_zero() {
                return Err(BusError::InvalidArgument(format!(
                    "the Redis {what} must be above zero"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(RedisOptions::new("redis://x").validate().is_ok());
        for bad in [
            "",
            "has space",
            "new\nline",
            &"p".repeat(KEY_PREFIX_LEN_MAX + 1),
        ] {
            assert!(
                RedisOptions::new("redis://x")
                    .key_prefix(bad)
                    .validate()
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(RedisOptions::new("redis://x")
            .response_timeout(Duration::ZERO)
            .validate()
            .is_err());
    }
}

//! How a [`crate::RedisDedupStore`] connects and names its keys.

use std::time::Duration;

use runnel_core::config::{shared, split_query, ConfigError, UrlQuery};
use runnel_core::StoreError;

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
/// Most reconnection attempts accepted for `reconnect_attempts`.
pub const RECONNECT_ATTEMPTS_MAX: usize = 100;

/// The URL scheme named in configuration errors.
const SCHEME: &str = "redis";

/// Query parameters the Redis client reads itself; they are handed on as written.
const DRIVER_PARAMETERS: [&str; 4] = ["protocol", "db", "user", "pass"];

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

    /// Options from a URL. Runnel's settings ride along as query parameters and are taken
    /// out before the URL reaches the client: `key_prefix`, `connect_timeout` and
    /// `response_timeout` (durations: `500ms`, `5s`), `reconnect_attempts`. The client's
    /// own parameters (`protocol`, and `db`, `user`, `pass` of `redis+unix://` URLs) are
    /// handed on; any other parameter is refused with the list of valid ones (see
    /// `docs/configuration.md`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use runnel_redis::RedisOptions;
    /// let o = RedisOptions::from_url("redis://127.0.0.1:6379/2?key_prefix=shop:dedup&response_timeout=2s")?;
    /// assert_eq!(o.url, "redis://127.0.0.1:6379/2");
    /// assert_eq!(o.key_prefix, "shop:dedup");
    /// assert_eq!(o.response_timeout, Duration::from_secs(2));
    /// # Ok::<(), runnel_core::StoreError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (base, query) = split_query(url);
        let mut options = RedisOptions::new(base);
        let client = options.read_query(query)?;
        if !client.is_empty() {
            options.url = format!("{base}?{}", client.join("&"));
        }
        options.validate()?;
        Ok(options)
    }

    /// Applies Runnel's query parameters and returns the client's, as written.
    fn read_query(&mut self, query: &str) -> Result<Vec<String>, ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        if let Some(v) = q.string("key_prefix") {
            self.key_prefix = v;
        }
        let positive = Duration::from_millis(1)..=Duration::MAX;
        if let Some(d) = q.duration_in(shared::CONNECT_TIMEOUT, positive.clone())? {
            self.connect_timeout = d;
        }
        if let Some(d) = q.duration_in("response_timeout", positive)? {
            self.response_timeout = d;
        }
        if let Some(n) = q.integer("reconnect_attempts", 0..=RECONNECT_ATTEMPTS_MAX)? {
            self.reconnect_attempts = n;
        }
        let client = DRIVER_PARAMETERS
            .iter()
            .filter_map(|name| q.pass_through(name))
            .collect();
        q.finish()?;
        Ok(client)
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
    pub fn validate(&self) -> Result<(), StoreError> {
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > KEY_PREFIX_LEN_MAX
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(StoreError::InvalidArgument(format!(
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
                return Err(StoreError::InvalidArgument(format!(
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

    #[test]
    fn url_parameters_are_read_and_client_parameters_handed_on() {
        let o = RedisOptions::from_url(
            "redis://:pw@h:6379/1?key_prefix=app%3Adedup&connect_timeout=250ms&protocol=resp3&reconnect_attempts=2",
        )
        .expect("valid");
        assert_eq!(o.key_prefix, "app:dedup");
        assert_eq!(o.connect_timeout, Duration::from_millis(250));
        assert_eq!(o.reconnect_attempts, 2);
        assert_eq!(o.url, "redis://:pw@h:6379/1?protocol=resp3");
        for bad in [
            "redis://h?key_prefix=",
            "redis://h?response_timeout=5",
            "redis://h?keyprefix=x",
            "redis://h?reconnect_attempts=1000",
        ] {
            assert!(
                matches!(
                    RedisOptions::from_url(bad),
                    Err(StoreError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}

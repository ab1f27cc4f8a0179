//! How a PostgreSQL store is opened.

use std::time::Duration;

use runnel_core::config::{shared, split_query, ConfigError, UrlQuery};
use runnel_core::{StoreError, StoreLimits};

/// Default schema holding Runnel's tables.
pub const SCHEMA_DEFAULT: &str = "runnel";
/// Default connection-pool size.
pub const POOL_SIZE_DEFAULT: u32 = 16;
/// Largest accepted pool size.
pub const POOL_SIZE_MAX: u32 = 512;
/// Smallest accepted pool size (one connection appends, the rest read).
pub const POOL_SIZE_MIN: u32 = 2;
/// Largest event payload limit accepted for `max_payload_bytes`.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The URL scheme named in configuration errors.
const SCHEME: &str = "postgres";

/// Parameters that were renamed when every backend took the one URL grammar: (old, new,
/// an example value in the new syntax).
const RENAMED: [(&str, &str, &str); 2] = [
    ("statement_timeout_ms", "statement_timeout", "30s"),
    ("connect_timeout_ms", "connect_timeout", "10s"),
];

/// Query parameters the PostgreSQL driver reads itself; they are handed on as written.
const DRIVER_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];
/// Default statement timeout.
pub const STATEMENT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time to wait for a connection (from the pool or a new one).
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Appends waiting for the batcher before callers feel back-pressure.
pub const APPEND_QUEUE_MAX: usize = 4096;
/// Most appends combined into one round trip.
pub const BATCH_APPENDS_MAX: usize = 512;
/// Most events combined into one round trip; a batch closes early past this.
pub const BATCH_EVENTS_MAX: usize = 20_000;

/// Options for [`crate::PostgresStore::connect_with`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The schema for Runnel's tables; several applications can share one database with
    /// different schemas.
    pub schema: String,
    /// Connections for reads, checkpoints, snapshots and the bus. A store holds at most
    /// this many plus one: appends go through one connection of their own (opened on the
    /// first append), and the LISTEN connection, opened when something first waits for
    /// events, is taken from the pool.
    pub pool_size: u32,
    /// The longest any one statement may run before PostgreSQL cancels it (every
    /// connection, the appender's included).
    pub statement_timeout: Duration,
    /// How long opening a connection (or waiting for a pooled one) may take.
    pub connect_timeout: Duration,
    pub limits: StoreLimits,
}

impl PostgresOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: SCHEMA_DEFAULT.to_string(),
            pool_size: POOL_SIZE_DEFAULT,
            statement_timeout: STATEMENT_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            limits: StoreLimits::default(),
        }
    }

    /// Options from a URL. Runnel's own settings ride along as query parameters and are
    /// taken out before the URL reaches the driver: `schema`, `pool_size`,
    /// `statement_timeout` and `connect_timeout` (durations: `30s`, `5m`),
    /// `max_payload_bytes`. The driver's own parameters (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`, `application_name`, `options`, `host`, `hostaddr`, `port`,
    /// `dbname`, `user`, `password`, `statement-cache-capacity`) are handed on; any other
    /// parameter is refused with the list of valid ones (see `docs/configuration.md`).
    /// For example `postgres://app@db/prod?schema=orders&pool_size=32&statement_timeout=30s`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = runnel_postgres::PostgresOptions::from_url(
    ///     "postgres://u@h/db?schema=s1&pool_size=8&statement_timeout=1m&sslmode=disable",
    /// )?;
    /// assert_eq!(o.schema, "s1");
    /// assert_eq!(o.pool_size, 8);
    /// assert_eq!(o.statement_timeout, Duration::from_secs(60));
    /// assert_eq!(o.url, "postgres://u@h/db?sslmode=disable");
    /// # Ok::<(), runnel_core::StoreError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (base, query) = split_query(url);
        let mut options = PostgresOptions::new(base);
        let driver = options.read_query(query)?;
        if !driver.is_empty() {
            options.url = format!("{base}?{}", driver.join("&"));
        }
        options.validate()?;
        Ok(options)
    }

    /// Applies Runnel's query parameters and returns the driver's, as written.
    fn read_query(&mut self, query: &str) -> Result<Vec<String>, ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        for (old, new, example) in RENAMED {
            q.renamed(old, new, example)?;
        }
        if let Some(v) = q.string("schema") {
            self.schema = v;
        }
        if let Some(n) = q.integer("pool_size", POOL_SIZE_MIN..=POOL_SIZE_MAX)? {
            self.pool_size = n;
        }
        let positive = Duration::from_millis(1)..=Duration::MAX;
        if let Some(d) = q.duration_in("statement_timeout", positive.clone())? {
            self.statement_timeout = d;
        }
        if let Some(d) = q.duration_in(shared::CONNECT_TIMEOUT, positive)? {
            self.connect_timeout = d;
        }
        if let Some(n) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=PAYLOAD_BYTES_MAX)? {
            self.limits.max_payload_bytes = n;
        }
        let driver = DRIVER_PARAMETERS
            .iter()
            .filter_map(|name| q.pass_through(name))
            .collect();
        q.finish()?;
        Ok(driver)
    }

    /// Uses `schema` for the tables.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the pool size.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the statement timeout.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_schema_name(&self.schema)?;
        if self.pool_size < POOL_SIZE_MIN || self.pool_size > POOL_SIZE_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "pool_size must be {POOL_SIZE_MIN}..={POOL_SIZE_MAX} (one connection appends, \
                 the rest read)"
            )));
        }
        if self.statement_timeout.is_zero() {
            return Err(StoreError::InvalidArgument(
                "statement_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Schema names: lower-case ASCII letters, digits and `_`, starting with a letter or `_`,
/// at most 40 bytes (the LISTEN channel name adds a prefix within PostgreSQL's 63).
pub fn validate_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 40
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "schema name {schema:?} must be 1..=40 of [a-z0-9_], not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnel_parameters_are_read_and_driver_parameters_handed_on() {
        let o = PostgresOptions::from_url(
            "postgres://app:pw@db:5432/prod?schema=orders&sslmode=require&pool_size=4\
             &statement_timeout=45s&connect_timeout=2s&application_name=shop%20api&max_payload_bytes=2048",
        )
        .expect("valid");
        assert_eq!(o.schema, "orders");
        assert_eq!(o.pool_size, 4);
        assert_eq!(o.statement_timeout, Duration::from_secs(45));
        assert_eq!(o.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.limits.max_payload_bytes, 2048);
        assert_eq!(
            o.url,
            "postgres://app:pw@db:5432/prod?sslmode=require&application_name=shop%20api"
        );
        let o = PostgresOptions::from_url("postgresql://h/db").expect("valid");
        assert_eq!(o.url, "postgresql://h/db");
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in [
            "postgres://h/db?pool_size=1",
            "postgres://h/db?statement_timeout=30",
            "postgres://h/db?statement_timeout=0s",
            "postgres://h/db?schema=Bad",
            "postgres://h/db?scheam=x",
            "postgres://h/db?schema=a&schema=b",
        ] {
            assert!(
                matches!(
                    PostgresOptions::from_url(bad),
                    Err(StoreError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let err = PostgresOptions::from_url("postgres://h/db?scheam=x").unwrap_err();
        assert!(
            err.to_string().contains("pool_size, port, schema, ssl-ca"),
            "{err}"
        );
    }

    #[test]
    fn old_parameter_names_point_to_the_new_ones() {
        let err =
            PostgresOptions::from_url("postgres://h/db?statement_timeout_ms=100").unwrap_err();
        assert!(
            err.to_string()
                .contains("statement_timeout_ms was renamed statement_timeout"),
            "{err}"
        );
        let err = PostgresOptions::from_url("postgres://h/db?connect_timeout_ms=100").unwrap_err();
        assert!(
            err.to_string().contains("write connect_timeout=10s"),
            "{err}"
        );
    }
}

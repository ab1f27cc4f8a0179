//! How a PostgreSQL store is opened.

use std::time::Duration;

use runnel_core::{StoreError, StoreLimits};

/// Default schema holding Runnel's tables.
pub const SCHEMA_DEFAULT: &str = "runnel";
/// Default connection-pool size.
pub const POOL_SIZE_DEFAULT: u32 = 16;
/// Largest accepted pool size.
pub const POOL_SIZE_MAX: u32 = 512;
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

    /// Options from a URL. Runnel's own settings may ride along as query parameters and are
    /// taken out before the URL reaches the driver: `schema`, `pool_size`,
    /// `statement_timeout_ms`, `connect_timeout_ms`. For example
    /// `postgres://app@db/prod?schema=orders&pool_size=32`.
    ///
    /// ```
    /// let o = runnel_postgres::PostgresOptions::from_url("postgres://u@h/db?schema=s1&pool_size=8&sslmode=disable").unwrap();
    /// assert_eq!(o.schema, "s1");
    /// assert_eq!(o.pool_size, 8);
    /// assert_eq!(o.url, "postgres://u@h/db?sslmode=disable");
    /// ```
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut options = PostgresOptions::new(base);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |what: &str| {
                StoreError::InvalidArgument(format!("store URL parameter {k}={v:?}: {what}"))
            };
            match k {
                "schema" => options.schema = v.to_string(),
                "pool_size" => {
                    options.pool_size = v.parse().map_err(|_| bad("expected a number"))?
                }
                "statement_timeout_ms" => {
                    options.statement_timeout =
                        Duration::from_millis(v.parse().map_err(|_| bad("expected milliseconds"))?)
                }
                "connect_timeout_ms" => {
                    options.connect_timeout =
                        Duration::from_millis(v.parse().map_err(|_| bad("expected milliseconds"))?)
                }
                _ => rest.push(pair),
            }
        }
        if !rest.is_empty() {
            options.url = format!("{base}?{}", rest.join("&"));
        }
        options.validate()?;
        Ok(options)
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
        if self.pool_size < 2 || self.pool_size > POOL_SIZE_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "pool_size must be 2..={POOL_SIZE_MAX} (one connection appends, the rest read)"
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

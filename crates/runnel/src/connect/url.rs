//! Store and bus URLs: which backend a URL names, parsed before anything connects, and
//! shown with any password replaced by `***`.

use std::fmt;
use std::path::PathBuf;

use super::error::ConnectError;

/// The store URL used when nothing is configured: one SQLite file in the current
/// directory.
pub const STORE_URL_DEFAULT: &str = "sqlite:runnel.db";
/// The bus used when nothing is configured: the embedded durable bus in the store.
pub const BUS_DEFAULT: &str = "embedded";

/// A parsed store URL.
///
/// ```
/// use runnel::connect::StoreUrl;
///
/// let url = StoreUrl::parse("postgres://app:s3cret@db/prod?schema=orders")?;
/// assert_eq!(url.to_string(), "postgres://app:***@db/prod?schema=orders");
/// assert!(StoreUrl::parse("mysql://db").is_err());
/// # Ok::<(), runnel::connect::ConnectError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH` (also `sqlite://PATH`), with its query parameters if any: one SQLite
    /// file, created if missing.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`, with Runnel's parameters in the query.
    Postgres(String),
}

impl StoreUrl {
    /// Parses `sqlite:PATH`, `sqlite://PATH` or `postgres://…`. Only the scheme and the
    /// shape are checked here; each backend checks its parameters when it opens.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let path = rest.split_once('?').map_or(rest, |(p, _)| p);
            if path.is_empty() {
                return Err(ConnectError::InvalidUrl {
                    url: url.to_string(),
                    reason: format!(
                        "it names no file; expected sqlite:PATH, e.g. {STORE_URL_DEFAULT}"
                    ),
                });
            }
            if path == ":memory:" {
                return Err(ConnectError::InvalidUrl {
                    url: url.to_string(),
                    reason: "an in-memory database is not supported: the store needs a file \
                             that its writer and readers share; use sqlite:PATH"
                        .into(),
                });
            }
            return Ok(StoreUrl::Sqlite(url.to_string()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        Err(ConnectError::UnsupportedScheme {
            what: "store",
            url: redact(url),
            expected: "sqlite:PATH (e.g. sqlite:runnel.db) or postgres://…",
        })
    }

    /// The SQLite URL of a file path.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreUrl::Sqlite(format!("sqlite:{}", path.into().display()))
    }

    /// The file a SQLite URL names (`None` for PostgreSQL).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            StoreUrl::Sqlite(url) => {
                let rest = url.strip_prefix("sqlite:").unwrap_or(url);
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                Some(PathBuf::from(rest.split_once('?').map_or(rest, |(p, _)| p)))
            }
            StoreUrl::Postgres(_) => None,
        }
    }

    /// The URL as given (credentials included): for connecting, never for printing.
    pub fn as_secret_str(&self) -> &str {
        match self {
            StoreUrl::Sqlite(url) | StoreUrl::Postgres(url) => url,
        }
    }
}

impl fmt::Display for StoreUrl {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(url) => f.write_str(url),
            StoreUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// The broker transports, each in its own crate and behind a cargo feature of `runnel`
/// with the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Nats,
    RabbitMq,
    Kafka,
    Sqs,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 4] = [
        Transport::Nats,
        Transport::RabbitMq,
        Transport::Kafka,
        Transport::Sqs,
    ];

    /// The name users know the broker by.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Nats => "NATS JetStream",
            Transport::RabbitMq => "RabbitMQ",
            Transport::Kafka => "Kafka",
            Transport::Sqs => "SQS/SNS",
        }
    }

    /// The cargo feature (of `runnel`, and of `runnel-cli`) that builds it in.
    pub fn feature(self) -> &'static str {
        match self {
            Transport::Nats => "nats",
            Transport::RabbitMq => "rabbitmq",
            Transport::Kafka => "kafka",
            Transport::Sqs => "sqs",
        }
    }

    /// Whether this build of `runnel` carries the transport.
    pub fn is_built_in(self) -> bool {
        match self {
            Transport::Nats => cfg!(feature = "nats"),
            Transport::RabbitMq => cfg!(feature = "rabbitmq"),
            Transport::Kafka => cfg!(feature = "kafka"),
            Transport::Sqs => cfg!(feature = "sqs"),
        }
    }
}

/// URL schemes of the broker transports.
const BROKER_SCHEMES: [(&str, Transport); 6] = [
    ("nats://", Transport::Nats),
    ("tls://", Transport::Nats),
    ("amqp://", Transport::RabbitMq),
    ("amqps://", Transport::RabbitMq),
    ("kafka://", Transport::Kafka),
    ("sqs://", Transport::Sqs),
];

/// Which bus an application publishes to and consumes from.
///
/// ```
/// use runnel::connect::{BusUrl, Transport};
///
/// assert_eq!(BusUrl::parse("embedded")?, BusUrl::Embedded);
/// let nats = BusUrl::parse("nats://127.0.0.1:4222")?;
/// assert_eq!(nats.transport(), Some(Transport::Nats));
/// assert!(BusUrl::parse("mqtt://broker").is_err());
/// # Ok::<(), runnel::connect::ConnectError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// The embedded durable bus, in the store (the SQLite file or the PostgreSQL schema).
    Embedded,
    /// A broker: its transport and configuration URL (which may hold credentials: shown
    /// only through `Debug`/`Display`, which redact them).
    Broker(Transport, String),
}

impl BusUrl {
    /// Parses `embedded` or a broker URL (`nats://`, `tls://`, `amqp://`, `amqps://`,
    /// `kafka://`, `sqs://`). The broker's own parameters are checked when it connects.
    pub fn parse(text: &str) -> Result<Self, ConnectError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case(BUS_DEFAULT) {
            return Ok(BusUrl::Embedded);
        }
        if let Some((_, transport)) = BROKER_SCHEMES.iter().find(|(p, _)| text.starts_with(p)) {
            return Ok(BusUrl::Broker(*transport, text.to_string()));
        }
        Err(ConnectError::UnsupportedScheme {
            what: "bus",
            url: redact(text),
            expected: "\"embedded\" or a broker URL (nats://, amqp://, kafka://, sqs://)",
        })
    }

    /// The broker transport, `None` for the embedded bus.
    pub fn transport(&self) -> Option<Transport> {
        match self {
            BusUrl::Embedded => None,
            BusUrl::Broker(t, _) => Some(*t),
        }
    }
}

impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusUrl::Embedded => f.write_str(BUS_DEFAULT),
            BusUrl::Broker(_, url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusUrl({self})")
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`, so URLs can be logged.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..authority_start],
            &userinfo[..colon],
            &url[authority_start + at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        for (url, path) in [
            ("sqlite:runnel.db", "runnel.db"),
            ("sqlite:///tmp/x.db", "/tmp/x.db"),
            ("sqlite://data/x.db", "data/x.db"),
            ("sqlite:x.db?durability=relaxed", "x.db"),
        ] {
            let parsed = StoreUrl::parse(url).unwrap();
            assert_eq!(parsed.sqlite_path().unwrap(), PathBuf::from(path), "{url}");
        }
        assert!(StoreUrl::parse("sqlite:").is_err());
        assert!(StoreUrl::parse("sqlite::memory:").is_err());
        assert_eq!(StoreUrl::sqlite("a.db").to_string(), "sqlite:a.db");
    }

    #[test]
    fn postgres_urls_print_without_the_password() {
        let url = StoreUrl::parse("postgres://app:s3cret@localhost:5432/runnel").unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@localhost:5432/runnel");
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = StoreUrl::parse("postgresql://localhost/runnel").unwrap();
        assert_eq!(url.to_string(), "postgresql://localhost/runnel");
    }

    #[test]
    fn unknown_schemes_are_refused_without_leaking_the_password() {
        let err = StoreUrl::parse("mysql://u:pw@h/db").unwrap_err();
        assert!(err.is_bad_input());
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(StoreUrl::parse("runnel.db").is_err());
        let err = BusUrl::parse("mqtt://u:pw@h").unwrap_err();
        assert!(err.to_string().contains("unsupported bus"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn buses_parse_to_their_transport() {
        assert_eq!(BusUrl::parse(" Embedded ").unwrap(), BusUrl::Embedded);
        for (url, transport) in [
            ("nats://localhost:4222", Transport::Nats),
            ("tls://localhost:4222", Transport::Nats),
            ("amqp://guest:guest@localhost:5672/%2f", Transport::RabbitMq),
            ("kafka://127.0.0.1:9092", Transport::Kafka),
            (
                "sqs://us-east-1?endpoint=http://127.0.0.1:4566",
                Transport::Sqs,
            ),
        ] {
            assert_eq!(
                BusUrl::parse(url).unwrap(),
                BusUrl::Broker(transport, url.to_string())
            );
        }
        let shown = BusUrl::parse("amqp://app:s3cret@h/vh").unwrap().to_string();
        assert_eq!(shown, "amqp://app:***@h/vh");
    }
}

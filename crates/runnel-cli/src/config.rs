//! Which store the CLI talks to: the `--store` / `--db` flags, the `RUNNEL_STORE` /
//! `RUNNEL_DB` environment variables, `runnel.toml` in the current directory, and the
//! default, in that order of precedence.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::BadInput;

/// The store URL used when nothing is configured.
pub const STORE_URL_DEFAULT: &str = "sqlite:runnel.db";
/// The configuration file read from the current directory, if present.
pub const CONFIG_FILE_NAME: &str = "runnel.toml";
/// Environment variable holding a store URL.
pub const ENV_STORE: &str = "RUNNEL_STORE";
/// Environment variable holding a SQLite file path (shorthand for `sqlite:PATH`).
pub const ENV_DB: &str = "RUNNEL_DB";

/// A parsed store URL. Adding a backend means adding a variant here and a match arm in
/// `open_store`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH` (also `sqlite://PATH`): one SQLite file, created if missing.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl StoreUrl {
    /// Parses `sqlite:PATH`, `sqlite://PATH` or `postgres://…`.
    pub fn parse(url: &str) -> Result<Self, BadInput> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("sqlite:") {
            // `sqlite:///abs/path` and `sqlite://rel/path` are common spellings too.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(BadInput(format!(
                    "store URL {url:?} names no file; expected sqlite:PATH, e.g. {STORE_URL_DEFAULT}"
                )));
            }
            if path == ":memory:" {
                return Err(BadInput(
                    "sqlite::memory: is not supported: the store needs a file that its writer \
                     and readers share; use sqlite:PATH"
                        .into(),
                ));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        Err(BadInput(format!(
            "unsupported store URL {:?}; expected sqlite:PATH (e.g. {STORE_URL_DEFAULT}) or postgres://…",
            redact(url)
        )))
    }

    /// The SQLite URL of a file path.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreUrl::Sqlite(path.into())
    }
}

impl fmt::Display for StoreUrl {
    /// Prints the URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`, so URLs can be logged.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
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

/// Where the store URL came from (shown in debug logs and by `demo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "the {flag} flag"),
            Origin::Env(var) => write!(f, "${var}"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// The store to use and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedStore {
    pub url: StoreUrl,
    pub origin: Origin,
}

/// The contents of `runnel.toml` the CLI reads. Unknown keys are allowed: later features
/// add their own.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FileConfig {
    pub store: Option<String>,
    /// The bus: `embedded` or a broker URL.
    pub bus: Option<String>,
}

/// Every input to store selection, gathered before deciding (so deciding is a pure
/// function that tests can drive).
#[derive(Clone, Debug, Default)]
pub struct StoreInputs {
    pub flag_store: Option<String>,
    pub flag_db: Option<PathBuf>,
    pub env_store: Option<String>,
    pub env_db: Option<String>,
    /// `runnel.toml`'s path and contents, if the file exists.
    pub file: Option<(PathBuf, FileConfig)>,
}

impl StoreInputs {
    /// Gathers the environment and `runnel.toml` (in `dir`) around the given flags.
    pub fn gather(
        flag_store: Option<String>,
        flag_db: Option<PathBuf>,
        dir: &Path,
    ) -> Result<Self, BadInput> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Ok(StoreInputs {
            flag_store,
            flag_db,
            env_store: env(ENV_STORE),
            env_db: env(ENV_DB),
            file: read_config_file(&dir.join(CONFIG_FILE_NAME))?,
        })
    }

    /// Picks the store: flag > environment > `runnel.toml` > default. Within one level,
    /// giving both a URL and a db path is an error rather than a silent choice.
    pub fn resolve(&self) -> Result<ResolvedStore, BadInput> {
        match (&self.flag_store, &self.flag_db) {
            (Some(_), Some(_)) => {
                return Err(BadInput(
                    "--store and --db both name a store; give only one".into(),
                ))
            }
            (Some(url), None) => {
                return Ok(ResolvedStore {
                    url: StoreUrl::parse(url)?,
                    origin: Origin::Flag("--store"),
                })
            }
            (None, Some(path)) => {
                return Ok(ResolvedStore {
                    url: StoreUrl::sqlite(path),
                    origin: Origin::Flag("--db"),
                })
            }
            (None, None) => {}
        }
        match (&self.env_store, &self.env_db) {
            (Some(_), Some(_)) => {
                return Err(BadInput(format!(
                    "${ENV_STORE} and ${ENV_DB} are both set; unset one"
                )))
            }
            (Some(url), None) => {
                return Ok(ResolvedStore {
                    url: StoreUrl::parse(url)
                        .map_err(|e| BadInput(format!("${ENV_STORE}: {}", e.0)))?,
                    origin: Origin::Env(ENV_STORE),
                })
            }
            (None, Some(path)) => {
                return Ok(ResolvedStore {
                    url: StoreUrl::sqlite(path),
                    origin: Origin::Env(ENV_DB),
                })
            }
            (None, None) => {}
        }
        if let Some((
            path,
            FileConfig {
                store: Some(url), ..
            },
        )) = &self.file
        {
            return Ok(ResolvedStore {
                url: StoreUrl::parse(url)
                    .map_err(|e| BadInput(format!("{}: {}", path.display(), e.0)))?,
                origin: Origin::File(path.clone()),
            });
        }
        Ok(ResolvedStore {
            url: StoreUrl::parse(STORE_URL_DEFAULT)?,
            origin: Origin::Default,
        })
    }
}

/// Environment variable naming the bus (`embedded` or a broker URL).
pub const ENV_BUS: &str = "RUNNEL_BUS";
/// The bus used when nothing is configured: the embedded durable bus in the store.
pub const BUS_DEFAULT: &str = "embedded";

/// Which bus `publish`, `consume` and `dlq replay` talk to.
#[derive(Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// The embedded durable bus, in the configured store (SQLite file or PostgreSQL
    /// schema).
    Embedded,
    /// A broker: the transport and its configuration URL (which may hold credentials:
    /// shown only through `Debug`/`Display`, which redact them).
    Broker(Transport, String),
}

/// The broker transports, each in its own crate and behind a cargo feature of the same
/// name (all on by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Nats,
    RabbitMq,
    Kafka,
    Sqs,
}

impl Transport {
    /// The name users know the broker by.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Nats => "NATS JetStream",
            Transport::RabbitMq => "RabbitMQ",
            Transport::Kafka => "Kafka",
            Transport::Sqs => "SQS/SNS",
        }
    }

    /// The cargo feature of `runnel-cli` that builds it in.
    pub fn feature(self) -> &'static str {
        match self {
            Transport::Nats => "nats",
            Transport::RabbitMq => "rabbitmq",
            Transport::Kafka => "kafka",
            Transport::Sqs => "sqs",
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

impl std::fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusUrl::Embedded => f.write_str(BUS_DEFAULT),
            BusUrl::Broker(_, url) => f.write_str(&redact(url)),
        }
    }
}

impl BusUrl {
    /// Parses `embedded` or a broker URL (`nats://`, `tls://`, `amqp://`, `amqps://`,
    /// `kafka://`, `sqs://`). The broker's own parameters are checked when it connects.
    pub fn parse(text: &str) -> Result<Self, BadInput> {
        let text = text.trim();
        if text.eq_ignore_ascii_case(BUS_DEFAULT) {
            return Ok(BusUrl::Embedded);
        }
        if let Some((_, transport)) = BROKER_SCHEMES.iter().find(|(p, _)| text.starts_with(p)) {
            return Ok(BusUrl::Broker(*transport, text.to_string()));
        }
        Err(BadInput(format!(
            "unsupported bus {:?}; expected \"{BUS_DEFAULT}\" or a broker URL (nats://, amqp://, kafka://, sqs://)",
            redact(text)
        )))
    }
}

/// The bus: `--bus` > `$RUNNEL_BUS` > `bus = "…"` in `runnel.toml` (in `dir`) > embedded.
pub fn resolve_bus(flag: Option<String>, dir: &Path) -> Result<BusUrl, BadInput> {
    if let Some(flag) = flag {
        return BusUrl::parse(&flag).map_err(|e| BadInput(format!("--bus: {}", e.0)));
    }
    if let Some(env) = std::env::var(ENV_BUS).ok().filter(|v| !v.trim().is_empty()) {
        return BusUrl::parse(&env).map_err(|e| BadInput(format!("${ENV_BUS}: {}", e.0)));
    }
    if let Some((path, FileConfig { bus: Some(bus), .. })) =
        read_config_file(&dir.join(CONFIG_FILE_NAME))?
    {
        return BusUrl::parse(&bus).map_err(|e| BadInput(format!("{}: {}", path.display(), e.0)));
    }
    Ok(BusUrl::Embedded)
}

fn read_config_file(path: &Path) -> Result<Option<(PathBuf, FileConfig)>, BadInput> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BadInput(format!("cannot read {}: {e}", path.display()))),
    };
    let config: FileConfig = toml::from_str(&text).map_err(|e| {
        // toml's messages span several lines (with a source excerpt); the CLI prints one.
        let message = e.message().replace('\n', " ");
        BadInput(format!("{} is not valid: {message}", path.display()))
    })?;
    Ok(Some((path.to_path_buf(), config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> StoreInputs {
        StoreInputs::default()
    }

    #[test]
    fn sqlite_urls_parse_to_paths() {
        assert_eq!(
            StoreUrl::parse("sqlite:runnel.db").unwrap(),
            StoreUrl::Sqlite("runnel.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://data/x.db").unwrap(),
            StoreUrl::Sqlite("data/x.db".into())
        );
        assert!(StoreUrl::parse("sqlite:").is_err());
        assert!(StoreUrl::parse("sqlite::memory:").is_err());
    }

    #[test]
    fn postgres_urls_parse_and_print_without_the_password() {
        let url = StoreUrl::parse("postgres://app:s3cret@localhost:5432/runnel").unwrap();
        assert!(matches!(url, StoreUrl::Postgres(_)));
        assert_eq!(url.to_string(), "postgres://app:***@localhost:5432/runnel");
        let url = StoreUrl::parse("postgresql://localhost/runnel").unwrap();
        assert_eq!(url.to_string(), "postgresql://localhost/runnel");
    }

    #[test]
    fn unknown_schemes_are_bad_input() {
        let err = StoreUrl::parse("mysql://u:pw@h/db").unwrap_err();
        assert!(err.0.contains("unsupported store URL"), "{}", err.0);
        assert!(!err.0.contains("pw"), "the password leaked: {}", err.0);
        assert!(StoreUrl::parse("runnel.db").is_err());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let mut i = inputs();
        assert_eq!(i.resolve().unwrap().origin, Origin::Default);
        assert_eq!(
            i.resolve().unwrap().url,
            StoreUrl::Sqlite("runnel.db".into())
        );

        i.file = Some((
            "runnel.toml".into(),
            FileConfig {
                store: Some("sqlite:file.db".into()),
                ..Default::default()
            },
        ));
        assert_eq!(i.resolve().unwrap().url, StoreUrl::Sqlite("file.db".into()));

        i.env_db = Some("env.db".into());
        let r = i.resolve().unwrap();
        assert_eq!(r.url, StoreUrl::Sqlite("env.db".into()));
        assert_eq!(r.origin, Origin::Env(ENV_DB));

        i.flag_store = Some("sqlite:flag.db".into());
        let r = i.resolve().unwrap();
        assert_eq!(r.url, StoreUrl::Sqlite("flag.db".into()));
        assert_eq!(r.origin, Origin::Flag("--store"));
    }

    #[test]
    fn buses_parse_to_their_transport_and_unknown_schemes_are_bad_input() {
        assert_eq!(BusUrl::parse("embedded").unwrap(), BusUrl::Embedded);
        assert_eq!(BusUrl::parse(" Embedded ").unwrap(), BusUrl::Embedded);
        for (url, transport) in [
            ("nats://localhost:4222", Transport::Nats),
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
        assert!(!shown.contains("s3cret"), "{shown}");
        let err = BusUrl::parse("mqtt://u:pw@h").unwrap_err();
        assert!(
            err.0.contains("unsupported bus") && !err.0.contains("pw"),
            "{}",
            err.0
        );
    }

    #[test]
    fn bus_comes_from_the_file_when_no_flag_or_env() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_bus(None, dir.path()).unwrap(), BusUrl::Embedded);
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "bus = \"kafka://k:9092\"\n",
        )
        .unwrap();
        if std::env::var(ENV_BUS).is_err() {
            assert_eq!(
                resolve_bus(None, dir.path()).unwrap(),
                BusUrl::Broker(Transport::Kafka, "kafka://k:9092".into())
            );
        }
        assert_eq!(
            resolve_bus(Some("embedded".into()), dir.path()).unwrap(),
            BusUrl::Embedded
        );
    }

    #[test]
    fn db_shorthand_is_a_sqlite_file() {
        let mut i = inputs();
        i.env_store = Some("sqlite:env.db".into());
        i.flag_db = Some("flag.db".into());
        assert_eq!(i.resolve().unwrap().url, StoreUrl::Sqlite("flag.db".into()));
    }

    #[test]
    fn two_stores_at_one_level_are_an_error() {
        let mut i = inputs();
        i.env_store = Some("sqlite:a.db".into());
        i.env_db = Some("b.db".into());
        assert!(i.resolve().is_err());
        let mut i = inputs();
        i.flag_store = Some("sqlite:a.db".into());
        i.flag_db = Some("b.db".into());
        assert!(i.resolve().is_err());
    }

    #[test]
    fn config_file_is_read_and_malformed_files_are_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE_NAME);
        assert_eq!(read_config_file(&path).unwrap(), None);
        std::fs::write(&path, "store = \"sqlite:x.db\"\nbus = \"embedded\"\n").unwrap();
        let (_, config) = read_config_file(&path).unwrap().unwrap();
        assert_eq!(config.store.as_deref(), Some("sqlite:x.db"));
        assert_eq!(config.bus.as_deref(), Some("embedded"));
        std::fs::write(&path, "store = [").unwrap();
        let err = read_config_file(&path).unwrap_err();
        assert!(!err.0.contains('\n'), "{}", err.0);
    }
}

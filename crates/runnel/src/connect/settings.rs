//! Which store and bus an application uses: given explicitly (command-line flags), from
//! the environment (`RUNNEL_STORE` / `RUNNEL_DB`, `RUNNEL_BUS`), from `runnel.toml`, or
//! the defaults (`sqlite:runnel.db`, `embedded`), in that order of precedence.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ConnectError;
use super::url::{BusUrl, StoreUrl, STORE_URL_DEFAULT};

/// The configuration file read from the application's directory, if present.
pub const CONFIG_FILE_NAME: &str = "runnel.toml";
/// Environment variable holding a store URL.
pub const ENV_STORE: &str = "RUNNEL_STORE";
/// Environment variable holding a SQLite file path (shorthand for `sqlite:PATH`).
pub const ENV_DB: &str = "RUNNEL_DB";
/// Environment variable naming the bus (`embedded` or a broker URL).
pub const ENV_BUS: &str = "RUNNEL_BUS";

/// Where a setting came from (for logs and messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Given by the application, e.g. a command-line flag (its name).
    Given(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// `runnel.toml`.
    File(PathBuf),
    /// Nothing was configured.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Given(flag) => write!(f, "{flag}"),
            Origin::Env(var) => write!(f, "${var}"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// The part of `runnel.toml` that chooses the backends. Other keys are left to the
/// sections that read them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FileConfig {
    /// The store URL.
    pub store: Option<String>,
    /// The bus: `embedded` or a broker URL.
    pub bus: Option<String>,
}

/// The store and the bus to use, and where each choice came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub store: StoreUrl,
    pub store_origin: Origin,
    pub bus: BusUrl,
    pub bus_origin: Origin,
}

impl Settings {
    /// The environment and `runnel.toml` in the current directory, with nothing given
    /// explicitly.
    pub fn from_env() -> Result<Settings, ConnectError> {
        let dir = std::env::current_dir().map_err(|e| ConnectError::ConfigFile {
            path: ".".into(),
            reason: format!("cannot read the current directory: {e}"),
        })?;
        SettingsInputs::gather(&dir)?.resolve()
    }
}

/// Every input to the choice, gathered before deciding, so deciding is a pure function
/// tests can drive.
#[derive(Clone, Debug, Default)]
pub struct SettingsInputs {
    /// A store URL given explicitly (e.g. `--store`).
    pub given_store: Option<(&'static str, String)>,
    /// A SQLite file given explicitly (e.g. `--db`).
    pub given_db: Option<(&'static str, PathBuf)>,
    /// A bus given explicitly (e.g. `--bus`).
    pub given_bus: Option<(&'static str, String)>,
    pub env_store: Option<String>,
    pub env_db: Option<String>,
    pub env_bus: Option<String>,
    /// `runnel.toml`'s path and contents, if the file exists.
    pub file: Option<(PathBuf, FileConfig)>,
}

impl SettingsInputs {
    /// The environment and `runnel.toml` (in `dir`), with nothing given yet.
    pub fn gather(dir: &Path) -> Result<Self, ConnectError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Ok(SettingsInputs {
            env_store: env(ENV_STORE),
            env_db: env(ENV_DB),
            env_bus: env(ENV_BUS),
            file: read_config_file(&dir.join(CONFIG_FILE_NAME))?,
            ..SettingsInputs::default()
        })
    }

    /// Sets the explicitly given store URL (`name` says where it came from, e.g.
    /// `"--store"`).
    pub fn store(mut self, name: &'static str, url: Option<String>) -> Self {
        self.given_store = url.map(|u| (name, u));
        self
    }

    /// Sets the explicitly given SQLite file.
    pub fn db(mut self, name: &'static str, path: Option<PathBuf>) -> Self {
        self.given_db = path.map(|p| (name, p));
        self
    }

    /// Sets the explicitly given bus.
    pub fn bus(mut self, name: &'static str, url: Option<String>) -> Self {
        self.given_bus = url.map(|u| (name, u));
        self
    }

    /// Decides: given > environment > `runnel.toml` > default, for the store and the bus
    /// separately. Within one level, a store URL and a db path together are refused rather
    /// than silently choosing one.
    pub fn resolve(&self) -> Result<Settings, ConnectError> {
        let (store, store_origin) = self.resolve_store()?;
        let (bus, bus_origin) = self.resolve_bus()?;
        Ok(Settings {
            store,
            store_origin,
            bus,
            bus_origin,
        })
    }

    fn resolve_store(&self) -> Result<(StoreUrl, Origin), ConnectError> {
        let within = |origin: &dyn fmt::Display, e: ConnectError| ConnectError::ConfigFile {
            path: origin.to_string(),
            reason: e.to_string(),
        };
        match (&self.given_store, &self.given_db) {
            (Some((a, _)), Some((b, _))) => {
                return Err(ConnectError::Ambiguous(format!(
                    "{a} and {b} both name a store; give only one"
                )))
            }
            (Some((name, url)), None) => {
                return Ok((StoreUrl::parse(url)?, Origin::Given(name)));
            }
            (None, Some((name, path))) => return Ok((StoreUrl::sqlite(path), Origin::Given(name))),
            (None, None) => {}
        }
        match (&self.env_store, &self.env_db) {
            (Some(_), Some(_)) => {
                return Err(ConnectError::Ambiguous(format!(
                    "${ENV_STORE} and ${ENV_DB} are both set; unset one"
                )))
            }
            (Some(url), None) => {
                let origin = Origin::Env(ENV_STORE);
                let url = StoreUrl::parse(url).map_err(|e| within(&origin, e))?;
                return Ok((url, origin));
            }
            (None, Some(path)) => return Ok((StoreUrl::sqlite(path), Origin::Env(ENV_DB))),
            (None, None) => {}
        }
        if let Some((
            path,
            FileConfig {
                store: Some(url), ..
            },
        )) = &self.file
        {
            let origin = Origin::File(path.clone());
            let url = StoreUrl::parse(url).map_err(|e| within(&origin, e))?;
            return Ok((url, origin));
        }
        Ok((StoreUrl::parse(STORE_URL_DEFAULT)?, Origin::Default))
    }

    fn resolve_bus(&self) -> Result<(BusUrl, Origin), ConnectError> {
        let within = |origin: &dyn fmt::Display, e: ConnectError| ConnectError::ConfigFile {
            path: origin.to_string(),
            reason: e.to_string(),
        };
        if let Some((name, url)) = &self.given_bus {
            let origin = Origin::Given(name);
            return Ok((BusUrl::parse(url).map_err(|e| within(&origin, e))?, origin));
        }
        if let Some(url) = &self.env_bus {
            let origin = Origin::Env(ENV_BUS);
            return Ok((BusUrl::parse(url).map_err(|e| within(&origin, e))?, origin));
        }
        if let Some((path, FileConfig { bus: Some(url), .. })) = &self.file {
            let origin = Origin::File(path.clone());
            return Ok((BusUrl::parse(url).map_err(|e| within(&origin, e))?, origin));
        }
        Ok((BusUrl::Embedded, Origin::Default))
    }
}

/// Reads `runnel.toml` at `path`; `None` if there is none.
pub fn read_config_file(path: &Path) -> Result<Option<(PathBuf, FileConfig)>, ConnectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConnectError::ConfigFile {
                path: path.display().to_string(),
                reason: format!("cannot be read: {e}"),
            })
        }
    };
    let config: FileConfig = toml::from_str(&text).map_err(|e| ConnectError::ConfigFile {
        path: path.display().to_string(),
        // toml's messages span several lines (with a source excerpt); keep one.
        reason: format!("is not valid: {}", e.message().replace('\n', " ")),
    })?;
    Ok(Some((path.to_path_buf(), config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Transport;

    #[test]
    fn given_beats_env_beats_file_beats_default() {
        let mut i = SettingsInputs::default();
        let s = i.resolve().unwrap();
        assert_eq!(s.store_origin, Origin::Default);
        assert_eq!(s.store, StoreUrl::sqlite("runnel.db"));
        assert_eq!(s.bus, BusUrl::Embedded);

        i.file = Some((
            "runnel.toml".into(),
            FileConfig {
                store: Some("sqlite:file.db".into()),
                bus: Some("kafka://k:9092".into()),
            },
        ));
        let s = i.resolve().unwrap();
        assert_eq!(s.store, StoreUrl::sqlite("file.db"));
        assert_eq!(
            s.bus,
            BusUrl::Broker(Transport::Kafka, "kafka://k:9092".into())
        );

        i.env_db = Some("env.db".into());
        i.env_bus = Some("embedded".into());
        let s = i.resolve().unwrap();
        assert_eq!(s.store, StoreUrl::sqlite("env.db"));
        assert_eq!(s.store_origin, Origin::Env(ENV_DB));
        assert_eq!(s.bus, BusUrl::Embedded);

        let i = i
            .store("--store", Some("sqlite:flag.db".into()))
            .bus("--bus", Some("nats://n:4222".into()));
        let s = i.resolve().unwrap();
        assert_eq!(s.store, StoreUrl::sqlite("flag.db"));
        assert_eq!(s.store_origin, Origin::Given("--store"));
        assert_eq!(s.bus.transport(), Some(Transport::Nats));
    }

    #[test]
    fn two_stores_at_one_level_are_refused() {
        let mut i = SettingsInputs {
            env_store: Some("sqlite:a.db".into()),
            env_db: Some("b.db".into()),
            ..Default::default()
        };
        assert!(i.resolve().unwrap_err().is_bad_input());
        i.env_db = None;
        let i = i
            .store("--store", Some("sqlite:a.db".into()))
            .db("--db", Some("b.db".into()));
        assert!(i.resolve().is_err());
    }

    #[test]
    fn the_file_is_read_and_a_malformed_one_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE_NAME);
        assert_eq!(read_config_file(&path).unwrap(), None);
        std::fs::write(
            &path,
            "store = \"sqlite:x.db\"\nbus = \"embedded\"\n[app]\nx = 1\n",
        )
        .unwrap();
        let (_, config) = read_config_file(&path).unwrap().unwrap();
        assert_eq!(config.store.as_deref(), Some("sqlite:x.db"));
        std::fs::write(&path, "store = [").unwrap();
        let err = read_config_file(&path).unwrap_err();
        assert!(err.is_bad_input());
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_bad_url_names_where_it_came_from() {
        let i = SettingsInputs {
            env_bus: Some("mqtt://x".into()),
            ..Default::default()
        };
        let err = i.resolve().unwrap_err();
        assert!(err.to_string().contains("$RUNNEL_BUS"), "{err}");
    }
}

//! Configuration: [`NatsOptions`], read from a `nats://` URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::BusError;

/// Default subject prefix: topic `orders` is published on subject `runnel.orders`.
pub const SUBJECT_PREFIX_DEFAULT: &str = "runnel";
/// Default stream-name prefix: topic `orders` lives in stream `RUNNEL_orders`.
pub const STREAM_PREFIX_DEFAULT: &str = "RUNNEL";
/// Default JetStream duplicate window (publish deduplication by message id).
pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
/// Default delivery count after which the transport moves a message to the native dead
/// letter stream instead of handing it to the application again (the poison backstop).
pub const MAX_DELIVER_DEFAULT: u32 = 20;
/// Default lifetime of a group's consumer lease when its holder stops renewing it.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest lease lifetime accepted (renewals run every third of it).
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
/// Default KV bucket holding the group leases.
pub const LEASE_BUCKET_DEFAULT: &str = "runnel_leases";
/// Default time a publish keeps retrying (same message id, deduplicated by the server)
/// through a broker outage before it reports [`BusError::Unavailable`].
pub const PUBLISH_RETRY_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);
/// Room kept for headers under the server's `max_payload` when deriving the payload limit.
pub const HEADER_ALLOWANCE_BYTES: usize = 64 * 1024;

/// How a stream discards messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Keep messages until the age / count / size limits (every group, and
    /// `StartPosition::Earliest`, sees them). The default.
    Limits,
    /// Drop a message once every consumer group has acknowledged it (a group created
    /// later does not see older messages).
    Interest,
}

/// Where the JetStream streams keep messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// On disk (the default; survives a server restart).
    File,
    /// In memory.
    Memory,
}

/// Everything the NATS transport is configured with. Build it with
/// [`NatsOptions::from_url`]; every knob is also a public field.
///
/// Credentials (user, password, token) are never printed: `Debug` redacts them.
#[derive(Clone)]
pub struct NatsOptions {
    /// `host:port` of each server (several for a cluster), without credentials.
    pub servers: Vec<String>,
    /// Use TLS (`tls://` scheme or `?tls=true`).
    pub tls: bool,
    /// A CA certificate (PEM) to trust in addition to the system roots.
    pub tls_ca: Option<PathBuf>,
    /// User name (from the URL's user info).
    pub user: Option<String>,
    /// Password (from the URL's user info).
    pub password: Option<String>,
    /// Token (`?token=`, or a user info without password).
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// Client name shown by the server.
    pub client_name: Option<String>,
    /// Subject prefix (`?subject_prefix=`).
    pub subject_prefix: String,
    /// Stream-name prefix (`?stream_prefix=`).
    pub stream_prefix: String,
    /// Stream retention (`?retention=limits|interest`).
    pub retention: Retention,
    /// Stream storage (`?storage=file|memory`).
    pub storage: Storage,
    /// Stream replicas (`?replicas=`, 1 for a single server).
    pub replicas: usize,
    /// Maximum message age, none by default (`?max_age_secs=`).
    pub max_age: Option<Duration>,
    /// Maximum messages kept per stream (`?max_msgs=`).
    pub max_msgs: Option<i64>,
    /// Maximum bytes kept per stream (`?max_bytes=`).
    pub max_bytes: Option<i64>,
    /// Deduplication window (`?duplicate_window_secs=`).
    pub duplicate_window: Duration,
    /// Poison backstop: deliveries after which a message goes to the dead-letter stream
    /// (`?max_deliver=`).
    pub max_deliver: u32,
    /// Group lease lifetime (`?lease_ttl_ms=`).
    pub lease_ttl: Duration,
    /// KV bucket of the group leases (`?lease_bucket=`).
    pub lease_bucket: String,
    /// Largest payload accepted; `None` derives it from the server's `max_payload`
    /// (`?max_payload_bytes=`).
    pub max_payload_bytes: Option<usize>,
    /// How long a publish retries through an outage (`?publish_retry_ms=`).
    pub publish_retry_deadline: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            servers: vec!["127.0.0.1:4222".into()],
            tls: false,
            tls_ca: None,
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            client_name: None,
            subject_prefix: SUBJECT_PREFIX_DEFAULT.into(),
            stream_prefix: STREAM_PREFIX_DEFAULT.into(),
            retention: Retention::Limits,
            storage: Storage::File,
            replicas: 1,
            max_age: None,
            max_msgs: None,
            max_bytes: None,
            duplicate_window: DUPLICATE_WINDOW_DEFAULT,
            max_deliver: MAX_DELIVER_DEFAULT,
            lease_ttl: LEASE_TTL_DEFAULT,
            lease_bucket: LEASE_BUCKET_DEFAULT.into(),
            max_payload_bytes: None,
            publish_retry_deadline: PUBLISH_RETRY_DEADLINE_DEFAULT,
        }
    }
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsOptions")
            .field("servers", &self.servers)
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("user", &redact(&self.user))
            .field("password", &redact(&self.password))
            .field("token", &redact(&self.token))
            .field("credentials_file", &self.credentials_file)
            .field("client_name", &self.client_name)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream_prefix", &self.stream_prefix)
            .field("retention", &self.retention)
            .field("storage", &self.storage)
            .field("replicas", &self.replicas)
            .field("max_age", &self.max_age)
            .field("max_msgs", &self.max_msgs)
            .field("max_bytes", &self.max_bytes)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_deliver", &self.max_deliver)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_bucket", &self.lease_bucket)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("publish_retry_deadline", &self.publish_retry_deadline)
            .finish()
    }
}

impl fmt::Display for NatsOptions {
    /// The URL without credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}", self.servers.join(","))
    }
}

fn invalid(what: impl Into<String>) -> BusError {
    BusError::InvalidArgument(what.into())
}

fn parse_num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, BusError> {
    value.parse().map_err(|_| {
        invalid(format!(
            "NATS URL parameter {name}={value:?} is not a number"
        ))
    })
}

fn parse_bool(name: &str, value: &str) -> Result<bool, BusError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "NATS URL parameter {name}={value:?} must be true or false"
        ))),
    }
}

fn valid_token(what: &str, value: &str) -> Result<String, BusError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(value.to_string())
    } else {
        Err(invalid(format!(
            "{what} must be 1..=64 ASCII letters, digits, '-' or '_'"
        )))
    }
}

impl NatsOptions {
    /// Reads the options from a URL:
    ///
    /// `nats://[user:password@]host[:port][,host2[:port]]...[?param=value&...]`
    /// (`tls://` for TLS). Parameters: `tls`, `tls_ca`, `token`, `creds`, `name`,
    /// `subject_prefix`, `stream_prefix`, `retention` (`limits` | `interest`), `storage`
    /// (`file` | `memory`), `replicas`, `max_age_secs`, `max_msgs`, `max_bytes`,
    /// `duplicate_window_secs`, `max_deliver`, `lease_ttl_ms`, `lease_bucket`,
    /// `max_payload_bytes`, `publish_retry_ms`.
    ///
    /// ```
    /// use runnel_nats::NatsOptions;
    /// let o = NatsOptions::from_url("nats://app:secret@127.0.0.1:4222?max_age_secs=86400&max_deliver=10")?;
    /// assert_eq!(o.servers, vec!["127.0.0.1:4222".to_string()]);
    /// assert_eq!(o.max_deliver, 10);
    /// assert!(!format!("{o:?}").contains("secret"));
    /// # Ok::<(), runnel_core::BusError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<NatsOptions, BusError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("a NATS URL looks like nats://host:port"))?;
        let mut o = NatsOptions::default();
        match scheme {
            "nats" => {}
            "tls" => o.tls = true,
            other => {
                return Err(invalid(format!(
                    "unsupported NATS URL scheme {other:?} (use nats:// or tls://)"
                )))
            }
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.trim_end_matches('/');
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let decode = |s: &str| {
                    url::form_urlencoded::parse(format!("v={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                match userinfo.split_once(':') {
                    Some((u, p)) => {
                        o.user = Some(decode(u));
                        o.password = Some(decode(p));
                    }
                    None => o.token = Some(decode(userinfo)),
                }
                hosts
            }
            None => authority,
        };
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:4222")
                }
            })
            .collect();
        if servers.is_empty() {
            return Err(invalid("the NATS URL names no server"));
        }
        o.servers = servers;
        if let Some(q) = query {
            for (name, value) in url::form_urlencoded::parse(q.as_bytes()) {
                let (name, value) = (name.as_ref(), value.as_ref());
                match name {
                    "tls" => o.tls = parse_bool(name, value)?,
                    "tls_ca" => o.tls_ca = Some(PathBuf::from(value)),
                    "token" => o.token = Some(value.to_string()),
                    "creds" => o.credentials_file = Some(PathBuf::from(value)),
                    "name" => o.client_name = Some(value.to_string()),
                    "subject_prefix" => o.subject_prefix = valid_token(name, value)?,
                    "stream_prefix" => o.stream_prefix = valid_token(name, value)?,
                    "retention" => {
                        o.retention = match value {
                            "limits" => Retention::Limits,
                            "interest" => Retention::Interest,
                            _ => return Err(invalid("retention must be limits or interest")),
                        }
                    }
                    "storage" => {
                        o.storage = match value {
                            "file" => Storage::File,
                            "memory" => Storage::Memory,
                            _ => return Err(invalid("storage must be file or memory")),
                        }
                    }
                    "replicas" => o.replicas = parse_num(name, value)?,
                    "max_age_secs" => {
                        o.max_age = Some(Duration::from_secs(parse_num(name, value)?))
                    }
                    "max_msgs" => o.max_msgs = Some(parse_num(name, value)?),
                    "max_bytes" => o.max_bytes = Some(parse_num(name, value)?),
                    "duplicate_window_secs" => {
                        o.duplicate_window = Duration::from_secs(parse_num(name, value)?)
                    }
                    "max_deliver" => o.max_deliver = parse_num(name, value)?,
                    "lease_ttl_ms" => o.lease_ttl = Duration::from_millis(parse_num(name, value)?),
                    "lease_bucket" => o.lease_bucket = valid_token(name, value)?,
                    "max_payload_bytes" => o.max_payload_bytes = Some(parse_num(name, value)?),
                    "publish_retry_ms" => {
                        o.publish_retry_deadline = Duration::from_millis(parse_num(name, value)?)
                    }
                    other => {
                        return Err(invalid(format!("unknown NATS URL parameter {other:?}")));
                    }
                }
            }
        }
        o.validate()?;
        Ok(o)
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.replicas == 0 || self.replicas > 5 {
            return Err(invalid("replicas must be 1..=5"));
        }
        if self.max_deliver < 2 {
            return Err(invalid("max_deliver must be at least 2"));
        }
        if self.lease_ttl < LEASE_TTL_MIN {
            return Err(invalid(format!(
                "lease_ttl must be at least {LEASE_TTL_MIN:?}"
            )));
        }
        if self.duplicate_window.is_zero() {
            return Err(invalid("duplicate_window must be positive"));
        }
        if let Some(age) = self.max_age {
            if age < self.duplicate_window {
                return Err(invalid(
                    "max_age must be at least the duplicate window (JetStream rule)",
                ));
            }
        }
        if let Some(max) = self.max_payload_bytes {
            if max == 0 || max > MESSAGE_PAYLOAD_MAX_DEFAULT * 64 {
                return Err(invalid("max_payload_bytes is out of range"));
            }
        }
        Ok(())
    }

    /// The URL the client connects to (servers only; credentials go separately).
    pub(crate) fn server_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "tls" } else { "nats" };
        self.servers
            .iter()
            .map(|s| format!("{scheme}://{s}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_read_and_credentials_redacted() {
        let o = NatsOptions::from_url(
            "tls://bob:p%40ss@a:1,b?retention=interest&storage=memory&max_msgs=5&lease_ttl_ms=2000&name=svc",
        )
        .expect("valid url");
        assert!(o.tls);
        assert_eq!(o.servers, vec!["a:1".to_string(), "b:4222".to_string()]);
        assert_eq!(o.user.as_deref(), Some("bob"));
        assert_eq!(o.password.as_deref(), Some("p@ss"));
        assert_eq!(o.retention, Retention::Interest);
        assert_eq!(o.storage, Storage::Memory);
        assert_eq!(o.max_msgs, Some(5));
        assert_eq!(o.lease_ttl, Duration::from_secs(2));
        let shown = format!("{o:?} {o}");
        assert!(!shown.contains("p@ss") && !shown.contains("bob"), "{shown}");
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in [
            "amqp://x",
            "nats://",
            "nats://h?unknown=1",
            "nats://h?max_deliver=1",
            "nats://h?lease_ttl_ms=10",
            "nats://h?stream_prefix=a.b",
        ] {
            assert!(
                matches!(
                    NatsOptions::from_url(bad),
                    Err(BusError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}

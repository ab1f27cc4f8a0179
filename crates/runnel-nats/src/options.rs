//! Configuration: [`NatsOptions`], read from a `nats://` URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use runnel_core::config::{percent_decode, shared, split_query, ConfigError, UrlQuery};
use runnel_core::envelope::Envelope;
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
/// Most partitions a topic may be split into (`?partitions=`): every group holds one
/// durable consumer and one lease per partition.
pub const PARTITIONS_MAX: u32 = 256;
/// Fewest deliveries accepted for `max_deliveries` (one delivery and one retry).
pub const MAX_DELIVERIES_MIN: u32 = 2;
/// Most stream replicas (JetStream's limit).
pub const REPLICAS_MAX: usize = 5;
/// Largest payload limit accepted for `max_payload_bytes`.
pub const MAX_PAYLOAD_BYTES_MAX: usize = MESSAGE_PAYLOAD_MAX_DEFAULT * 64;
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
    /// Stream retention (`?retention_policy=limits|interest`).
    pub retention: Retention,
    /// Stream storage (`?storage=file|memory`).
    pub storage: Storage,
    /// Stream replicas (`?replicas=`, 1 for a single server).
    pub replicas: usize,
    /// Maximum message age, none by default (`?retention=7d`).
    pub max_age: Option<Duration>,
    /// Maximum messages kept per stream (`?max_msgs=`).
    pub max_msgs: Option<i64>,
    /// Maximum bytes kept per stream (`?max_bytes=`).
    pub max_bytes: Option<i64>,
    /// Deduplication window (`?duplicate_window=2m`).
    pub duplicate_window: Duration,
    /// Poison backstop: deliveries after which a message goes to the dead-letter stream
    /// (`?max_deliveries=`).
    pub max_deliver: u32,
    /// Group lease lifetime (`?lease_ttl=10s`).
    pub lease_ttl: Duration,
    /// KV bucket of the group leases (`?lease_bucket=`).
    pub lease_bucket: String,
    /// Largest payload accepted; `None` derives it from the server's `max_payload`
    /// (`?max_payload_bytes=`).
    pub max_payload_bytes: Option<usize>,
    /// How long a publish retries through an outage (`?publish_timeout=30s`).
    pub publish_retry_deadline: Duration,
    /// Partitions per topic (`?partitions=`, 1 by default). With more than one, a topic's
    /// messages go to partition subjects by a hash of their ordering key, and a group's
    /// partitions are balanced over its members (see the crate's `DESIGN.md`). Every
    /// client of a topic must use the same count.
    pub partitions: u32,
    /// How messages are shaped on the wire (`?envelope=`, CloudEvents by default); a
    /// subscription may override it in its `SubscribeOptions`.
    pub envelope: Envelope,
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
            partitions: 1,
            envelope: Envelope::CloudEvents,
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
            .field("partitions", &self.partitions)
            .field("envelope", &self.envelope)
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

/// The URL scheme named in configuration errors.
const SCHEME: &str = "nats";

/// Parameters that were renamed when every backend took the one URL grammar: (old, new,
/// an example value in the new syntax).
const RENAMED: [(&str, &str, &str); 5] = [
    ("max_deliver", "max_deliveries", "20"),
    ("max_age_secs", "retention", "7d"),
    ("duplicate_window_secs", "duplicate_window", "2m"),
    ("lease_ttl_ms", "lease_ttl", "10s"),
    ("publish_retry_ms", "publish_timeout", "30s"),
];

fn valid_token(name: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok(Some(v))
        }
        Some(v) => Err(ConfigError::invalid_value(
            SCHEME,
            name,
            v,
            "1..=64 ASCII letters, digits, '-' or '_'",
        )),
    }
}

impl NatsOptions {
    /// Reads the options from a URL:
    ///
    /// `nats://[user:password@]host[:port][,host2[:port]]...[?param=value&...]`
    /// (`tls://` for TLS). Parameters (durations are written `30s`, `5m`, `7d`): `tls`,
    /// `tls_ca`, `token`, `creds`, `name`, `subject_prefix`, `stream_prefix`, `retention`
    /// (max message age, unlimited by default), `retention_policy` (`limits` |
    /// `interest`), `storage` (`file` | `memory`), `replicas`, `max_msgs`, `max_bytes`,
    /// `duplicate_window`, `max_deliveries`, `lease_ttl`, `lease_bucket`,
    /// `max_payload_bytes`, `publish_timeout`, `partitions`. Unknown parameters are refused; see
    /// `docs/configuration.md` for the table of every backend's parameters.
    ///
    /// ```
    /// use runnel_nats::NatsOptions;
    /// let o = NatsOptions::from_url("nats://app:secret@127.0.0.1:4222?retention=1d&max_deliveries=10")?;
    /// assert_eq!(o.servers, vec!["127.0.0.1:4222".to_string()]);
    /// assert_eq!(o.max_deliver, 10);
    /// assert_eq!(o.max_age, Some(std::time::Duration::from_secs(86_400)));
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
        let (authority, query) = split_query(rest);
        let authority = authority.trim_end_matches('/');
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| {
                        ConfigError::invalid_url(SCHEME, "the user info is not valid UTF-8")
                    })
                };
                match userinfo.split_once(':') {
                    Some((u, p)) => {
                        o.user = Some(decode(u)?);
                        o.password = Some(decode(p)?);
                    }
                    None => o.token = Some(decode(userinfo)?),
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
        o.read_query(query)?;
        o.validate()?;
        Ok(o)
    }

    /// Applies the query parameters of a `nats://` URL.
    fn read_query(&mut self, query: &str) -> Result<(), ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        for (old, new, example) in RENAMED {
            q.renamed(old, new, example)?;
        }
        // `retention` used to name the discard policy; say where that went.
        if let Some(v @ ("limits" | "interest")) = q.peek("retention") {
            return Err(ConfigError::invalid_value(
                SCHEME,
                "retention",
                v,
                "a duration (the maximum message age, e.g. 7d); the limits / interest \
                 discard policy is now retention_policy",
            ));
        }
        if let Some(v) = q.bool("tls")? {
            self.tls = v;
        }
        if let Some(v) = q.string("tls_ca") {
            self.tls_ca = Some(PathBuf::from(v));
        }
        if let Some(v) = q.string("token") {
            self.token = Some(v);
        }
        if let Some(v) = q.string("creds") {
            self.credentials_file = Some(PathBuf::from(v));
        }
        if let Some(v) = q.string("name") {
            self.client_name = Some(v);
        }
        if let Some(v) = valid_token("subject_prefix", q.string("subject_prefix"))? {
            self.subject_prefix = v;
        }
        if let Some(v) = valid_token("stream_prefix", q.string("stream_prefix"))? {
            self.stream_prefix = v;
        }
        if let Some(v) = q.duration_in(shared::RETENTION, Duration::from_secs(1)..=Duration::MAX)? {
            self.max_age = Some(v);
        }
        let policies = [
            ("limits", Retention::Limits),
            ("interest", Retention::Interest),
        ];
        if let Some(v) = q.choice("retention_policy", &policies)? {
            self.retention = v;
        }
        let storages = [("file", Storage::File), ("memory", Storage::Memory)];
        if let Some(v) = q.choice("storage", &storages)? {
            self.storage = v;
        }
        if let Some(v) = q.integer("replicas", 1..=REPLICAS_MAX)? {
            self.replicas = v;
        }
        if let Some(v) = q.integer("max_msgs", 1..=i64::MAX)? {
            self.max_msgs = Some(v);
        }
        if let Some(v) = q.integer("max_bytes", 1..=i64::MAX)? {
            self.max_bytes = Some(v);
        }
        if let Some(v) =
            q.duration_in("duplicate_window", Duration::from_secs(1)..=Duration::MAX)?
        {
            self.duplicate_window = v;
        }
        if let Some(v) = q.integer(shared::MAX_DELIVERIES, MAX_DELIVERIES_MIN..=u32::MAX)? {
            self.max_deliver = v;
        }
        if let Some(v) = q.duration_in("lease_ttl", LEASE_TTL_MIN..=Duration::MAX)? {
            self.lease_ttl = v;
        }
        if let Some(v) = valid_token("lease_bucket", q.string("lease_bucket"))? {
            self.lease_bucket = v;
        }
        if let Some(v) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=MAX_PAYLOAD_BYTES_MAX)? {
            self.max_payload_bytes = Some(v);
        }
        if let Some(v) = q.duration(shared::PUBLISH_TIMEOUT)? {
            self.publish_retry_deadline = v;
        }
        if let Some(v) = q.integer("partitions", 1..=PARTITIONS_MAX)? {
            self.partitions = v;
        }
        self.envelope = Envelope::from_query(&mut q)?;
        q.finish()
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.replicas == 0 || self.replicas > REPLICAS_MAX {
            return Err(invalid(format!("replicas must be 1..={REPLICAS_MAX}")));
        }
        if self.max_deliver < MAX_DELIVERIES_MIN {
            return Err(invalid(format!(
                "max_deliveries must be at least {MAX_DELIVERIES_MIN}"
            )));
        }
        if self.lease_ttl < LEASE_TTL_MIN {
            return Err(invalid(format!(
                "lease_ttl must be at least {LEASE_TTL_MIN:?}"
            )));
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(invalid(format!("partitions must be 1..={PARTITIONS_MAX}")));
        }
        if self.duplicate_window.is_zero() {
            return Err(invalid("duplicate_window must be positive"));
        }
        if let Some(age) = self.max_age {
            if age < self.duplicate_window {
                return Err(invalid(
                    "retention (the maximum message age) must be at least the duplicate \
                     window (JetStream rule)",
                ));
            }
        }
        if let Some(max) = self.max_payload_bytes {
            if max == 0 || max > MAX_PAYLOAD_BYTES_MAX {
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
            "tls://bob:p%40ss@a:1,b?retention_policy=interest&storage=memory&max_msgs=5&lease_ttl=2s&name=svc\
             &retention=7d&duplicate_window=5m&max_deliveries=3&publish_timeout=1m&partitions=6",
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
        assert_eq!(o.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(o.duplicate_window, Duration::from_secs(300));
        assert_eq!(o.max_deliver, 3);
        assert_eq!(o.publish_retry_deadline, Duration::from_secs(60));
        assert_eq!(o.partitions, 6);
        assert_eq!(NatsOptions::default().partitions, 1);
        let shown = format!("{o:?} {o}");
        assert!(!shown.contains("p@ss") && !shown.contains("bob"), "{shown}");
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in [
            "amqp://x",
            "nats://",
            "nats://h?unknown=1",
            "nats://h?max_deliveries=1",
            "nats://h?lease_ttl=10ms",
            "nats://h?lease_ttl=10",
            "nats://h?stream_prefix=a.b",
            "nats://h?retention=7d&retention=8d",
            "nats://h?retention=1s",
            "nats://h?partitions=0",
            "nats://h?partitions=257",
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

    #[test]
    fn old_parameter_names_point_to_the_new_ones() {
        for (old, new) in [
            ("max_deliver=5", "max_deliver was renamed max_deliveries"),
            ("max_age_secs=60", "max_age_secs was renamed retention"),
            (
                "duplicate_window_secs=60",
                "duplicate_window_secs was renamed duplicate_window",
            ),
            ("lease_ttl_ms=5000", "lease_ttl_ms was renamed lease_ttl"),
            (
                "publish_retry_ms=1",
                "publish_retry_ms was renamed publish_timeout",
            ),
        ] {
            let err = NatsOptions::from_url(&format!("nats://h?{old}")).unwrap_err();
            assert!(err.to_string().contains(new), "{old}: {err}");
        }
        let err = NatsOptions::from_url("nats://h?retention=interest").unwrap_err();
        assert!(err.to_string().contains("retention_policy"), "{err}");
    }

    #[test]
    fn unknown_parameters_list_the_valid_ones() {
        let err = NatsOptions::from_url("nats://h?max_deliverys=3").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("lease_ttl, max_bytes, max_deliveries, max_msgs"),
            "{text}"
        );
    }
    #[test]
    fn the_envelope_parameters_are_read_and_checked() {
        use runnel_core::envelope::{Envelope, Field, Mapping};
        let o = NatsOptions::from_url("nats://127.0.0.1:4222").unwrap();
        assert_eq!(o.envelope, Envelope::CloudEvents);
        let o = NatsOptions::from_url("nats://127.0.0.1:4222?envelope=json-event").unwrap();
        assert_eq!(o.envelope, Envelope::Mapped(Mapping::json_event().into()));
        let o = NatsOptions::from_url(
            "nats://127.0.0.1:4222?envelope=mapped&envelope_type=header:kind&envelope_id=field:uuid,broker",
        )
        .unwrap();
        let Envelope::Mapped(m) = &o.envelope else {
            panic!("a mapping: {:?}", o.envelope)
        };
        assert_eq!(m.event_type, vec![Field::Header("kind".into())]);
        assert_eq!(m.id, vec![Field::Json("uuid".into()), Field::Broker]);
        for (bad, says) in [
            ("envelope=xml", "one of cloudevents"),
            ("envelope_type=header:kind", "envelope=mapped"),
            ("envelope=mapped", "event type"),
        ] {
            let err = NatsOptions::from_url(&format!("nats://127.0.0.1:4222?{bad}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}

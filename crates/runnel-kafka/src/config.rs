//! [`KafkaOptions`]: the `kafka://` configuration URL and the librdkafka settings it turns
//! into. Credentials are kept out of `Debug` output and never logged.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use runnel_core::config::{shared, ConfigError, UrlQuery};
use runnel_core::envelope::Envelope;
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::{BusError, GroupName, TopicName};

/// Default partitions of topics Runnel creates (more partitions = more consumers of a
/// group can share the work; a key always stays in one partition).
pub const PARTITIONS_DEFAULT: i32 = 4;
/// Most partitions a topic created by Runnel may have.
pub const PARTITIONS_MAX: i32 = 1024;
/// Default replication factor of topics Runnel creates (1 suits a single broker; use 3 in
/// production clusters).
pub const REPLICATION_FACTOR_DEFAULT: i32 = 1;
/// Default producer linger: how long the producer waits to fill a batch.
pub const LINGER_DEFAULT: Duration = Duration::from_millis(5);
/// Default consumer group session timeout.
pub const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default group heartbeat interval (short, so members notice a rebalance quickly).
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(500);
/// Default number of deliveries after which a message goes to the topic's native
/// dead-letter topic instead of being delivered again (the backstop for messages that
/// crash consumers; the router's own retry/dead-letter layer normally acts long before).
pub const MAX_DELIVERIES_DEFAULT: u32 = 16;
/// Default time a broker request may take before the operation counts as failed.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Room for headers and record framing above the payload limit in the producer's
/// `message.max.bytes`.
pub const RECORD_OVERHEAD_MAX_BYTES: usize = 1024 * 1024;
/// Largest payload limit accepted for `max_payload_bytes`.
pub const MAX_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest producer linger librdkafka accepts (`linger.ms` ≤ 900 000).
pub const LINGER_MAX: Duration = Duration::from_secs(900);
/// Longest session timeout or heartbeat interval accepted (librdkafka's limit is an hour).
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3_600);

/// Longest `prefix` (with the '.' after it and the longest Runnel topic name, a
/// prefixed topic stays within Kafka's 249-character limit).
pub const PREFIX_LEN_MAX: usize = 40;

/// The URL scheme named in configuration errors.
const SCHEME: &str = "kafka";

/// Parameters that were renamed when every backend took the one URL grammar: (old, new,
/// an example value in the new syntax).
const RENAMED: [(&str, &str, &str); 3] = [
    ("linger_ms", "linger", "5ms"),
    ("session_timeout_ms", "session_timeout", "10s"),
    ("heartbeat_interval_ms", "heartbeat_interval", "500ms"),
];

/// Most messages (kilobytes) librdkafka pre-fetches per consumer.
pub const PREFETCH_MAX_KBYTES: usize = 16 * 1024;

/// How Runnel talks to a Kafka cluster.
///
/// Built from a URL with [`KafkaOptions::from_url`]:
///
/// ```text
/// kafka://[user:password@]host:port[,host:port...][?param=value&...]
/// ```
///
/// | parameter | meaning | default |
/// |---|---|---|
/// | `partitions` | partitions of topics Runnel creates | 4 |
/// | `replication_factor` | replication factor of topics Runnel creates | 1 |
/// | `max_payload_bytes` | largest payload accepted by `publish` | 1 MiB |
/// | `max_deliveries` | deliveries before a message moves to `<topic>.dlq` (0 = never) | 16 |
/// | `linger` | producer batching delay (a duration) | `5ms` |
/// | `session_timeout` | consumer group session timeout (a duration) | `10s` |
/// | `heartbeat_interval` | consumer group heartbeat interval (a duration) | `500ms` |
/// | `client_id` | the Kafka client id | `runnel` |
/// | `prefix` | namespace of every topic and group id: topic `orders` is the Kafka topic `<prefix>.orders` | none |
/// | `tls` | `true` for TLS (SSL or SASL_SSL) | `false` |
/// | `ca_location` | CA certificate file for TLS | system store |
/// | `sasl_mechanism` | `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with user and password) | `PLAIN` when a user is given |
///
/// Durations are written `250ms`, `30s`, `5m`; unknown parameters are refused (see
/// `docs/configuration.md` for every backend's parameters).
///
/// ```
/// use runnel_kafka::KafkaOptions;
/// let options = KafkaOptions::from_url("kafka://app:s3cret@10.0.0.1:9092,10.0.0.2:9092?partitions=12&tls=true")?;
/// assert_eq!(options.brokers, "10.0.0.1:9092,10.0.0.2:9092");
/// assert_eq!(options.partitions, 12);
/// // The password never shows in debug output.
/// assert!(!format!("{options:?}").contains("s3cret"));
/// # Ok::<(), runnel_core::BusError>(())
/// ```
#[derive(Clone)]
pub struct KafkaOptions {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// Partitions of topics Runnel creates.
    pub partitions: i32,
    /// Replication factor of topics Runnel creates.
    pub replication_factor: i32,
    /// Largest payload `publish` accepts.
    pub max_payload_bytes: usize,
    /// Deliveries after which a message goes to the native dead-letter topic (0 = never).
    pub max_deliveries: u32,
    /// Producer batching delay.
    pub linger: Duration,
    /// Consumer group session timeout.
    pub session_timeout: Duration,
    /// Consumer group heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Kafka client id.
    pub client_id: String,
    /// Namespace of every Kafka topic and group id Runnel uses (`?prefix=`; empty = none).
    /// Applications (or test runs) that share a cluster keep apart by using different
    /// prefixes: topic `orders` becomes `<prefix>.orders` and group `billing` on it the
    /// Kafka group `<prefix>.billing:orders`.
    pub prefix: String,
    /// Use TLS.
    pub tls: bool,
    /// CA certificate file for TLS.
    pub ca_location: Option<String>,
    /// SASL credentials (user, password) — redacted in `Debug`.
    pub credentials: Option<Credentials>,
    /// SASL mechanism.
    pub sasl_mechanism: Option<String>,
    /// How records are shaped (`?envelope=`, CloudEvents binary mode by default); a
    /// subscription may override it in its `SubscribeOptions`.
    pub envelope: Envelope,
}

/// SASL user name and password. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password (never printed).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_deliveries", &self.max_deliveries)
            .field("linger", &self.linger)
            .field("session_timeout", &self.session_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("client_id", &self.client_id)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("ca_location", &self.ca_location)
            .field("credentials", &self.credentials)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("envelope", &self.envelope)
            .finish()
    }
}

impl KafkaOptions {
    /// Options for `brokers` (`host:port[,host:port...]`) with every default.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            partitions: PARTITIONS_DEFAULT,
            replication_factor: REPLICATION_FACTOR_DEFAULT,
            max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
            max_deliveries: MAX_DELIVERIES_DEFAULT,
            linger: LINGER_DEFAULT,
            session_timeout: SESSION_TIMEOUT_DEFAULT,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            client_id: "runnel".into(),
            prefix: String::new(),
            tls: false,
            ca_location: None,
            credentials: None,
            sasl_mechanism: None,
            envelope: Envelope::CloudEvents,
        }
    }

    /// Parses a `kafka://` URL (see the [type docs](KafkaOptions)).
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        let invalid = |reason: &str| {
            // The URL may hold a password: only its scheme is echoed.
            BusError::InvalidArgument(format!("invalid kafka URL: {reason}"))
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| invalid("it must start with kafka://"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.trim_end_matches('/');
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(invalid("no broker host:port given"));
        }
        for host in hosts.split(',') {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid("each broker must be host:port"));
            }
        }
        let mut options = KafkaOptions::new(hosts);
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo
                .split_once(':')
                .ok_or_else(|| invalid("credentials must be user:password"))?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| invalid("credentials are not valid percent-encoded UTF-8"))
            };
            options.credentials = Some(Credentials {
                user: decode(user)?,
                password: decode(password)?,
            });
        }
        options.read_query(query.unwrap_or(""))?;
        Ok(options)
    }

    /// Applies the query parameters of a `kafka://` URL.
    fn read_query(&mut self, query: &str) -> Result<(), ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        for (old, new, example) in RENAMED {
            q.renamed(old, new, example)?;
        }
        if let Some(n) = q.integer("partitions", 1..=PARTITIONS_MAX)? {
            self.partitions = n;
        }
        if let Some(n) = q.integer("replication_factor", 1..=i32::from(i16::MAX))? {
            self.replication_factor = n;
        }
        if let Some(n) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=MAX_PAYLOAD_BYTES_MAX)? {
            self.max_payload_bytes = n;
        }
        if let Some(n) = q.integer(shared::MAX_DELIVERIES, 0..=u32::MAX)? {
            self.max_deliveries = n;
        }
        if let Some(d) = q.duration_in("linger", Duration::ZERO..=LINGER_MAX)? {
            self.linger = d;
        }
        if let Some(d) = q.duration_in("session_timeout", Duration::from_millis(1)..=TIMEOUT_MAX)? {
            self.session_timeout = d;
        }
        if let Some(d) =
            q.duration_in("heartbeat_interval", Duration::from_millis(1)..=TIMEOUT_MAX)?
        {
            self.heartbeat_interval = d;
        }
        if let Some(v) = q.string("client_id") {
            self.client_id = v;
        }
        if let Some(v) = q.string("prefix") {
            let ok = !v.is_empty()
                && v.len() <= PREFIX_LEN_MAX
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(ConfigError::invalid_value(
                    SCHEME,
                    "prefix",
                    &v,
                    format!(
                        "1..={PREFIX_LEN_MAX} bytes of ASCII letters, digits, '.', '_', '-', starting with a letter or digit"
                    ),
                ));
            }
            self.prefix = v;
        }
        if let Some(v) = q.bool("tls")? {
            self.tls = v;
        }
        if let Some(v) = q.string("ca_location") {
            self.ca_location = Some(v);
        }
        let mechanisms = [
            ("PLAIN", "PLAIN"),
            ("SCRAM-SHA-256", "SCRAM-SHA-256"),
            ("SCRAM-SHA-512", "SCRAM-SHA-512"),
        ];
        if let Some(m) = q.choice("sasl_mechanism", &mechanisms)? {
            self.sasl_mechanism = Some(m.to_string());
        }
        self.envelope = Envelope::from_query(&mut q)?;
        q.finish()
    }

    /// The Kafka topic of a Runnel topic: its name, after the `prefix` when one is set.
    pub fn kafka_topic(&self, topic: &TopicName) -> String {
        self.prefixed(topic.as_str())
    }

    /// The Kafka group id of a Runnel group on a topic: [`kafka_group_id`], after the
    /// `prefix` when one is set.
    ///
    /// [`kafka_group_id`]: crate::kafka_group_id
    pub fn kafka_group(&self, group: &GroupName, topic: &TopicName) -> String {
        self.prefixed(&crate::subscriber::kafka_group_id(group, topic))
    }

    fn prefixed(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The settings every client (producer, consumer, admin) shares: brokers, security.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set(
                "socket.timeout.ms",
                REQUEST_TIMEOUT_DEFAULT.as_millis().to_string(),
            )
            // Reconnect quickly after an outage (librdkafka backs off up to the max).
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "3");
        let protocol = match (self.tls, self.credentials.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(ca) = &self.ca_location {
            c.set("ssl.ca.location", ca);
        }
        if let Some(creds) = &self.credentials {
            c.set(
                "sasl.mechanism",
                self.sasl_mechanism.as_deref().unwrap_or("PLAIN"),
            )
            .set("sasl.username", &creds.user)
            .set("sasl.password", &creds.password);
        }
        c
    }

    /// The idempotent producer's settings: every write acknowledged by all in-sync
    /// replicas, retried without duplicates or reordering.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.max.bytes",
                (self.max_payload_bytes + RECORD_OVERHEAD_MAX_BYTES).to_string(),
            )
            // A publish fails (and the caller retries) rather than waiting forever.
            .set(
                "message.timeout.ms",
                REQUEST_TIMEOUT_DEFAULT.as_millis().to_string(),
            )
            // Keyless messages spread over partitions; keyed ones hash like the Java client.
            .set("partitioner", "murmur2_random");
        c
    }

    /// A group consumer's settings: offsets committed only by Runnel, after handling.
    pub(crate) fn consumer_config(&self, kafka_group: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", kafka_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // New partitions without a committed offset start at the beginning; a new
            // group that starts at the latest message has its start committed first.
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval.as_millis().to_string(),
            )
            .set("fetch.wait.max.ms", "100")
            .set(
                "queued.max.messages.kbytes",
                PREFETCH_MAX_KBYTES.to_string(),
            )
            .set(
                "fetch.message.max.bytes",
                (self.max_payload_bytes + RECORD_OVERHEAD_MAX_BYTES).to_string(),
            )
            .set("enable.partition.eof", "false");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_everything() {
        let o = KafkaOptions::from_url(
            "kafka://u%40x:p%3Ass@h1:9092,h2:9093/?partitions=8&replication_factor=3&max_payload_bytes=1000&max_deliveries=0&linger=1ms&session_timeout=45s&tls=true&sasl_mechanism=SCRAM-SHA-256&client_id=svc",
        )
        .unwrap();
        assert_eq!(o.brokers, "h1:9092,h2:9093");
        assert_eq!(o.partitions, 8);
        assert_eq!(o.replication_factor, 3);
        assert_eq!(o.max_payload_bytes, 1000);
        assert_eq!(o.max_deliveries, 0);
        assert_eq!(o.linger, Duration::from_millis(1));
        assert_eq!(o.session_timeout, Duration::from_secs(45));
        assert!(o.tls);
        let creds = o.credentials.clone().unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.as_str()),
            ("u@x", "p:ss")
        );
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("p:ss") && shown.contains("redacted"),
            "{shown}"
        );
        assert_eq!(o.client_config().get("security.protocol"), Some("sasl_ssl"));
    }

    #[test]
    fn bad_urls_are_typed_errors_without_secrets() {
        for bad in [
            "nats://h:1",
            "kafka://",
            "kafka://host",
            "kafka://h:1?partitions=0",
            "kafka://h:1?nope=1",
            "kafka://h:1?tls=maybe",
            "kafka://user@h:1",
            "kafka://h:1?linger=5",
            "kafka://h:1?partitions=2&partitions=3",
        ] {
            let err = KafkaOptions::from_url(bad).unwrap_err();
            assert!(
                matches!(err, BusError::InvalidArgument(_)),
                "{bad}: {err:?}"
            );
        }
        let err = KafkaOptions::from_url("kafka://u:topsecret@h:1?partitions=x").unwrap_err();
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn a_prefix_namespaces_topics_and_groups() {
        let topic = TopicName::new("orders").unwrap();
        let group = GroupName::new("billing").unwrap();
        let plain = KafkaOptions::from_url("kafka://h:1").unwrap();
        assert_eq!(plain.kafka_topic(&topic), "orders");
        assert_eq!(plain.kafka_group(&group, &topic), "billing:orders");
        let o = KafkaOptions::from_url("kafka://h:1?prefix=run-7.shop").unwrap();
        assert_eq!(o.prefix, "run-7.shop");
        assert_eq!(o.kafka_topic(&topic), "run-7.shop.orders");
        assert_eq!(o.kafka_group(&group, &topic), "run-7.shop.billing:orders");
        let longest = "p".repeat(PREFIX_LEN_MAX);
        assert!(KafkaOptions::from_url(&format!("kafka://h:1?prefix={longest}")).is_ok());
        for bad in ["", ".x", "a%20b", "a:b", "a/b"] {
            let url = format!("kafka://h:1?prefix={bad}");
            let err = KafkaOptions::from_url(&url).unwrap_err();
            assert!(err.to_string().contains("prefix"), "{bad}: {err}");
        }
        let err = KafkaOptions::from_url(&format!("kafka://h:1?prefix={longest}p")).unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
    }

    #[test]
    fn old_parameter_names_point_to_the_new_ones() {
        let err = KafkaOptions::from_url("kafka://h:1?linger_ms=5").unwrap_err();
        assert!(
            err.to_string().contains("linger_ms was renamed linger"),
            "{err}"
        );
        let err = KafkaOptions::from_url("kafka://h:1?session_timeout_ms=5").unwrap_err();
        assert!(err.to_string().contains("session_timeout"), "{err}");
        let err = KafkaOptions::from_url("kafka://h:1?nope=1").unwrap_err();
        assert!(
            err.to_string()
                .contains("client_id, envelope, envelope_causation_id"),
            "{err}"
        );
    }
    #[test]
    fn the_envelope_parameters_are_read_and_checked() {
        use runnel_core::envelope::{Envelope, Field, Mapping};
        let o = KafkaOptions::from_url("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(o.envelope, Envelope::CloudEvents);
        let o = KafkaOptions::from_url("kafka://127.0.0.1:9092?envelope=json-event").unwrap();
        assert_eq!(o.envelope, Envelope::Mapped(Mapping::json_event().into()));
        let o = KafkaOptions::from_url(
            "kafka://127.0.0.1:9092?envelope=mapped&envelope_type=header:kind&envelope_id=field:uuid,broker",
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
            let err = KafkaOptions::from_url(&format!("kafka://127.0.0.1:9092?{bad}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}

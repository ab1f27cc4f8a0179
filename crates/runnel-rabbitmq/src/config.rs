//! Configuration: [`RabbitOptions`], read from an `amqp://` / `amqps://` URL.

use std::fmt;
use std::time::Duration;

use runnel_core::config::{format_duration, shared, ConfigError, UrlQuery};
use runnel_core::envelope::Envelope;
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::BusError;

/// Default `x-delivery-limit` of a group's quorum queue: how often the broker hands a
/// message out again after a consumer died holding it before it dead-letters it.
pub const DELIVERY_LIMIT_DEFAULT: u32 = 20;
/// Default retention of a topic's stream (what `StartPosition::Earliest` can see).
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default longest time a publish waits (reconnecting and resending) before it gives up
/// with `BusError::Unavailable`.
pub const PUBLISH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default first reconnect back-off step.
pub const RECONNECT_DELAY_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// Default longest reconnect back-off step.
pub const RECONNECT_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(5);
/// Largest `delivery_limit` accepted.
pub const DELIVERY_LIMIT_MAX: u32 = 10_000;
/// Largest payload accepted (the broker's own default frame ceiling is 128 MiB).
pub const MAX_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Smallest AMQP frame size (the protocol's minimum).
pub const FRAME_MAX_MIN: u32 = 4096;

/// The URL scheme named in configuration errors.
const SCHEME: &str = "amqp";

/// Parameters that were renamed when every backend took the one URL grammar: (old, new,
/// an example value in the new syntax).
const RENAMED: [(&str, &str, &str); 2] = [
    ("delivery_limit", "max_deliveries", "20"),
    ("connection_timeout", "connect_timeout", "10s"),
];

/// How the transport connects and shapes its broker objects.
///
/// Built from a URL with [`RabbitOptions::from_url`]:
///
/// ```text
/// amqp[s]://user:password@host:port/vhost?max_deliveries=20&retention=7d&group_expires=1h
/// ```
///
/// The user information and the TLS settings travel in the URL exactly as the AMQP URI
/// spec says (`amqps://` for TLS; the vhost percent-encoded, `%2f` for `/`). Durations
/// are written `250ms`, `30s`, `5m`, `2h`, `7d`. Query parameters Runnel reads itself:
///
/// | parameter | meaning | default |
/// |---|---|---|
/// | `max_deliveries` | quorum queue `x-delivery-limit`: deliveries lost with a consumer (crash, connection loss) before the broker dead-letters the message | 20 |
/// | `retention` | max age of the per-topic stream that `StartPosition::Earliest` replays (`30s`, `15m`, `2h`, `7d`), `off` for none | `7d` |
/// | `group_expires` | delete a group's queue after it had no consumer this long (`x-expires`; for tests) | never |
/// | `max_payload_bytes` | largest payload a publish accepts | 1 MiB |
/// | `publish_timeout` | how long a publish keeps reconnecting and resending | `30s` |
/// | `reconnect_max` | longest back-off step between reconnect attempts | `5s` |
///
/// The AMQP client's own settings are given in the same grammar and handed on in its
/// units: `heartbeat` (whole seconds, e.g. `10s`), `connect_timeout` (a duration),
/// `channel_max`, `frame_max`, `auth_mechanism`. Any other parameter is refused with the
/// list of valid ones (see `docs/configuration.md`). The password is never printed:
/// `Debug` and `Display` show the URL with it replaced by `***`.
///
/// ```
/// use runnel_rabbitmq::RabbitOptions;
/// let o = RabbitOptions::from_url("amqp://app:s3cret@127.0.0.1:5672/%2f?max_deliveries=5")?;
/// assert_eq!(o.delivery_limit, 5);
/// assert!(!format!("{o:?}").contains("s3cret"));
/// # Ok::<(), runnel_core::BusError>(())
/// ```
#[derive(Clone)]
pub struct RabbitOptions {
    /// The URL for the AMQP client (Runnel's own query parameters removed).
    pub(crate) client_url: String,
    /// `x-delivery-limit` of group queues (URL `max_deliveries`).
    pub delivery_limit: u32,
    /// Retention of the per-topic stream; `None`: no stream, `Earliest` sees nothing old.
    pub retention: Option<Duration>,
    /// `x-expires` of group queues.
    pub group_expires: Option<Duration>,
    /// Largest payload a publish accepts.
    pub max_payload_bytes: usize,
    /// How long a publish keeps trying through an outage.
    pub publish_timeout: Duration,
    /// First reconnect back-off step.
    pub reconnect_delay_min: Duration,
    /// Longest reconnect back-off step.
    pub reconnect_delay_max: Duration,
    /// How messages are shaped (`?envelope=`, CloudEvents by default); a subscription may
    /// override it in its `SubscribeOptions`.
    pub envelope: Envelope,
}

impl RabbitOptions {
    /// Reads `url` (see the type docs for the format).
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        let mut parsed = url::Url::parse(url).map_err(|e| {
            BusError::InvalidArgument(format!("invalid AMQP URL {}: {e}", redact(url)))
        })?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(BusError::InvalidArgument(format!(
                "the RabbitMQ URL must start with amqp:// or amqps://, got {}",
                redact(url)
            )));
        }
        let mut options = RabbitOptions {
            client_url: String::new(),
            delivery_limit: DELIVERY_LIMIT_DEFAULT,
            retention: Some(RETENTION_DEFAULT),
            group_expires: None,
            max_payload_bytes: MESSAGE_PAYLOAD_MAX_DEFAULT,
            publish_timeout: PUBLISH_TIMEOUT_DEFAULT,
            reconnect_delay_min: RECONNECT_DELAY_MIN_DEFAULT,
            reconnect_delay_max: RECONNECT_DELAY_MAX_DEFAULT,
            envelope: Envelope::CloudEvents,
        };
        let passed_on = options.read_query(parsed.query().unwrap_or(""))?;
        if passed_on.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.set_query(Some(&passed_on.join("&")));
        }
        options.client_url = parsed.to_string();
        // Validate what the AMQP client will parse now, so a bad URL fails here.
        options
            .client_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| {
                BusError::InvalidArgument(format!("invalid AMQP URL {}: {e}", redact(url)))
            })?;
        Ok(options)
    }

    /// Applies Runnel's query parameters and returns the AMQP client's, as
    /// `name=value` pairs in the client's own units.
    fn read_query(&mut self, query: &str) -> Result<Vec<String>, ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        for (old, new, example) in RENAMED {
            q.renamed(old, new, example)?;
        }
        if let Some(n) = q.integer(shared::MAX_DELIVERIES, 1..=DELIVERY_LIMIT_MAX)? {
            self.delivery_limit = n;
        }
        if let Some(retention) = q.duration_or_off(shared::RETENTION)? {
            self.retention = retention;
        }
        if let Some(d) = q.duration_in("group_expires", Duration::from_secs(1)..=Duration::MAX)? {
            self.group_expires = Some(d);
        }
        if let Some(n) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=MAX_PAYLOAD_BYTES_MAX)? {
            self.max_payload_bytes = n;
        }
        if let Some(d) = q.duration(shared::PUBLISH_TIMEOUT)? {
            self.publish_timeout = d;
        }
        if let Some(d) = q.duration_in("reconnect_max", self.reconnect_delay_min..=Duration::MAX)? {
            self.reconnect_delay_max = d;
        }
        // The client's own settings, given in the one grammar and handed on in its units.
        let mut client = Vec::new();
        let heartbeat_max = Duration::from_secs(u64::from(u16::MAX));
        if let Some(d) = q.duration_in("heartbeat", Duration::ZERO..=heartbeat_max)? {
            if d.subsec_nanos() != 0 {
                return Err(ConfigError::invalid_value(
                    SCHEME,
                    "heartbeat",
                    format_duration(d),
                    "whole seconds (AMQP negotiates the heartbeat in seconds)",
                ));
            }
            client.push(format!("heartbeat={}", d.as_secs()));
        }
        if let Some(d) = q.duration_in(
            shared::CONNECT_TIMEOUT,
            Duration::from_millis(1)..=Duration::MAX,
        )? {
            client.push(format!("connection_timeout={}", d.as_millis()));
        }
        if let Some(n) = q.integer("channel_max", 1..=u16::MAX)? {
            client.push(format!("channel_max={n}"));
        }
        if let Some(n) = q.integer("frame_max", FRAME_MAX_MIN..=u32::MAX)? {
            client.push(format!("frame_max={n}"));
        }
        client.extend(q.pass_through("auth_mechanism"));
        self.envelope = Envelope::from_query(&mut q)?;
        q.finish()?;
        Ok(client)
    }

    /// The client URL with the password replaced by `***` (safe to log).
    pub fn redacted_url(&self) -> String {
        redact(&self.client_url)
    }
}

impl fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("url", &self.redacted_url())
            .field("delivery_limit", &self.delivery_limit)
            .field("retention", &self.retention)
            .field("group_expires", &self.group_expires)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("publish_timeout", &self.publish_timeout)
            .field("reconnect_delay_max", &self.reconnect_delay_max)
            .finish()
    }
}

impl fmt::Display for RabbitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnel_parameters_are_read_and_removed() {
        let o = RabbitOptions::from_url(
            "amqp://u:pw@h:5672/%2f?max_deliveries=3&retention=off&heartbeat=10s&group_expires=10m\
             &connect_timeout=5s&publish_timeout=1m&reconnect_max=2s&channel_max=64",
        )
        .unwrap();
        assert_eq!(o.delivery_limit, 3);
        assert_eq!(o.retention, None);
        assert_eq!(o.group_expires, Some(Duration::from_secs(600)));
        assert_eq!(o.publish_timeout, Duration::from_secs(60));
        assert_eq!(o.reconnect_delay_max, Duration::from_secs(2));
        assert!(o.client_url.contains("heartbeat=10&"), "{}", o.client_url);
        assert!(o.client_url.contains("connection_timeout=5000"));
        assert!(o.client_url.contains("channel_max=64"));
        assert!(!o.client_url.contains("max_deliveries"));
        let o = RabbitOptions::from_url("amqp://h/?retention=2h").unwrap();
        assert_eq!(o.retention, Some(Duration::from_secs(7_200)));
        assert!(!o.client_url.contains('?'), "{}", o.client_url);
    }

    #[test]
    fn passwords_never_show() {
        let o = RabbitOptions::from_url("amqps://user:topsecret@h/vh").unwrap();
        assert!(!format!("{o:?}").contains("topsecret"));
        assert!(!o.to_string().contains("topsecret"));
        let e = RabbitOptions::from_url("http://user:topsecret@h/").unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }

    #[test]
    fn bad_values_are_invalid_arguments() {
        for url in [
            "amqp://h/?max_deliveries=0",
            "amqp://h/?retention=soon",
            "amqp://h/?retention=7",
            "amqp://h/?heartbeat=10",
            "amqp://h/?heartbeat=1500ms",
            "amqp://h/?max_payload_bytes=0",
            "amqp://h/?unknown=1",
            "amqp://h/?retention=1d&retention=2d",
            "nats://h",
        ] {
            assert!(
                matches!(
                    RabbitOptions::from_url(url),
                    Err(BusError::InvalidArgument(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn old_parameter_names_point_to_the_new_ones() {
        let err = RabbitOptions::from_url("amqp://h/?delivery_limit=3").unwrap_err();
        assert!(
            err.to_string()
                .contains("delivery_limit was renamed max_deliveries"),
            "{err}"
        );
        let err = RabbitOptions::from_url("amqp://h/?connection_timeout=3000").unwrap_err();
        assert!(err.to_string().contains("connect_timeout"), "{err}");
    }
    #[test]
    fn the_envelope_parameters_are_read_and_checked() {
        use runnel_core::envelope::{Envelope, Field, Mapping};
        let o = RabbitOptions::from_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(o.envelope, Envelope::CloudEvents);
        let o =
            RabbitOptions::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?envelope=json-event")
                .unwrap();
        assert_eq!(o.envelope, Envelope::Mapped(Mapping::json_event().into()));
        let o = RabbitOptions::from_url(
            "amqp://guest:guest@127.0.0.1:5672/%2f?envelope=mapped&envelope_type=header:kind&envelope_id=field:uuid,broker",
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
            let err =
                RabbitOptions::from_url(&format!("amqp://guest:guest@127.0.0.1:5672/%2f?{bad}"))
                    .unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}

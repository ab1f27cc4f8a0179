//! Configuration: [`RabbitOptions`], read from an `amqp://` / `amqps://` URL.

use std::fmt;
use std::time::Duration;

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

/// How the transport connects and shapes its broker objects.
///
/// Built from a URL with [`RabbitOptions::from_url`]:
///
/// ```text
/// amqp[s]://user:password@host:port/vhost?delivery_limit=20&retention=7d&group_expires=1h
/// ```
///
/// The user information and the TLS settings travel in the URL exactly as the AMQP URI
/// spec says (`amqps://` for TLS; the vhost percent-encoded, `%2f` for `/`). Query
/// parameters Runnel reads itself (and removes before handing the URL to the client):
///
/// | parameter | meaning | default |
/// |---|---|---|
/// | `delivery_limit` | quorum queue `x-delivery-limit`: deliveries lost with a consumer (crash, connection loss) before the broker dead-letters the message | 20 |
/// | `retention` | max age of the per-topic stream that `StartPosition::Earliest` replays (`30s`, `15m`, `2h`, `7d`), `off` for none | `7d` |
/// | `group_expires` | delete a group's queue after it had no consumer this long (`x-expires`; for tests) | never |
/// | `max_payload_bytes` | largest payload a publish accepts | 1 MiB |
/// | `publish_timeout` | how long a publish keeps reconnecting and resending | `30s` |
/// | `reconnect_max` | longest back-off step between reconnect attempts | `5s` |
///
/// Other query parameters (`heartbeat`, `connection_timeout`, `channel_max`, `frame_max`,
/// `auth_mechanism`) go to the AMQP client. The password is never printed: `Debug` and
/// `Display` show the URL with it replaced by `***`.
///
/// ```
/// use runnel_rabbitmq::RabbitOptions;
/// let o = RabbitOptions::from_url("amqp://app:s3cret@127.0.0.1:5672/%2f?delivery_limit=5")?;
/// assert_eq!(o.delivery_limit, 5);
/// assert!(!format!("{o:?}").contains("s3cret"));
/// # Ok::<(), runnel_core::BusError>(())
/// ```
#[derive(Clone)]
pub struct RabbitOptions {
    /// The URL for the AMQP client (Runnel's own query parameters removed).
    pub(crate) client_url: String,
    /// `x-delivery-limit` of group queues.
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
        };
        let mut passed_on: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            let bad = |what: &str| {
                BusError::InvalidArgument(format!("URL parameter {k}={v:?}: expected {what}"))
            };
            match k.as_ref() {
                "delivery_limit" => {
                    options.delivery_limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=DELIVERY_LIMIT_MAX).contains(n))
                        .ok_or_else(|| bad(&format!("1..={DELIVERY_LIMIT_MAX}")))?
                }
                "retention" => {
                    options.retention = if v == "off" {
                        None
                    } else {
                        Some(parse_duration(&v).ok_or_else(|| bad("a duration or off"))?)
                    }
                }
                "group_expires" => {
                    options.group_expires = Some(
                        parse_duration(&v)
                            .filter(|d| *d >= Duration::from_secs(1))
                            .ok_or_else(|| bad("a duration of at least 1s"))?,
                    )
                }
                "max_payload_bytes" => {
                    options.max_payload_bytes = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAYLOAD_BYTES_MAX).contains(n))
                        .ok_or_else(|| bad(&format!("1..={MAX_PAYLOAD_BYTES_MAX}")))?
                }
                "publish_timeout" => {
                    options.publish_timeout = parse_duration(&v).ok_or_else(|| bad("a duration"))?
                }
                "reconnect_max" => {
                    options.reconnect_delay_max = parse_duration(&v)
                        .filter(|d| *d >= options.reconnect_delay_min)
                        .ok_or_else(|| bad("a duration of at least 100ms"))?
                }
                _ => passed_on.push((k.into_owned(), v.into_owned())),
            }
        }
        if passed_on.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(passed_on);
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

/// `250ms`, `30s`, `15m`, `2h`, `7d` (a bare number is seconds).
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runnel_parameters_are_read_and_removed() {
        let o = RabbitOptions::from_url(
            "amqp://u:pw@h:5672/%2f?delivery_limit=3&retention=off&heartbeat=10&group_expires=10m",
        )
        .unwrap();
        assert_eq!(o.delivery_limit, 3);
        assert_eq!(o.retention, None);
        assert_eq!(o.group_expires, Some(Duration::from_secs(600)));
        assert!(o.client_url.contains("heartbeat=10"));
        assert!(!o.client_url.contains("delivery_limit"));
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
            "amqp://h/?delivery_limit=0",
            "amqp://h/?retention=soon",
            "amqp://h/?max_payload_bytes=0",
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
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("x"), None);
    }
}

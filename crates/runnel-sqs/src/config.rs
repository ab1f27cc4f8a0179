//! Configuration: [`SqsOptions`] and the `sqs://` URL it is read from.

use std::fmt;
use std::time::Duration;

use runnel_core::config::{format_duration, percent_decode, shared, ConfigError, UrlQuery};
use runnel_core::envelope::Envelope;
use runnel_core::BusError;

/// Region used when neither the URL nor `AWS_REGION` / `AWS_DEFAULT_REGION` names one.
pub const REGION_DEFAULT: &str = "us-east-1";
/// Prefix of every SNS topic and SQS queue Runnel creates.
pub const PREFIX_DEFAULT: &str = "runnel";
/// Longest name prefix (keeps room for the topic, group and hash in SQS's 80 characters).
pub const PREFIX_LEN_MAX: usize = 16;
/// Long-polling wait of `ReceiveMessage` (SQS allows 0..=20 s).
pub const WAIT_SECONDS_DEFAULT: u32 = 20;
/// SQS's longest long-polling wait.
pub const WAIT_SECONDS_MAX: u32 = 20;
/// Receives after which SQS moves a message to the group's dead-letter queue (the native
/// backstop; the consumer router's retry layer normally dead-letters far earlier).
pub const MAX_RECEIVE_COUNT_DEFAULT: u32 = 25;
/// SQS's largest `maxReceiveCount`.
pub const MAX_RECEIVE_COUNT_MAX: u32 = 1000;
/// Days an SNS FIFO topic archives messages for replay to groups that start at
/// [`runnel_core::bus::StartPosition::Earliest`] (0 disables the archive).
pub const ARCHIVE_DAYS_DEFAULT: u32 = 7;
/// SNS's longest archive retention.
pub const ARCHIVE_DAYS_MAX: u32 = 365;
/// SNS and SQS accept at most 256 KiB per message, attributes included.
pub const WIRE_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Default payload limit: the largest payload whose structured-mode encoding (base64 for
/// binary data, plus the CloudEvents envelope) still fits [`WIRE_MESSAGE_BYTES_MAX`].
pub const MAX_PAYLOAD_BYTES_DEFAULT: usize = 180 * 1024;
/// How long a TCP connect to the endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one non-polling API call may take before it is retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Parallel `PublishBatch` streams a publish call of more than 10 messages is split into
/// (by message group, so per-key order holds). 1 (sequential batches) by default: on moto
/// parallel streams only deepen the queues and slow consumers; raise it for high-volume
/// publishers on AWS after measuring there.
pub const PUBLISH_SHARDS_DEFAULT: usize = 1;
/// Most parallel publish streams.
pub const PUBLISH_SHARDS_MAX: usize = 32;
/// Attempts (first call included) the SDK makes for one API call.
pub const SDK_ATTEMPTS_DEFAULT: u32 = 3;
/// Most SDK attempts per API call.
pub const SDK_ATTEMPTS_MAX: u32 = 10;
/// Seconds in a day (the unit of the SNS archive).
const DAY_SECS: u64 = 86_400;

/// The URL scheme named in configuration errors.
const SCHEME: &str = "sqs";

/// Parameters that were renamed when every backend took the one URL grammar: (old, new,
/// an example value in the new syntax).
const RENAMED: [(&str, &str, &str); 3] = [
    ("wait_seconds", "wait", "20s"),
    ("max_receive_count", "max_deliveries", "25"),
    ("archive_days", "retention", "7d"),
];

/// Static AWS credentials. `Debug` shows the access key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach SNS and SQS and how to name and configure what Runnel creates there.
///
/// ```
/// use runnel_sqs::SqsOptions;
/// let o = SqsOptions::from_url(
///     "sqs://AKIDEXAMPLE:wJalrXUtnFEMI@eu-west-1?endpoint=http://127.0.0.1:4566&prefix=shop&max_deliveries=10&retention=3d",
/// )?;
/// assert_eq!(o.region, "eu-west-1");
/// assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
/// assert_eq!(o.prefix, "shop");
/// assert_eq!(o.max_receive_count, 10);
/// assert_eq!(o.archive_days, 3);
/// assert!(!format!("{o:?}").contains("wJalrXUtnFEMI"));
/// # Ok::<(), runnel_core::BusError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqsOptions {
    /// AWS region.
    pub region: String,
    /// Endpoint override for both services (LocalStack, moto, a VPC endpoint). `None`: the
    /// region's public endpoints (HTTPS).
    pub endpoint: Option<String>,
    /// Explicit credentials; `None` reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_SESSION_TOKEN` from the environment.
    pub credentials: Option<StaticCredentials>,
    /// Prefix of every topic and queue name.
    pub prefix: String,
    /// Long-polling wait per `ReceiveMessage`, seconds (0..=20; URL `wait=20s`). A long
    /// poll runs only while the application waits on its stream. SQS cannot be told to
    /// end one early: a process that exits while its consumer waits leaves the poll open
    /// for the rest of this wait, and a message arriving meanwhile is taken for nobody
    /// (back after the visibility timeout, one attempt spent). Short-lived consumers
    /// that come and go while messages flow use a shorter wait.
    pub wait_seconds: u32,
    /// `maxReceiveCount` of each group queue's redrive policy (URL `max_deliveries`).
    pub max_receive_count: u32,
    /// SNS archive retention in days for new topics (0: no archive; `Earliest` then fails;
    /// URL `retention=7d` or `retention=off`).
    pub archive_days: u32,
    /// Largest payload accepted by `publish`.
    pub max_payload_bytes: usize,
    /// Attempts the SDK makes per API call (transient errors and throttling are retried).
    pub sdk_attempts: u32,
    /// Parallel `PublishBatch` streams per publish call (1: strictly sequential batches).
    pub publish_shards: usize,
    /// How messages are shaped (`?envelope=`, CloudEvents by default); a subscription may
    /// override it in its `SubscribeOptions`.
    pub envelope: Envelope,
}

impl Default for SqsOptions {
    fn default() -> Self {
        SqsOptions {
            region: std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| REGION_DEFAULT.to_string()),
            endpoint: None,
            credentials: None,
            prefix: PREFIX_DEFAULT.to_string(),
            wait_seconds: WAIT_SECONDS_DEFAULT,
            max_receive_count: MAX_RECEIVE_COUNT_DEFAULT,
            archive_days: ARCHIVE_DAYS_DEFAULT,
            max_payload_bytes: MAX_PAYLOAD_BYTES_DEFAULT,
            sdk_attempts: SDK_ATTEMPTS_DEFAULT,
            publish_shards: PUBLISH_SHARDS_DEFAULT,
            envelope: Envelope::CloudEvents,
        }
    }
}

fn invalid(what: impl Into<String>) -> BusError {
    BusError::InvalidArgument(what.into())
}

impl SqsOptions {
    /// Reads `sqs://[ACCESS_KEY_ID:SECRET_ACCESS_KEY@][REGION][?PARAMS]`.
    ///
    /// Parameters: `endpoint` (URL of a local or private endpoint), `session_token`,
    /// `prefix`, `wait` (long-polling wait, `0s`..=`20s`), `max_deliveries` (receives
    /// before the native dead-letter queue), `retention` (SNS archive, whole days or
    /// `off`), `max_payload_bytes`, `sdk_attempts`, `publish_shards`. Credentials in the
    /// user-info part are percent-decoded. Unknown parameters are an error listing the
    /// valid ones (a typo must not silently change behaviour); see
    /// `docs/configuration.md`.
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        // The URL itself may carry a secret: never echo it in an error.
        let parsed =
            url::Url::parse(url).map_err(|e| invalid(format!("not a valid sqs:// URL ({e})")))?;
        if parsed.scheme() != "sqs" {
            return Err(invalid(format!(
                "the URL scheme is {:?}, expected \"sqs\"",
                parsed.scheme()
            )));
        }
        let mut o = SqsOptions::default();
        if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
            o.region = host.to_string();
        }
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| invalid("sqs URL: credentials are not valid UTF-8"))
        };
        if !parsed.username().is_empty() {
            let secret = parsed
                .password()
                .ok_or_else(|| invalid("sqs URL: an access key id needs a secret access key"))?;
            o.credentials = Some(StaticCredentials {
                access_key_id: decode(parsed.username())?,
                secret_access_key: decode(secret)?,
                session_token: None,
            });
        }
        o.read_query(parsed.query().unwrap_or(""))?;
        o.validate()?;
        Ok(o)
    }

    /// Applies the query parameters of an `sqs://` URL.
    fn read_query(&mut self, query: &str) -> Result<(), ConfigError> {
        let mut q = UrlQuery::parse(SCHEME, query)?;
        for (old, new, example) in RENAMED {
            q.renamed(old, new, example)?;
        }
        if let Some(v) = q.string("endpoint") {
            self.endpoint = Some(v);
        }
        if let Some(token) = q.string("session_token") {
            match self.credentials.as_mut() {
                Some(c) => c.session_token = Some(token),
                None => {
                    return Err(ConfigError::invalid_url(
                        SCHEME,
                        "session_token needs an access key id and secret in the user info",
                    ))
                }
            }
        }
        if let Some(v) = q.string("prefix") {
            self.prefix = v;
        }
        let wait_max = Duration::from_secs(u64::from(WAIT_SECONDS_MAX));
        if let Some(d) = q.duration_in("wait", Duration::ZERO..=wait_max)? {
            self.wait_seconds = whole_units(d, 1, "wait", "whole seconds (SQS polls in seconds)")?;
        }
        if let Some(n) = q.integer(shared::MAX_DELIVERIES, 1..=MAX_RECEIVE_COUNT_MAX)? {
            self.max_receive_count = n;
        }
        let retention_max = Duration::from_secs(u64::from(ARCHIVE_DAYS_MAX) * DAY_SECS);
        match q.duration_or_off(shared::RETENTION)? {
            None => {}
            Some(None) => self.archive_days = 0,
            Some(Some(d)) if d <= retention_max => {
                self.archive_days = whole_units(
                    d,
                    DAY_SECS,
                    shared::RETENTION,
                    "whole days (SNS archives by the day), e.g. 7d, or off",
                )?
            }
            Some(Some(d)) => {
                return Err(ConfigError::invalid_value(
                    SCHEME,
                    shared::RETENTION,
                    format_duration(d),
                    format!("0d..={ARCHIVE_DAYS_MAX}d, or off"),
                ))
            }
        }
        if let Some(n) = q.integer(shared::MAX_PAYLOAD_BYTES, 1..=MAX_PAYLOAD_BYTES_DEFAULT)? {
            self.max_payload_bytes = n;
        }
        if let Some(n) = q.integer("sdk_attempts", 1..=SDK_ATTEMPTS_MAX)? {
            self.sdk_attempts = n;
        }
        if let Some(n) = q.integer("publish_shards", 1..=PUBLISH_SHARDS_MAX)? {
            self.publish_shards = n;
        }
        self.envelope = Envelope::from_query(&mut q)?;
        q.finish()
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), BusError> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 64
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !region_ok {
            return Err(invalid(format!("invalid AWS region {:?}", self.region)));
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= PREFIX_LEN_MAX
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !prefix_ok {
            return Err(invalid(format!(
                "the name prefix must be 1..={PREFIX_LEN_MAX} of [A-Za-z0-9_-], got {:?}",
                self.prefix
            )));
        }
        if let Some(e) = &self.endpoint {
            let u = url::Url::parse(e)
                .map_err(|err| invalid(format!("the endpoint is not a URL: {err}")))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(invalid("the endpoint must be an http:// or https:// URL"));
            }
        }
        if self.wait_seconds > WAIT_SECONDS_MAX {
            return Err(invalid(format!("wait must be 0s..={WAIT_SECONDS_MAX}s")));
        }
        if self.max_receive_count == 0 || self.max_receive_count > MAX_RECEIVE_COUNT_MAX {
            return Err(invalid(format!(
                "max_deliveries must be 1..={MAX_RECEIVE_COUNT_MAX}"
            )));
        }
        if self.archive_days > ARCHIVE_DAYS_MAX {
            return Err(invalid(format!(
                "retention must be 0d..={ARCHIVE_DAYS_MAX}d"
            )));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > MAX_PAYLOAD_BYTES_DEFAULT {
            return Err(invalid(format!(
                "max_payload_bytes must be 1..={MAX_PAYLOAD_BYTES_DEFAULT} (SNS/SQS take 256 KiB \
                 per message including the envelope; larger payloads need the claim-check option)"
            )));
        }
        if self.publish_shards == 0 || self.publish_shards > PUBLISH_SHARDS_MAX {
            return Err(invalid(format!(
                "publish_shards must be 1..={PUBLISH_SHARDS_MAX}"
            )));
        }
        if self.sdk_attempts == 0 || self.sdk_attempts > SDK_ATTEMPTS_MAX {
            return Err(invalid(format!(
                "sdk_attempts must be 1..={SDK_ATTEMPTS_MAX}"
            )));
        }
        Ok(())
    }
}

/// `d` as a whole number of `unit_secs`-long units, or an error saying `expected`.
fn whole_units(
    d: Duration,
    unit_secs: u64,
    name: &'static str,
    expected: &str,
) -> Result<u32, ConfigError> {
    let units = d.as_secs() / unit_secs;
    let exact = d.subsec_nanos() == 0 && d.as_secs() % unit_secs == 0;
    match u32::try_from(units) {
        Ok(n) if exact => Ok(n),
        _ => Err(ConfigError::invalid_value(
            SCHEME,
            name,
            format_duration(d),
            expected,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_carries_every_knob_and_hides_secrets() {
        let o = SqsOptions::from_url(
            "sqs://AK%2B1:s%40cret@eu-central-1?endpoint=http://127.0.0.1:4566&prefix=p1&wait=5s&max_deliveries=7&retention=off&max_payload_bytes=1000&session_token=sesstok123",
        )
        .expect("valid URL");
        let c = o.credentials.clone().expect("credentials");
        assert_eq!(c.access_key_id, "AK+1");
        assert_eq!(c.secret_access_key, "s@cret");
        assert_eq!(c.session_token.as_deref(), Some("sesstok123"));
        assert_eq!(
            (o.wait_seconds, o.max_receive_count, o.archive_days),
            (5, 7, 0)
        );
        assert_eq!(o.max_payload_bytes, 1000);
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s@cret") && !shown.contains("sesstok123"),
            "{shown}"
        );
        let o = SqsOptions::from_url("sqs://us-east-1?retention=30d&wait=0s").expect("valid");
        assert_eq!((o.archive_days, o.wait_seconds), (30, 0));
    }

    #[test]
    fn bad_urls_are_rejected_without_echoing_secrets() {
        for bad in [
            "nats://x",
            "sqs://us-east-1?nope=1",
            "sqs://us-east-1?wait=21s",
            "sqs://us-east-1?wait=1500ms",
            "sqs://us-east-1?wait=5",
            "sqs://us-east-1?retention=36h",
            "sqs://us-east-1?retention=366d",
            "sqs://us-east-1?prefix=bad.prefix",
            "sqs://us-east-1?endpoint=ftp://x",
            "sqs://us-east-1?max_payload_bytes=999999999",
        ] {
            assert!(SqsOptions::from_url(bad).is_err(), "{bad}");
        }
        let err = SqsOptions::from_url("sqs://key:topsecret@us-east-1?bogus=1").unwrap_err();
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn old_parameter_names_point_to_the_new_ones() {
        for (old, new) in [
            ("wait_seconds=0", "wait_seconds was renamed wait"),
            (
                "max_receive_count=3",
                "max_receive_count was renamed max_deliveries",
            ),
            ("archive_days=1", "archive_days was renamed retention"),
        ] {
            let err = SqsOptions::from_url(&format!("sqs://us-east-1?{old}")).unwrap_err();
            assert!(err.to_string().contains(new), "{old}: {err}");
        }
    }
    #[test]
    fn the_envelope_parameters_are_read_and_checked() {
        use runnel_core::envelope::{Envelope, Field, Mapping};
        let o = SqsOptions::from_url("sqs://test:test@us-east-1").unwrap();
        assert_eq!(o.envelope, Envelope::CloudEvents);
        let o = SqsOptions::from_url("sqs://test:test@us-east-1?envelope=json-event").unwrap();
        assert_eq!(o.envelope, Envelope::Mapped(Mapping::json_event().into()));
        let o = SqsOptions::from_url(
            "sqs://test:test@us-east-1?envelope=mapped&envelope_type=header:kind&envelope_id=field:uuid,broker",
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
                SqsOptions::from_url(&format!("sqs://test:test@us-east-1?{bad}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}

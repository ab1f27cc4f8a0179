//! [`SqsBus`]: the clients, the topic/queue provisioning and the [`Publisher`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use runnel_core::bus::{
    validate_publish, DeliveryStream, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use runnel_core::{BusError, GroupName, Message, TopicName};

use crate::codec::{self, WireMessage};
use crate::config::{SqsOptions, CALL_TIMEOUT, CONNECT_TIMEOUT};
use crate::error::{code_of, map_sdk};
use crate::names;

/// SNS `PublishBatch` and SQS batch calls take at most 10 entries.
pub const AWS_BATCH_MAX: usize = 10;
/// Topic ARNs remembered per bus (cleared when full: creating a topic again is idempotent).
pub const TOPIC_CACHE_MAX: usize = 4096;
/// SQS's longest retention (14 days), used for group queues and their DLQs.
pub const QUEUE_RETENTION_SECONDS: u32 = 14 * 24 * 60 * 60;
/// SQS's longest visibility timeout.
pub const VISIBILITY_MAX_SECONDS: u64 = 12 * 60 * 60;

/// Why `StartPosition::Earliest` depends on SNS replay.
const NO_HISTORY: &str = "an SQS queue holds only what SNS delivered after the queue was \
                          subscribed, so a new group's earliest messages can only come from \
                          the topic's message archive";

pub(crate) struct Clients {
    pub(crate) sns: aws_sdk_sns::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
}

/// A Runnel bus on Amazon SNS (topics) and SQS (groups). One value is one independent
/// pair of clients (its own connection pool), like one process.
///
/// ```no_run
/// # async fn demo() -> Result<(), runnel_core::BusError> {
/// use runnel_core::bus::{Publisher, Subscriber, SubscribeOptions};
/// use runnel_core::{GroupName, Message, TopicName};
/// let bus = runnel_sqs::connect("sqs://test:test@us-east-1?endpoint=http://127.0.0.1:4566")?;
/// let topic = TopicName::new("orders")?;
/// let stream = bus.subscribe(&topic, &GroupName::new("billing")?, SubscribeOptions::default()).await?;
/// bus.publish(&topic, vec![Message::json("OrderPlaced", &serde_json::json!({"id": 1})).with_key("Order-1")]).await?;
/// # drop(stream); Ok(()) }
/// ```
pub struct SqsBus {
    pub(crate) options: SqsOptions,
    pub(crate) clients: Arc<Clients>,
    topics: Mutex<HashMap<TopicName, String>>,
}

impl std::fmt::Debug for SqsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options' Debug redacts the credentials.
        f.debug_struct("SqsBus")
            .field("options", &self.options)
            .finish()
    }
}

/// Connects to SNS/SQS as `url` says (see [`SqsOptions::from_url`]).
pub fn connect(url: &str) -> Result<Arc<SqsBus>, BusError> {
    Ok(Arc::new(SqsBus::new(SqsOptions::from_url(url)?)?))
}

fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl SqsBus {
    /// Builds the clients (no network call is made yet).
    pub fn new(options: SqsOptions) -> Result<Self, BusError> {
        options.validate()?;
        let creds = match &options.credentials {
            Some(c) => c.clone(),
            None => {
                let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                    (Some(a), Some(s)) => crate::config::StaticCredentials {
                        access_key_id: a,
                        secret_access_key: s,
                        session_token: get("AWS_SESSION_TOKEN"),
                    },
                    _ => {
                        return Err(BusError::AuthenticationFailed(
                            "no AWS credentials: put them in the sqs:// URL or set \
                             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                                .into(),
                        ))
                    }
                }
            }
        };
        let credentials = aws_sdk_sqs::config::Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            creds.session_token,
            None,
            "runnel-sqs",
        );
        let http = http_client();
        let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(CALL_TIMEOUT)
            .build();
        let retry = aws_sdk_sqs::config::retry::RetryConfig::standard()
            .with_max_attempts(options.sdk_attempts);
        let region = aws_sdk_sqs::config::Region::new(options.region.clone());

        let mut sqs = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(region.clone())
            .credentials_provider(credentials.clone())
            .http_client(http.clone())
            .timeout_config(timeouts.clone())
            .retry_config(retry.clone());
        let mut sns = aws_sdk_sns::Config::builder()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Some(endpoint) = &options.endpoint {
            sqs = sqs.endpoint_url(endpoint);
            sns = sns.endpoint_url(endpoint);
        }
        Ok(SqsBus {
            options,
            clients: Arc::new(Clients {
                sns: aws_sdk_sns::Client::from_conf(sns.build()),
                sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
            }),
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// The options this bus was built with.
    pub fn options(&self) -> &SqsOptions {
        &self.options
    }

    /// The SNS topic name `topic` maps to.
    pub fn sns_topic_name(&self, topic: &TopicName) -> String {
        names::topic_name(&self.options.prefix, topic)
    }

    /// The SQS queue name of `group` on `topic`.
    pub fn sqs_queue_name(&self, topic: &TopicName, group: &GroupName) -> String {
        names::queue_name(&self.options.prefix, topic, group)
    }

    /// The SQS dead-letter queue name of `group` on `topic`.
    pub fn sqs_dead_letter_queue_name(&self, topic: &TopicName, group: &GroupName) -> String {
        names::dead_letter_queue_name(&self.options.prefix, topic, group)
    }

    /// Creates the SNS FIFO topic if needed and returns its ARN.
    pub async fn ensure_topic(&self, topic: &TopicName) -> Result<String, BusError> {
        if let Some(arn) = self.topics.lock().map_err(poisoned)?.get(topic) {
            return Ok(arn.clone());
        }
        let mut req = self
            .clients
            .sns
            .create_topic()
            .name(self.sns_topic_name(topic))
            .attributes("FifoTopic", "true")
            .attributes("ContentBasedDeduplication", "false");
        if self.options.archive_days > 0 {
            // The topic's message archive: what `StartPosition::Earliest` replays.
            req = req.attributes(
                "ArchivePolicy",
                serde_json::json!({ "MessageRetentionPeriod": self.options.archive_days.to_string() })
                    .to_string(),
            );
        }
        let out = req
            .send()
            .await
            .map_err(|e| map_sdk("sns:CreateTopic", e))?;
        let arn = out
            .topic_arn()
            .ok_or_else(|| BusError::Backend("sns:CreateTopic returned no topic ARN".into()))?
            .to_string();
        let mut cache = self.topics.lock().map_err(poisoned)?;
        if cache.len() >= TOPIC_CACHE_MAX {
            cache.clear();
        }
        cache.insert(topic.clone(), arn.clone());
        Ok(arn)
    }

    async fn queue_url(&self, name: &str) -> Result<Option<String>, BusError> {
        match self
            .clients
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
        {
            Ok(out) => Ok(out.queue_url().map(str::to_string)),
            Err(e) => match code_of(&e).as_deref() {
                Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => Ok(None),
                _ => Err(map_sdk("sqs:GetQueueUrl", e)),
            },
        }
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: Vec<(QueueAttributeName, String)>,
    ) -> Result<String, BusError> {
        let mut req = self.clients.sqs.create_queue().queue_name(name);
        for (k, v) in attributes.iter().cloned() {
            req = req.attributes(k, v);
        }
        match req.send().await {
            Ok(out) => out
                .queue_url()
                .map(str::to_string)
                .ok_or_else(|| BusError::Backend("sqs:CreateQueue returned no URL".into())),
            Err(e)
                if code_of(&e)
                    .as_deref()
                    .is_some_and(|c| c.contains("QueueAlreadyExists")) =>
            {
                // It exists with other attributes (an older configuration): bring it up to date.
                let url = self.queue_url(name).await?.ok_or_else(|| {
                    BusError::Backend(format!("queue {name} exists and does not"))
                })?;
                let mut set = self.clients.sqs.set_queue_attributes().queue_url(&url);
                for (k, v) in attributes {
                    if k != QueueAttributeName::FifoQueue {
                        set = set.attributes(k, v);
                    }
                }
                set.send()
                    .await
                    .map_err(|e| map_sdk("sqs:SetQueueAttributes", e))?;
                Ok(url)
            }
            Err(e) => Err(map_sdk("sqs:CreateQueue", e)),
        }
    }

    async fn queue_arn(&self, url: &str) -> Result<String, BusError> {
        let out = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| map_sdk("sqs:GetQueueAttributes", e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| BusError::Backend("sqs:GetQueueAttributes returned no QueueArn".into()))
    }

    /// Provisions `group` on `topic` without consuming: the topic, the group's queue, its
    /// dead-letter queue and the subscription (what the first `subscribe` would create).
    /// Returns the queue URL, e.g. for a plain SQS client or infrastructure tooling.
    pub async fn provision_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        start: StartPosition,
    ) -> Result<String, BusError> {
        Ok(self.ensure_group(topic, group, start).await?.queue_url)
    }

    /// Creates (if needed) the group's queue, its dead-letter queue and the raw-delivery
    /// subscription to the topic; returns the queue URL.
    pub(crate) async fn ensure_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        start: StartPosition,
    ) -> Result<GroupQueues, BusError> {
        let queue_name = self.sqs_queue_name(topic, group);
        let dlq_name = self.sqs_dead_letter_queue_name(topic, group);
        let topic_arn = self.ensure_topic(topic).await?;
        let existing = self.queue_url(&queue_name).await?;
        if existing.is_none() && start == StartPosition::Earliest && self.options.archive_days == 0
        {
            return Err(BusError::EarliestUnavailable {
                reason: format!(
                    "{NO_HISTORY}, and the SNS topic archive that would replay it is off \
                     (retention=off)"
                ),
            });
        }
        let retention = QUEUE_RETENTION_SECONDS.to_string();
        let fifo = (QueueAttributeName::FifoQueue, "true".to_string());
        let dlq_url = self
            .create_queue(
                &dlq_name,
                vec![
                    fifo.clone(),
                    (
                        QueueAttributeName::MessageRetentionPeriod,
                        retention.clone(),
                    ),
                ],
            )
            .await?;
        let dlq_arn = self.queue_arn(&dlq_url).await?;
        let queue_url = match existing.clone() {
            Some(url) => url,
            None => {
                let queue_arn = match dlq_arn.rsplit_once(':') {
                    Some((account_part, _)) => format!("{account_part}:{queue_name}"),
                    None => {
                        return Err(BusError::Backend(format!("unexpected queue ARN {dlq_arn}")))
                    }
                };
                let redrive = serde_json::json!({
                    "deadLetterTargetArn": dlq_arn,
                    "maxReceiveCount": self.options.max_receive_count,
                });
                // Lets the topic (and only it) deliver into the queue.
                let policy = serde_json::json!({
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "runnel-topic-delivery",
                        "Effect": "Allow",
                        "Principal": {"Service": "sns.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": queue_arn,
                        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                    }],
                });
                self.create_queue(
                    &queue_name,
                    vec![
                        fifo,
                        (QueueAttributeName::MessageRetentionPeriod, retention),
                        (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                        (QueueAttributeName::Policy, policy.to_string()),
                    ],
                )
                .await?
            }
        };
        let queue_arn = self.queue_arn(&queue_url).await?;
        // Subscribing again with the same attributes is idempotent: it also completes a
        // group whose creator crashed between creating the queue and subscribing it.
        let sub = self
            .clients
            .sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| map_sdk("sns:Subscribe", e))?;
        if existing.is_none() && start == StartPosition::Earliest {
            let arn = sub.subscription_arn().unwrap_or_default();
            let since = runnel_core::chrono::Utc::now()
                - runnel_core::chrono::Duration::days(i64::from(self.options.archive_days));
            let replay = serde_json::json!({
                "PointType": "Timestamp",
                "StartingPoint": since.to_rfc3339_opts(runnel_core::chrono::SecondsFormat::Millis, true),
            });
            self.clients
                .sns
                .set_subscription_attributes()
                .subscription_arn(arn)
                .attribute_name("ReplayPolicy")
                .attribute_value(replay.to_string())
                .send()
                .await
                .map_err(|e| BusError::EarliestUnavailable {
                    reason: format!(
                        "{NO_HISTORY}, and this endpoint refused to replay the SNS FIFO topic's \
                         archive into it (a ReplayPolicy on the subscription: {})",
                        map_sdk("sns:SetSubscriptionAttributes", e)
                    ),
                })?;
        }
        Ok(GroupQueues { queue_url })
    }

    async fn publish_wire(&self, topic_arn: &str, wires: &[WireMessage]) -> Result<(), BusError> {
        use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
        // Sequential batches: SNS FIFO keeps the order of entries within a batch and of
        // batches acknowledged one after another.
        for chunk in wires.chunks(AWS_BATCH_MAX) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, w) in chunk.iter().enumerate() {
                let mut e = PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(w.body.clone())
                    .message_group_id(w.group_id.clone())
                    .message_deduplication_id(w.deduplication_id.clone());
                for (k, v) in &w.attributes {
                    let value = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v.clone())
                        .build()
                        .map_err(|e| BusError::Backend(e.to_string()))?;
                    e = e.message_attributes(k.clone(), value);
                }
                entries.push(e.build().map_err(|e| BusError::Backend(e.to_string()))?);
            }
            let out = self
                .clients
                .sns
                .publish_batch()
                .topic_arn(topic_arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await
                .map_err(|e| map_sdk("sns:PublishBatch", e))?;
            if let Some(f) = out.failed().first() {
                let text = format!(
                    "sns:PublishBatch: entry {} failed: {} {}",
                    f.id(),
                    f.code(),
                    f.message().unwrap_or_default()
                );
                return Err(if f.sender_fault() {
                    BusError::Backend(text)
                } else {
                    BusError::Unavailable(text)
                });
            }
        }
        Ok(())
    }
}

pub(crate) struct GroupQueues {
    pub(crate) queue_url: String,
}

/// The shard of a message group (FNV-1a: stable and cheap; only spread matters here).
fn shard_of(group_id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

fn poisoned<T>(_: T) -> BusError {
    BusError::Backend("the topic cache lock is poisoned".into())
}

#[async_trait]
impl Publisher for SqsBus {
    /// One `ListQueues` call (at most one result) to the SQS endpoint.
    async fn ping(&self) -> Result<(), BusError> {
        self.clients
            .sqs
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| BusError::Unavailable(format!("SQS did not answer: {e}")))
    }

    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        validate_publish(&messages, self.options.max_payload_bytes)?;
        // Encode everything first: a message that cannot go on the wire fails the whole
        // call before anything is sent.
        let wires = messages
            .iter()
            .map(|m| codec::encode(m, &self.options.envelope))
            .collect::<Result<Vec<_>, _>>()?;
        if wires.is_empty() {
            return Ok(());
        }
        let arn = self.ensure_topic(topic).await?;
        let shards_n = self.options.publish_shards;
        if wires.len() <= AWS_BATCH_MAX || shards_n == 1 {
            return self.publish_wire(&arn, &wires).await;
        }
        // Larger calls fan out over shards by message group: one key always lands in the
        // same shard, whose batches go out one after another, so per-key order holds while
        // different keys are published in parallel.
        let mut shards: Vec<Vec<WireMessage>> = vec![Vec::new(); shards_n];
        for w in wires {
            let shard = shard_of(&w.group_id, shards_n);
            shards[shard].push(w);
        }
        let results = futures_util::future::join_all(
            shards
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| self.publish_wire(&arn, s)),
        )
        .await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }
}

#[async_trait]
impl Subscriber for SqsBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        options.validate()?;
        let queues = self.ensure_group(topic, group, options.start).await?;
        let envelope = options
            .envelope
            .clone()
            .unwrap_or_else(|| self.options.envelope.clone());
        Ok(crate::subscriber::start(
            self.clients.clone(),
            self.options.wait_seconds,
            topic.clone(),
            group.clone(),
            queues.queue_url,
            options,
            envelope,
        ))
    }
}

/// Whole seconds for SQS, rounded up and clamped to SQS's visibility range.
pub(crate) fn visibility_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(VISIBILITY_MAX_SECONDS) as i32
}

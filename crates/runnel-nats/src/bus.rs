//! [`NatsBus`]: one NATS connection that publishes and subscribes.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use runnel_core::bus::{validate_publish, DeliveryStream, Publisher, SubscribeOptions, Subscriber};
use runnel_core::message::MESSAGE_PAYLOAD_MAX_DEFAULT;
use runnel_core::{BusError, GroupName, Message, TopicName};
use tokio::sync::OnceCell;

use crate::codec;
use crate::names;
use crate::options::{NatsOptions, Retention, Storage, HEADER_ALLOWANCE_BYTES};

/// Topics whose stream this client has already created or checked (a bound: past it the
/// set is cleared, and the next publish per topic checks again).
pub const ENSURED_STREAMS_MAX: usize = 10_000;
/// Timeout of one JetStream API request or publish acknowledgement.
pub const JS_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// First and longest pause between publish retries during an outage.
const PUBLISH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Longest pause between reconnect attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);
/// Messages a client may queue for the connection (the client's own bounded buffer).
const CLIENT_CAPACITY: usize = 16 * 1024;

pub(crate) fn unavailable(what: &str, e: impl fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

/// The NATS JetStream transport: a [`Publisher`] and a [`Subscriber`] on one connection.
/// Build it with [`crate::connect`] or [`NatsBus::connect`]; every subscription is a
/// member of its group's durable consumer (see the crate docs for the mapping).
#[derive(Clone)]
pub struct NatsBus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) options: NatsOptions,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) max_payload_bytes: usize,
    /// Counts (re)connections: a pull request made before the latest one is gone.
    pub(crate) connections: Arc<AtomicU64>,
    ensured: Mutex<HashSet<String>>,
    pub(crate) leases: OnceCell<jetstream::kv::Store>,
    dead_letter_stream: OnceCell<()>,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("options", &self.inner.options)
            .field("max_payload_bytes", &self.inner.max_payload_bytes)
            .finish()
    }
}

impl NatsBus {
    /// Connects with `options`. Fails with [`BusError::Unavailable`] when no server
    /// answers, [`BusError::AuthenticationFailed`] when it refuses the credentials.
    pub async fn connect(options: NatsOptions) -> Result<NatsBus, BusError> {
        options.validate()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let mut connect = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .client_capacity(CLIENT_CAPACITY)
            .reconnect_delay_callback(|attempts| {
                let ms = 25u64.saturating_mul(1u64 << attempts.min(10));
                Duration::from_millis(ms).min(RECONNECT_DELAY_MAX)
            })
            .event_callback(move |event| {
                let counter = counter.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost")
                        }
                        async_nats::Event::Connected => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            tracing::info!("NATS connected");
                        }
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            });
        if let Some(name) = &options.client_name {
            connect = connect.name(name);
        }
        if let (Some(u), Some(p)) = (&options.user, &options.password) {
            connect = connect.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &options.token {
            connect = connect.token(t.clone());
        }
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|e| {
                BusError::InvalidArgument(format!("NATS credentials file {}: {e}", path.display()))
            })?;
        }
        if options.tls {
            connect = connect.require_tls(true);
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        let client = connect
            .connect(options.server_urls())
            .await
            .map_err(|e| match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => {
                    BusError::AuthenticationFailed(format!("NATS at {options}: {e}"))
                }
                _ => unavailable(&format!("connecting to NATS at {options}"), e),
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(JS_REQUEST_TIMEOUT);
        let server_max = client.server_info().max_payload;
        let derived = server_max
            .saturating_sub(HEADER_ALLOWANCE_BYTES)
            .clamp(1, MESSAGE_PAYLOAD_MAX_DEFAULT);
        let max_payload_bytes = options.max_payload_bytes.unwrap_or(derived);
        Ok(NatsBus {
            inner: Arc::new(Inner {
                options,
                client,
                js,
                max_payload_bytes,
                connections,
                ensured: Mutex::new(HashSet::new()),
                leases: OnceCell::new(),
                dead_letter_stream: OnceCell::new(),
            }),
        })
    }

    /// The largest payload this bus accepts (from the options, or the server's
    /// `max_payload` less room for headers, at most 1 MiB).
    pub fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes
    }

    /// The options the bus was built with.
    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// The underlying NATS client (for tools and tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The stream name of `topic`.
    pub fn stream_name(&self, topic: &TopicName) -> String {
        names::stream_name(&self.inner.options.stream_prefix, topic)
    }

    /// The subject messages of `topic` are published on (with `partitions` > 1, the
    /// subject of partition 0; see [`NatsBus::partition_subject`]).
    pub fn subject(&self, topic: &TopicName) -> String {
        if self.inner.options.partitions > 1 {
            return self.partition_subject(topic, 0);
        }
        names::subject(&self.inner.options.subject_prefix, topic)
    }

    /// The subject of partition `p` of `topic` (when `partitions` > 1).
    pub fn partition_subject(&self, topic: &TopicName, p: u32) -> String {
        names::partition_subject(&self.inner.options.subject_prefix, topic, p)
    }

    /// The partition a message with this ordering key (else id) goes to.
    pub fn partition_of(&self, ordering_key: Option<&str>, message_id: &str) -> u32 {
        names::partition_of(ordering_key, message_id, self.inner.options.partitions)
    }

    /// Creates the stream of `topic`, or updates its limits to the configured ones.
    pub async fn ensure_stream(&self, topic: &TopicName) -> Result<(), BusError> {
        self.inner.ensure_stream(topic).await
    }
}

impl Inner {
    pub(crate) fn stream_config(&self, topic: &TopicName) -> stream::Config {
        let o = &self.options;
        stream::Config {
            name: names::stream_name(&o.stream_prefix, topic),
            subjects: vec![if o.partitions > 1 {
                names::partition_subjects(&o.subject_prefix, topic)
            } else {
                names::subject(&o.subject_prefix, topic)
            }],
            retention: match o.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
            },
            storage: match o.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: o.replicas,
            max_age: o.max_age.unwrap_or_default(),
            max_messages: o.max_msgs.unwrap_or(-1),
            max_bytes: o.max_bytes.unwrap_or(-1),
            duplicate_window: o.duplicate_window,
            description: Some(format!("Runnel topic {topic}")),
            ..Default::default()
        }
    }

    pub(crate) async fn ensure_stream(&self, topic: &TopicName) -> Result<(), BusError> {
        {
            let ensured = self.ensured.lock().unwrap_or_else(|p| p.into_inner());
            if ensured.contains(topic.as_str()) {
                return Ok(());
            }
        }
        let config = self.stream_config(topic);
        let name = config.name.clone();
        match self.js.get_stream(&name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| unavailable(&format!("stream {name} info"), e))?;
                let c = &info.config;
                let differs = c.max_age != config.max_age
                    || c.max_messages != config.max_messages
                    || c.max_bytes != config.max_bytes
                    || c.duplicate_window != config.duplicate_window
                    || c.subjects != config.subjects;
                if differs {
                    let mut updated = c.clone();
                    updated.max_age = config.max_age;
                    updated.max_messages = config.max_messages;
                    updated.max_bytes = config.max_bytes;
                    updated.duplicate_window = config.duplicate_window;
                    updated.subjects = config.subjects.clone();
                    self.js
                        .update_stream(&updated)
                        .await
                        .map_err(|e| BusError::Backend(format!("updating stream {name}: {e}")))?;
                    tracing::info!(stream = %name, "stream limits updated from configuration");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                // Not found (or another JetStream answer): create; a racing creator with
                // the same configuration makes this succeed too.
                if let Err(create_err) = self.js.create_stream(config.clone()).await {
                    if self.js.get_stream(&name).await.is_err() {
                        return Err(BusError::Backend(format!(
                            "creating stream {name}: {create_err} (lookup said: {e})"
                        )));
                    }
                }
            }
            Err(e) => return Err(unavailable(&format!("looking up stream {name}"), e)),
        }
        let mut ensured = self.ensured.lock().unwrap_or_else(|p| p.into_inner());
        if ensured.len() >= ENSURED_STREAMS_MAX {
            ensured.clear();
        }
        ensured.insert(topic.as_str().to_string());
        Ok(())
    }

    /// Forgets that a stream exists (after the server lost it, e.g. a memory store).
    pub(crate) fn forget_stream(&self, topic: &TopicName) {
        let mut ensured = self.ensured.lock().unwrap_or_else(|p| p.into_inner());
        ensured.remove(topic.as_str());
    }

    pub(crate) async fn ensure_dead_letter_stream(&self) -> Result<(), BusError> {
        self.dead_letter_stream
            .get_or_try_init(|| async {
                let o = &self.options;
                let config = stream::Config {
                    name: names::dead_letter_stream(&o.stream_prefix),
                    subjects: vec![names::dead_letter_subjects(&o.subject_prefix)],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    num_replicas: o.replicas,
                    duplicate_window: o.duplicate_window,
                    description: Some("Runnel native dead letters (poison backstop)".into()),
                    ..Default::default()
                };
                self.js
                    .get_or_create_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable("creating the dead-letter stream", e))
            })
            .await
            .map(|_| ())
    }

    /// Hands one message to the connection; its acknowledgement is awaited by
    /// [`Inner::settle`].
    async fn send(
        &self,
        message: &Message,
        wire: Option<(async_nats::HeaderMap, bytes::Bytes)>,
        subject: String,
    ) -> Result<Result<jetstream::context::PublishAckFuture, ()>, BusError> {
        let (headers, body) = match wire {
            Some(wire) => wire,
            None => codec::encode(message, &self.options.envelope)?,
        };
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(body);
        Ok(self.js.send_publish(subject, publish).await.map_err(|_| ()))
    }

    /// Waits for a sent message's acknowledgement; when it did not come, publishes the
    /// message again with the same id (deduplicated by the server) until it is
    /// acknowledged or the retry deadline passes. Returns the message's chain.
    async fn settle(
        &self,
        chain: usize,
        sent: Result<jetstream::context::PublishAckFuture, ()>,
        message: &Message,
        subject: String,
    ) -> (usize, Result<(), BusError>) {
        let acked = match sent {
            Ok(ack) => ack.await.is_ok(),
            Err(()) => false,
        };
        if acked {
            return (chain, Ok(()));
        }
        // Encoded again: the first attempt's headers went with it.
        let result = match codec::encode(message, &self.options.envelope) {
            Ok((headers, payload)) => self
                .publish_one(&subject, headers, payload, &message.id)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        (chain, result)
    }

    /// Publishes one message, retrying with the same id (deduplicated by the server)
    /// until it is acknowledged or the retry deadline passes.
    pub(crate) async fn publish_one(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
        id: &str,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let deadline = Instant::now() + self.options.publish_retry_deadline;
        let mut backoff = PUBLISH_BACKOFF_MIN;
        loop {
            let attempt = async {
                let ack = self
                    .js
                    .send_publish(
                        subject.to_string(),
                        jetstream::message::PublishMessage::build()
                            .headers(headers.clone())
                            .payload(payload.clone()),
                    )
                    .await?;
                ack.await
            };
            let err = match attempt.await {
                Ok(ack) => return Ok(ack),
                Err(e) => e,
            };
            let transient = matches!(
                err.kind(),
                PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::StreamNotFound
                    | PublishErrorKind::MaxAckPending
            );
            if !transient {
                return Err(BusError::Backend(format!(
                    "publishing message {id} on {subject}: {err}"
                )));
            }
            if Instant::now() + backoff > deadline {
                return Err(unavailable(
                    &format!("publishing message {id} on {subject}"),
                    err,
                ));
            }
            tracing::debug!(%id, %subject, error = %err, "publish failed; retrying with the same id");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(PUBLISH_BACKOFF_MAX);
        }
    }
}

#[async_trait]
impl Publisher for NatsBus {
    /// A PING/PONG round trip to the server (`flush`).
    async fn ping(&self) -> Result<(), BusError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(format!("NATS did not answer a ping: {e}")))
    }

    /// Publishes the batch. Messages of one ordering key are sent one after another, each
    /// after the previous one's publish acknowledgement (so a message lost in an outage is
    /// retried before the key's next one is sent: per-key order holds on the stream);
    /// different keys, and keyless messages, are pipelined, each key at its own pace.
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let inner = &self.inner;
        validate_publish(&messages, inner.max_payload_bytes)?;
        let mut encoded = Vec::with_capacity(messages.len());
        for m in &messages {
            codec::validate_for_nats(m)?;
            let (headers, body) = codec::encode(m, &inner.options.envelope)?;
            let header_bytes: usize = headers
                .iter()
                .flat_map(|(k, vs)| {
                    let k: &str = k.as_ref();
                    vs.iter().map(move |v| k.len() + v.as_str().len() + 4)
                })
                .sum();
            if header_bytes > HEADER_ALLOWANCE_BYTES {
                return Err(BusError::InvalidMessage {
                    id: m.id.clone(),
                    reason: format!(
                        "its headers take {header_bytes} bytes, over the {HEADER_ALLOWANCE_BYTES}-byte allowance"
                    ),
                });
            }
            encoded.push(Some((headers, body)));
        }
        if messages.is_empty() {
            return Ok(());
        }
        inner.ensure_stream(topic).await?;
        // One subject per topic, or each message's partition subject.
        let partitions = inner.options.partitions;
        let subject_of = |m: &Message| -> String {
            if partitions > 1 {
                let p = names::partition_of(m.ordering_key(), &m.id, partitions);
                names::partition_subject(&inner.options.subject_prefix, topic, p)
            } else {
                names::subject(&inner.options.subject_prefix, topic)
            }
        };

        // Chains: a key's messages form one chain, sent one after another, each as soon
        // as the previous one is acknowledged (a message whose publish failed is retried
        // with the same id before its key's next one is sent, so a key's messages are
        // stored in batch order even when one is lost in an outage). Every keyless message
        // is a chain of its own. Chains run concurrently: no key waits for another key's
        // acknowledgement, and the connection stays busy with one message of every key.
        let mut chains: Vec<std::collections::VecDeque<usize>> = Vec::new();
        let mut chain_of_key: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            let chain = match m.ordering_key() {
                Some(k) => *chain_of_key.entry(k).or_insert_with(|| {
                    chains.push(std::collections::VecDeque::new());
                    chains.len() - 1
                }),
                None => {
                    chains.push(std::collections::VecDeque::new());
                    chains.len() - 1
                }
            };
            chains[chain].push_back(i);
        }
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        for (chain, queue) in chains.iter_mut().enumerate() {
            let i = queue
                .pop_front()
                .expect("a chain holds at least one message");
            let sent = inner
                .send(&messages[i], encoded[i].take(), subject_of(&messages[i]))
                .await?;
            in_flight.push(inner.settle(chain, sent, &messages[i], subject_of(&messages[i])));
        }
        let mut result = Ok(());
        while let Some((chain, settled)) = in_flight.next().await {
            if let Err(e) = settled {
                result = Err(e);
                break;
            }
            if let Some(i) = chains[chain].pop_front() {
                let sent = inner
                    .send(&messages[i], encoded[i].take(), subject_of(&messages[i]))
                    .await?;
                in_flight.push(inner.settle(chain, sent, &messages[i], subject_of(&messages[i])));
            }
        }
        if let Err(BusError::Backend(_)) = &result {
            // The stream may have been deleted behind our back: look again next time.
            inner.forget_stream(topic);
        }
        result
    }
}

#[async_trait]
impl Subscriber for NatsBus {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        options.validate()?;
        crate::subscriber::subscribe(self.inner.clone(), topic.clone(), group.clone(), options)
            .await
    }
}

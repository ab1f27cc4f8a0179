//! The claim check: payloads over a threshold travel as a reference to a stored blob.
//!
//! [`ClaimCheckPublisher`] wraps any publisher: a message whose payload is over the
//! threshold has its payload stored in a [`BlobStore`] (the `blobs` table of the SQLite or
//! PostgreSQL store) under the message id, and is published with an empty payload and the
//! [`CLAIM_CHECK_HEADER`] naming the blob. [`ClaimCheckSubscriber`] wraps any subscriber
//! and puts the payload back before the consumer router (and its layers and handlers) see
//! the message — resolution is transparent to handlers.
//!
//! The blob is stored before the publish, so a consumer never gets a reference to a blob
//! that is not there yet; storing is idempotent by id, so a republished message reuses
//! its blob.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use runnel_core::bus::{
    Acknowledger, Delivery, DeliveryHandle, DeliveryStream, Publisher, SubscribeOptions, Subscriber,
};
use runnel_core::message::{BusError, GroupName, Message, TopicName};
use runnel_core::outbox::BlobStore;

/// The header naming the blob that holds the payload.
pub const CLAIM_CHECK_HEADER: &str = "runnelclaimcheck";
/// The header with the payload's size in bytes.
pub const CLAIM_CHECK_SIZE_HEADER: &str = "runnelclaimchecksize";
/// Default threshold: payloads over 256 KiB go to a blob (the seeds' guidance: never ship
/// megabytes through the broker).
pub const CLAIM_CHECK_THRESHOLD_DEFAULT: usize = 256 * 1024;
/// How long a delivery whose blob could not be read (store trouble) waits before it comes
/// back.
pub const BLOB_UNAVAILABLE_NACK_DELAY: Duration = Duration::from_secs(1);

/// A publisher that stores large payloads as blobs and publishes a reference.
///
/// ```no_run
/// # fn demo(bus: std::sync::Arc<dyn runnel::core::bus::Publisher>, store: runnel::sqlite::SqliteStore) {
/// use std::sync::Arc;
/// use runnel::outbox::ClaimCheckPublisher;
/// let publisher = ClaimCheckPublisher::new(bus, Arc::new(runnel::sqlite::SqliteBlobs::new(store)));
/// # }
/// ```
#[derive(Clone)]
pub struct ClaimCheckPublisher {
    inner: Arc<dyn Publisher>,
    blobs: Arc<dyn BlobStore>,
    threshold: usize,
}

impl std::fmt::Debug for ClaimCheckPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheckPublisher")
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl ClaimCheckPublisher {
    /// Wraps `inner`, with the default threshold.
    pub fn new(inner: Arc<dyn Publisher>, blobs: Arc<dyn BlobStore>) -> Self {
        ClaimCheckPublisher {
            inner,
            blobs,
            threshold: CLAIM_CHECK_THRESHOLD_DEFAULT,
        }
    }

    /// Payloads over `bytes` go to a blob.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }
}

#[async_trait]
impl Publisher for ClaimCheckPublisher {
    async fn publish(&self, topic: &TopicName, messages: Vec<Message>) -> Result<(), BusError> {
        let mut out = Vec::with_capacity(messages.len());
        for mut m in messages {
            if m.payload.len() > self.threshold && !m.headers.contains_key(CLAIM_CHECK_HEADER) {
                let payload = std::mem::take(&mut m.payload);
                let size = payload.len();
                self.blobs
                    .put_blob(&m.id, &m.content_type, payload)
                    .await
                    .map_err(BusError::from)?;
                m.headers.insert(CLAIM_CHECK_HEADER.into(), m.id.clone());
                m.headers
                    .insert(CLAIM_CHECK_SIZE_HEADER.into(), size.to_string());
            }
            out.push(m);
        }
        self.inner.publish(topic, out).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}

/// A subscriber that resolves claim checks: deliveries come out with their payload back
/// and the claim-check headers removed.
#[derive(Clone)]
pub struct ClaimCheckSubscriber {
    inner: Arc<dyn Subscriber>,
    blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for ClaimCheckSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClaimCheckSubscriber")
    }
}

impl ClaimCheckSubscriber {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Subscriber>, blobs: Arc<dyn BlobStore>) -> Self {
        ClaimCheckSubscriber { inner, blobs }
    }
}

/// Settles through the original delivery's handle.
struct HandleAck(tokio::sync::Mutex<Option<DeliveryHandle>>);

#[async_trait]
impl Acknowledger for HandleAck {
    async fn ack(&self) -> Result<(), BusError> {
        match self.0.lock().await.take() {
            Some(h) => h.ack().await,
            None => Err(BusError::DeliveryLost("already settled".into())),
        }
    }
    async fn nack(&self, delay: Option<Duration>) -> Result<(), BusError> {
        match self.0.lock().await.take() {
            Some(h) => h.nack(delay).await,
            None => Err(BusError::DeliveryLost("already settled".into())),
        }
    }
    async fn extend(&self, by: Duration) -> Result<(), BusError> {
        match self.0.lock().await.as_ref() {
            Some(h) => h.extend(by).await,
            None => Err(BusError::DeliveryLost("already settled".into())),
        }
    }
}

fn rebuild(message: Message, handle: DeliveryHandle) -> Delivery {
    let (topic, group, attempt): (TopicName, GroupName, u32) =
        (handle.topic.clone(), handle.group.clone(), handle.attempt);
    Delivery::new(
        message,
        topic,
        group,
        attempt,
        Box::new(HandleAck(tokio::sync::Mutex::new(Some(handle)))),
    )
}

#[async_trait]
impl Subscriber for ClaimCheckSubscriber {
    async fn subscribe(
        &self,
        topic: &TopicName,
        group: &GroupName,
        options: SubscribeOptions,
    ) -> Result<DeliveryStream, BusError> {
        let stream = self.inner.subscribe(topic, group, options).await?;
        let blobs = Arc::clone(&self.blobs);
        let resolved = stream
            .then(move |item| {
                let blobs = Arc::clone(&blobs);
                async move {
                    let delivery = match item {
                        Ok(d) => d,
                        Err(e) => return Some(Err(e)),
                    };
                    let Some(blob_id) = delivery.message.headers.get(CLAIM_CHECK_HEADER).cloned()
                    else {
                        return Some(Ok(delivery));
                    };
                    match blobs.get_blob(&blob_id).await {
                        Ok(Some(payload)) => {
                            let (mut message, handle) = delivery.into_parts();
                            message.payload = payload;
                            message.headers.remove(CLAIM_CHECK_HEADER);
                            message.headers.remove(CLAIM_CHECK_SIZE_HEADER);
                            Some(Ok(rebuild(message, handle)))
                        }
                        // Purged or never stored: handed on unresolved, so the handler's
                        // failure dead-letters it with its history instead of blocking.
                        Ok(None) => {
                            tracing::warn!(blob = %blob_id, "claim-check blob not found");
                            Some(Ok(delivery))
                        }
                        Err(e) => {
                            tracing::warn!(blob = %blob_id, error = %e, "cannot read a claim-check blob; the delivery comes back");
                            let _ = delivery.nack(Some(BLOB_UNAVAILABLE_NACK_DELAY)).await;
                            None
                        }
                    }
                }
            })
            .filter_map(std::future::ready);
        Ok(Box::pin(resolved))
    }
}

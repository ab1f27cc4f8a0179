//! [`EventStoreRelay`]: the event store as the outbox of event-sourced writes. It follows
//! `$all` from a stored checkpoint and publishes every event as a message — no second
//! table, no dual write: the append is the only write.
//!
//! Each event becomes [`Message::from_event`] (same id, so consumers deduplicate a
//! republish; key and subject = the stream), on the topic chosen by a
//! [`TopicRouting`] from the stream's category (aggregate type) and the event type. Events
//! are published in position order (so per stream in revision order); the checkpoint is
//! saved only after the publisher confirmed everything up to it. On a publisher error the
//! relay backs off with jitter and publishes the same events again — it never moves past
//! an event it could not publish. A crash between publish and checkpoint republishes
//! (at least once).

use std::sync::Arc;

use crate::join_once::JoinOnce;
use futures_util::{FutureExt, StreamExt};
use runnel_core::bus::Publisher;
use runnel_core::message::{Message, TopicName, SOURCE_DEFAULT};
use runnel_core::outbox::TopicRouting;
use runnel_core::{CheckpointStore, EventFilter, EventStore, Position, RecordedEvent};
use tokio::sync::watch;

use super::metrics::RelayMetrics;
use super::relay::{AfterPublishHook, RelayError, BACKOFF_DEFAULT};
use super::routing::plan;
use crate::retry::{FullJitter, Jitter, RetryPolicy};

/// Default checkpoint name.
pub const CHECKPOINT_DEFAULT: &str = "runnel-event-relay";
/// Default events per publish round.
pub const EVENT_BATCH_DEFAULT: usize = 500;

/// How an [`EventStoreRelay`] behaves.
#[derive(Clone)]
pub struct EventStoreRelayOptions {
    /// The checkpoint the relay resumes from (one per relay: two relays with one
    /// checkpoint would publish everything twice).
    pub checkpoint: String,
    pub routing: TopicRouting,
    /// Which events to publish (default: all).
    pub filter: EventFilter,
    /// CloudEvents `source` of the messages.
    pub source: String,
    /// Most events per round.
    pub batch_size: usize,
    pub backoff: RetryPolicy,
    pub jitter: Arc<dyn Jitter>,
    /// Fault hook between a confirmed publish and the checkpoint (crash tests).
    pub after_publish: Option<AfterPublishHook>,
}

impl Default for EventStoreRelayOptions {
    fn default() -> Self {
        EventStoreRelayOptions {
            checkpoint: CHECKPOINT_DEFAULT.to_string(),
            routing: TopicRouting::default(),
            filter: EventFilter::all(),
            source: SOURCE_DEFAULT.to_string(),
            batch_size: EVENT_BATCH_DEFAULT,
            backoff: BACKOFF_DEFAULT,
            jitter: Arc::new(FullJitter),
            after_publish: None,
        }
    }
}

impl std::fmt::Debug for EventStoreRelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreRelayOptions")
            .field("checkpoint", &self.checkpoint)
            .field("routing", &self.routing)
            .field("filter", &self.filter)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// Publishes the event store's `$all` through a publisher.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use runnel::outbox::{EventStoreRelay, EventStoreRelayOptions};
/// use runnel::sqlite::{bus::{BusOptions, SqliteBus}, SqliteStore};
///
/// let store = Arc::new(SqliteStore::open("app.db")?);
/// let bus = SqliteBus::new((*store).clone(), BusOptions::default())?;
/// let relay = EventStoreRelay::new(store.clone(), store, Arc::new(bus), EventStoreRelayOptions::default())?;
/// let handle = relay.start();
/// // ... appends are published as `{aggregate_type}.{event_type}` ...
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct EventStoreRelay {
    events: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    publisher: Arc<dyn Publisher>,
    options: EventStoreRelayOptions,
    metrics: RelayMetrics,
}

impl EventStoreRelay {
    /// A relay of `events`' `$all` to `publisher`, remembering its place in `checkpoints`.
    pub fn new(
        events: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        publisher: Arc<dyn Publisher>,
        options: EventStoreRelayOptions,
    ) -> Result<Self, RelayError> {
        runnel_core::store::validate_checkpoint_name(&options.checkpoint)?;
        crate::trace::install();
        options.filter.validate()?;
        if options.batch_size == 0 || options.batch_size > runnel_core::store::READ_LIMIT_MAX {
            return Err(RelayError::InvalidOptions(format!(
                "batch_size must be 1..={}",
                runnel_core::store::READ_LIMIT_MAX
            )));
        }
        let metrics = RelayMetrics::new(&options.checkpoint);
        Ok(EventStoreRelay {
            events,
            checkpoints,
            publisher,
            options,
            metrics,
        })
    }

    /// The message and topic for one event.
    fn message_for(&self, event: &RecordedEvent) -> Result<(TopicName, Message), String> {
        let topic = self
            .options
            .routing
            .topic(event.stream.category(), &event.event_type)
            .map_err(|e| format!("event {} at {}: {e}", event.id, event.position))?;
        Ok((topic, Message::from_event(event, &self.options.source)))
    }

    /// Publishes `batch` in order until every event is confirmed (or shutdown). Returns
    /// whether it got through.
    async fn publish_batch(
        &self,
        batch: &[RecordedEvent],
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut items = Vec::with_capacity(batch.len());
        for e in batch {
            match self.message_for(e) {
                Ok((topic, m)) => items.push((e.position, topic, m)),
                Err(reason) => {
                    // A category that is not a valid topic name: skipping would lose it,
                    // so it is logged loudly and routed to a fallback topic instead.
                    tracing::error!(%reason, "event cannot be routed; publishing to topic runnel.unroutable");
                    if let Ok(t) = TopicName::new("runnel.unroutable") {
                        items.push((e.position, t, Message::from_event(e, &self.options.source)));
                    }
                }
            }
        }
        // One producer span per event, a child of the append that stored it; the message
        // carries the span's context. Held until the batch is through (or given up).
        let _publish_spans: Vec<tracing::Span> = items
            .iter_mut()
            .map(|(_, topic, m)| crate::trace::publish_span(topic, m))
            .collect();
        let mut attempt: u32 = 0;
        // Events confirmed so far stay confirmed; a retry publishes only the rest, in order.
        let mut remaining = items;
        loop {
            // One lane (a stream's events may go to several topics): runs in order.
            let mut lane = plan(remaining.clone())
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            lane.sort_by_key(|c| c.items.first().map(|(p, _)| *p));
            let mut failed_at: Option<Position> = None;
            let mut error = None;
            // When lanes were split per topic, any order among topics is fine; we publish
            // them one after another in position order of their first event.
            for call in lane.drain(..) {
                let first = call.items.first().map(|(p, _)| *p);
                let n = call.items.len();
                let messages = call.items.into_iter().map(|(_, m)| m).collect();
                match self.publisher.publish(&call.topic, messages).await {
                    Ok(()) => self.metrics.events_published(n),
                    Err(e) => {
                        failed_at = first;
                        error = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = error else {
                return true;
            };
            // Keep what was not confirmed. With per-topic calls, a later call of another
            // topic may have gone through: republishing it is a harmless duplicate.
            if let Some(p) = failed_at {
                remaining.retain(|(pos, _, _)| *pos >= p);
            }
            attempt = attempt.saturating_add(1);
            self.metrics.error(if e.is_transient() {
                "publish_unavailable"
            } else {
                "publish_refused"
            });
            let delay = self
                .options
                .backoff
                .delay_for_attempt_with(attempt, &*self.options.jitter);
            tracing::warn!(error = %e, ?delay, "event relay publish failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return false,
            }
            if *stop.borrow() {
                return false;
            }
        }
    }

    /// Runs the relay as a task until shutdown.
    pub fn start(self) -> EventStoreRelayHandle {
        let (stop, stopped) = watch::channel(false);
        // The error travels as its message, so the outcome can be kept and read again.
        let task = tokio::spawn(async move { self.run(stopped).await.map_err(|e| e.to_string()) });
        EventStoreRelayHandle {
            stop,
            task: JoinOnce::new(task),
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<u64, RelayError> {
        let o = self.options.clone();
        let mut published: u64 = 0;
        let mut errors: u32 = 0;
        'outer: while !*stop.borrow() {
            let after = match self.checkpoints.load_checkpoint(&o.checkpoint).await {
                Ok(p) => p.unwrap_or(Position::START),
                Err(e) => {
                    errors = errors.saturating_add(1);
                    self.metrics.error("store");
                    tracing::warn!(error = %e, "event relay cannot load its checkpoint");
                    let delay = o.backoff.delay_for_attempt_with(errors, &*o.jitter);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stop.changed() => break,
                    }
                }
            };
            let mut events = Arc::clone(&self.events).subscribe_all(after, o.filter.clone());
            loop {
                let first = tokio::select! {
                    item = events.next() => item,
                    _ = stop.changed() => break 'outer,
                };
                let mut batch = Vec::with_capacity(o.batch_size);
                let mut failure = None;
                match first {
                    Some(Ok(e)) => batch.push(e),
                    Some(Err(e)) => failure = Some(e),
                    None => break,
                }
                // Whatever else is ready now joins the batch (bounded).
                while failure.is_none() && batch.len() < o.batch_size {
                    match events.next().now_or_never() {
                        Some(Some(Ok(e))) => batch.push(e),
                        Some(Some(Err(e))) => failure = Some(e),
                        _ => break,
                    }
                }
                if !batch.is_empty() {
                    if !self.publish_batch(&batch, &mut stop).await {
                        break 'outer;
                    }
                    let last = batch[batch.len() - 1].position;
                    if let Some(hook) = &o.after_publish {
                        let positions: Vec<u64> = batch.iter().map(|e| e.position.get()).collect();
                        hook(&positions);
                    }
                    if let Err(e) = self.checkpoints.save_checkpoint(&o.checkpoint, last).await {
                        // Published but not checkpointed: a restart republishes (at least
                        // once). Resubscribe from the stored checkpoint.
                        tracing::warn!(error = %e, "event relay cannot save its checkpoint");
                        self.metrics.error("store");
                        failure = Some(e);
                    } else {
                        published += batch.len() as u64;
                        errors = 0;
                    }
                }
                if let Some(e) = failure {
                    errors = errors.saturating_add(1);
                    tracing::warn!(error = %e, "event relay subscription failed; resubscribing");
                    let delay = o.backoff.delay_for_attempt_with(errors, &*o.jitter);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => break 'outer,
                    }
                    continue 'outer;
                }
            }
        }
        Ok(published)
    }
}

/// A running [`EventStoreRelay`].
#[derive(Debug)]
pub struct EventStoreRelayHandle {
    stop: watch::Sender<bool>,
    task: JoinOnce<Result<u64, String>>,
}

impl EventStoreRelayHandle {
    /// Graceful shutdown: a batch being published is given up (it was not checkpointed,
    /// so it is published again after a restart). Returns how many events were published.
    pub async fn shutdown(mut self) -> Result<u64, RelayError> {
        let _ = self.stop.send(true);
        self.stopped().await
    }

    /// Waits until the relay's task ends without being asked to (it panicked). Cancel-safe,
    /// for a supervisor that selects on it beside its own shutdown signal.
    pub async fn stopped(&mut self) -> Result<u64, RelayError> {
        match self.task.join().await {
            Ok(Ok(published)) => Ok(published),
            Ok(Err(reason)) | Err(reason) => Err(RelayError::TaskFailed(reason)),
        }
    }
}

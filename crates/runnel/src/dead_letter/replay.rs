//! Replaying dead letters: publish the stored message again — same id, same payload — and
//! mark the dead letter replayed.
//!
//! ## Where a replay goes
//!
//! * [`ReplayTarget::OriginalTopic`]: back to the topic it came from. Every group of the
//!   topic receives it again; groups that had handled it already see a message id they
//!   know, so idempotent consumers (the inbox layer) apply it once.
//! * [`ReplayTarget::Group`] / [`ReplayTarget::OwnGroup`]: to one consumer group only
//!   (a named one, or the group that dead-lettered each message). Two mechanisms, chosen
//!   per replayer:
//!   1. a transport that can deliver to one group natively (the embedded bus could write
//!      only that group's queue row; RabbitMQ and SQS can send to the group's queue)
//!      implements [`GroupTargetedPublisher`]; give it to
//!      [`Replayer::with_group_publisher`];
//!   2. otherwise the message is published to the topic with the header
//!      [`REPLAY_GROUP_HEADER`] naming the group, and the consumer router of every other
//!      group acknowledges it without handling it ([`replay_targets_other_group`]). This
//!      works on every transport, Kafka and NATS included, where a topic has no per-group
//!      queue. Consumers that are not Runnel routers do see the message; it keeps its id,
//!      so an idempotent consumer still applies it at most once.
//!
//!   The header is set in both cases, so a group-targeted replay is recognisable
//!   downstream. A replay to the whole topic removes a header left by an earlier one.
//!
//! ## Guarantees
//!
//! * A dead letter is marked replayed only after the bus durably accepted its message.
//!   If the process dies in between, running the replay again publishes it again — same
//!   id, so harmless to idempotent consumers.
//! * A bulk replay only touches dead letters that existed when it started: one that is
//!   dead-lettered again while the replay runs (the handler is still broken) is left for
//!   the next replay, so a replay always ends.
//! * A message the bus refuses for good (too large, invalid for this transport) is
//!   skipped — counted, its reason kept, never marked replayed — and the replay goes on.
//!   A transient failure (broker down) stops it with [`DeadLetterError::ReplayInterrupted`]
//!   carrying the counts so far.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use runnel_core::bus::Publisher;
use runnel_core::dead_letter::{DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStore};
use runnel_core::message::{HEADERS_MAX, PUBLISH_BATCH_MAX};
use runnel_core::{BusError, Clock, GroupName, Message, StoreError, SystemClock, TopicName};
use serde::Serialize;

use super::error::{DeadLetterError, ReplayFailure};
use super::inspect::{for_each_page, PAGE_SIZE_DEFAULT};

/// Header naming the only consumer group a replayed message is for. A CloudEvents
/// extension name (lower-case letters only), so it survives every transport's binding.
pub const REPLAY_GROUP_HEADER: &str = "runnelreplaygroup";
/// Header carrying the id of the dead letter a message was replayed from (tracing a
/// replayed message back to its history; added when the message has room for a header).
pub const REPLAY_OF_HEADER: &str = "runnelreplayof";
/// Default messages per publish call during a bulk replay.
pub const REPLAY_BATCH_DEFAULT: usize = 100;
/// Skipped dead letters whose reason a [`ReplayReport`] keeps (the count is always exact).
pub const SKIPPED_DETAILS_MAX: usize = 100;

/// Metric: messages replayed (counter, labelled `topic`).
pub const METRIC_REPLAYED: &str = "runnel_dead_letters_replayed_total";
/// Metric: dead letters a replay skipped (counter, labelled `topic`).
pub const METRIC_REPLAY_SKIPPED: &str = "runnel_dead_letters_replay_skipped_total";

/// Whether `message` is a group-targeted replay meant for a group other than `group`. The
/// consumer router acknowledges such a message without handling it.
///
/// ```
/// use runnel::dead_letter::{replay_targets_other_group, REPLAY_GROUP_HEADER};
/// use runnel::core::{GroupName, Message};
/// let billing = GroupName::new("billing").unwrap();
/// let shipping = GroupName::new("shipping").unwrap();
/// let m = Message::json("OrderPlaced", &serde_json::json!({})).with_header(REPLAY_GROUP_HEADER, "billing");
/// assert!(!replay_targets_other_group(&m, &billing));
/// assert!(replay_targets_other_group(&m, &shipping));
/// ```
pub fn replay_targets_other_group(message: &Message, group: &GroupName) -> bool {
    message
        .headers
        .get(REPLAY_GROUP_HEADER)
        .is_some_and(|target| target != group.as_str())
}

/// A transport that can deliver messages to one consumer group of a topic only.
///
/// ```
/// use runnel::async_trait;
/// use runnel::core::{BusError, GroupName, Message, TopicName};
/// use runnel::dead_letter::GroupTargetedPublisher;
///
/// struct Queues; // e.g. one queue per group, as on RabbitMQ or SQS
/// #[async_trait]
/// impl GroupTargetedPublisher for Queues {
///     async fn publish_to_group(
///         &self,
///         topic: &TopicName,
///         group: &GroupName,
///         messages: Vec<Message>,
///     ) -> Result<(), BusError> {
///         // send `messages` straight to the queue of `group` on `topic`
///         # let _ = (topic, group, messages);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait GroupTargetedPublisher: Send + Sync + 'static {
    /// Publishes `messages` (in order) so that only `group` of `topic` receives them.
    /// Returns once the bus durably accepted them, like [`Publisher::publish`].
    async fn publish_to_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        messages: Vec<Message>,
    ) -> Result<(), BusError>;
}

/// Which dead letters to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaySelection {
    /// This one, whether or not it was replayed before (it was asked for by id).
    One(DeadLetterId),
    /// Every match of the filter (pending ones only unless `include_replayed`).
    Matching(DeadLetterFilter),
}

impl ReplaySelection {
    /// Every pending dead letter.
    pub fn all() -> Self {
        ReplaySelection::Matching(DeadLetterFilter::pending())
    }
}

/// Where replayed messages go (see the [module docs](self)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReplayTarget {
    /// The topic each message came from: every group of it receives the message again.
    #[default]
    OriginalTopic,
    /// Only this group of the original topic.
    Group(GroupName),
    /// Only the group that dead-lettered each message.
    OwnGroup,
}

/// Progress of a replay, reported after each dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayProgress {
    /// Dead letters selected when the replay started.
    pub total: u64,
    pub replayed: u64,
    pub skipped: u64,
    /// The dead letter just settled.
    pub last: DeadLetterId,
}

impl ReplayProgress {
    /// Dead letters settled so far.
    pub fn done(&self) -> u64 {
        self.replayed + self.skipped
    }
}

/// A dead letter a replay did not publish, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedDeadLetter {
    pub id: DeadLetterId,
    pub reason: String,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Dead letters selected when the replay started.
    pub total: u64,
    /// Published again and marked replayed.
    pub replayed: u64,
    /// Not published: the bus refused the message for good (too large for this transport,
    /// invalid there). Such a dead letter stays pending.
    pub skipped: u64,
    /// Why, for the first [`SKIPPED_DETAILS_MAX`] skipped ones.
    pub skipped_details: Vec<SkippedDeadLetter>,
}

impl ReplayReport {
    fn skip(&mut self, id: DeadLetterId, reason: String) {
        self.skipped += 1;
        if self.skipped_details.len() < SKIPPED_DETAILS_MAX {
            self.skipped_details.push(SkippedDeadLetter { id, reason });
        }
    }
}

/// A progress callback (the CLI's progress bar).
pub type ProgressFn<'a> = dyn FnMut(&ReplayProgress) + Send + 'a;

/// Replays dead letters through a [`Publisher`] (see the [module docs](self)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runnel::dead_letter::DeadLetterError> {
/// use std::sync::Arc;
/// use runnel::dead_letter::{Replayer, ReplaySelection, ReplayTarget};
/// # struct Bus;
/// # #[runnel::async_trait]
/// # impl runnel::core::bus::Publisher for Bus {
/// #     async fn publish(&self, _: &runnel::core::TopicName, _: Vec<runnel::core::Message>)
/// #         -> Result<(), runnel::core::BusError> { Ok(()) }
/// # }
/// let store = Arc::new(runnel_testkit::dead_letters::InMemoryDeadLetters::new());
/// let replayer = Replayer::new(store, Arc::new(Bus));
/// let report = replayer
///     .replay(&ReplaySelection::all(), &ReplayTarget::OriginalTopic, &mut |p| {
///         println!("{}/{}", p.done(), p.total)
///     })
///     .await?;
/// println!("replayed {}, skipped {}", report.replayed, report.skipped);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Replayer {
    store: Arc<dyn DeadLetterStore>,
    publisher: Arc<dyn Publisher>,
    group_publisher: Option<Arc<dyn GroupTargetedPublisher>>,
    clock: Arc<dyn Clock>,
    batch_size: usize,
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("native_group_delivery", &self.group_publisher.is_some())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

/// Consecutive dead letters that go to the same place, published in one call.
struct Run {
    topic: TopicName,
    group: Option<GroupName>,
    items: Vec<(DeadLetterId, Message)>,
}

impl Replayer {
    /// Replays from `store` through `publisher`; group-targeted replays use the
    /// [`REPLAY_GROUP_HEADER`] until [`with_group_publisher`](Self::with_group_publisher).
    pub fn new(store: Arc<dyn DeadLetterStore>, publisher: Arc<dyn Publisher>) -> Self {
        Replayer {
            store,
            publisher,
            group_publisher: None,
            clock: Arc::new(SystemClock),
            batch_size: REPLAY_BATCH_DEFAULT,
        }
    }

    /// Delivers group-targeted replays natively through `publisher`.
    pub fn with_group_publisher(mut self, publisher: Arc<dyn GroupTargetedPublisher>) -> Self {
        self.group_publisher = Some(publisher);
        self
    }

    /// Stamps `last_replayed_at` from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Messages per publish call (1..=`PUBLISH_BATCH_MAX`).
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self, DeadLetterError> {
        if batch_size == 0 || batch_size > PUBLISH_BATCH_MAX {
            return Err(DeadLetterError::InvalidArgument(format!(
                "replay batch size {batch_size} is outside 1..={PUBLISH_BATCH_MAX}"
            )));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// How many dead letters `selection` picks right now (for a progress bar's length).
    pub async fn count(&self, selection: &ReplaySelection) -> Result<u64, DeadLetterError> {
        match selection {
            ReplaySelection::One(id) => Ok(u64::from(self.store.get(*id).await?.is_some())),
            ReplaySelection::Matching(filter) => Ok(self.store.count(filter).await?),
        }
    }

    /// Replays `selection` to `target`, calling `progress` after each dead letter.
    pub async fn replay(
        &self,
        selection: &ReplaySelection,
        target: &ReplayTarget,
        progress: &mut ProgressFn<'_>,
    ) -> Result<ReplayReport, DeadLetterError> {
        let mut report = ReplayReport::default();
        match selection {
            ReplaySelection::One(id) => {
                let letter = super::inspect::show(&*self.store, *id).await?;
                report.total = 1;
                self.replay_page(vec![letter], target, &mut report, progress)
                    .await?;
            }
            ReplaySelection::Matching(filter) => {
                // The last id that exists now: dead letters stored while the replay runs
                // (the handler may still be broken) get higher ids and are left for the
                // next replay, so a replay always ends.
                let mut high_water = None;
                let mut total = 0u64;
                for_each_page(&*self.store, filter, PAGE_SIZE_DEFAULT, |page| {
                    total += page.len() as u64;
                    high_water = page.last().map(|d| d.id).or(high_water);
                    true
                })
                .await?;
                report.total = total;
                let Some(high_water) = high_water else {
                    return Ok(report);
                };
                let mut after = None;
                loop {
                    let page = self.store.list(filter, after, self.batch_size).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    let done = page.len() < self.batch_size || last.id >= high_water;
                    let page: Vec<_> = page.into_iter().filter(|d| d.id <= high_water).collect();
                    self.replay_page(page, target, &mut report, progress)
                        .await?;
                    if done {
                        break;
                    }
                }
            }
        }
        tracing::info!(
            replayed = report.replayed,
            skipped = report.skipped,
            total = report.total,
            "dead-letter replay finished"
        );
        Ok(report)
    }

    async fn replay_page(
        &self,
        page: Vec<DeadLetter>,
        target: &ReplayTarget,
        report: &mut ReplayReport,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), DeadLetterError> {
        let mut runs: Vec<Run> = Vec::new();
        for letter in page {
            let group = match target {
                ReplayTarget::OriginalTopic => None,
                ReplayTarget::Group(g) => Some(g.clone()),
                ReplayTarget::OwnGroup => Some(letter.group.clone()),
            };
            let message = match replay_message(&letter, group.as_ref()) {
                Ok(m) => m,
                Err(reason) => {
                    self.skipped(report, &letter.topic, letter.id, reason, progress);
                    continue;
                }
            };
            match runs.last_mut() {
                Some(run) if run.topic == letter.topic && run.group == group => {
                    run.items.push((letter.id, message));
                }
                _ => runs.push(Run {
                    topic: letter.topic.clone(),
                    group,
                    items: vec![(letter.id, message)],
                }),
            }
        }
        for run in runs {
            self.publish_run(run, report, progress).await?;
        }
        Ok(())
    }

    /// Publishes one run; on a refusal that may concern a single message, retries its
    /// messages one by one so only the refused ones are skipped.
    async fn publish_run(
        &self,
        run: Run,
        report: &mut ReplayReport,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), DeadLetterError> {
        let messages: Vec<Message> = run.items.iter().map(|(_, m)| m.clone()).collect();
        match self.publish(&run.topic, run.group.as_ref(), messages).await {
            Ok(()) => {
                let ids: Vec<_> = run.items.iter().map(|(id, _)| *id).collect();
                self.mark(&run.topic, &ids, report, progress).await
            }
            Err(e) if is_refusal(&e) && run.items.len() > 1 => {
                for (id, message) in run.items {
                    let single = Run {
                        topic: run.topic.clone(),
                        group: run.group.clone(),
                        items: vec![(id, message)],
                    };
                    Box::pin(self.publish_run(single, report, progress)).await?;
                }
                Ok(())
            }
            Err(e) if is_refusal(&e) => {
                for (id, _) in run.items {
                    let reason = format!("the bus refused the message: {e}");
                    self.skipped(report, &run.topic, id, reason, progress);
                }
                Ok(())
            }
            Err(source) => Err(DeadLetterError::ReplayInterrupted {
                report: report.clone(),
                source: ReplayFailure::Bus(source),
            }),
        }
    }

    async fn publish(
        &self,
        topic: &TopicName,
        group: Option<&GroupName>,
        messages: Vec<Message>,
    ) -> Result<(), BusError> {
        match (group, &self.group_publisher) {
            (Some(group), Some(native)) => native.publish_to_group(topic, group, messages).await,
            _ => self.publisher.publish(topic, messages).await,
        }
    }

    /// Marks published dead letters replayed. The marks run concurrently so a store with
    /// group commit settles a whole batch in one transaction.
    async fn mark(
        &self,
        topic: &TopicName,
        ids: &[DeadLetterId],
        report: &mut ReplayReport,
        progress: &mut ProgressFn<'_>,
    ) -> Result<(), DeadLetterError> {
        let at = self.clock.now();
        let marks = ids.iter().map(|id| async move {
            match self.store.mark_replayed(*id, at).await {
                // Purged while we published: the message did go out, so it counts.
                Ok(()) | Err(StoreError::InvalidArgument(_)) => Ok(()),
                Err(e) => Err(e),
            }
        });
        if let Err(source) = try_join_all(marks).await {
            // Published but perhaps not marked: a second replay republishes the same ids.
            return Err(DeadLetterError::ReplayInterrupted {
                report: report.clone(),
                source: ReplayFailure::Store(source),
            });
        }
        metrics::counter!(METRIC_REPLAYED, "topic" => topic.to_string())
            .increment(ids.len() as u64);
        for id in ids {
            report.replayed += 1;
            progress(&ReplayProgress {
                total: report.total,
                replayed: report.replayed,
                skipped: report.skipped,
                last: *id,
            });
        }
        Ok(())
    }

    fn skipped(
        &self,
        report: &mut ReplayReport,
        topic: &TopicName,
        id: DeadLetterId,
        reason: String,
        progress: &mut ProgressFn<'_>,
    ) {
        tracing::warn!(dead_letter = %id, %topic, %reason, "dead letter skipped by the replay");
        metrics::counter!(METRIC_REPLAY_SKIPPED, "topic" => topic.to_string()).increment(1);
        report.skip(id, reason);
        progress(&ReplayProgress {
            total: report.total,
            replayed: report.replayed,
            skipped: report.skipped,
            last: id,
        });
    }
}

/// A refusal of the message itself (retrying cannot help), as opposed to the bus being
/// unavailable.
fn is_refusal(e: &BusError) -> bool {
    matches!(
        e,
        BusError::InvalidMessage { .. }
            | BusError::PayloadTooLarge { .. }
            | BusError::TooManyMessages { .. }
            | BusError::InvalidName { .. }
    )
}

/// The message to publish for `letter`: the stored one, same id and payload, with the
/// replay headers set for `group` (or cleared for a whole-topic replay).
fn replay_message(letter: &DeadLetter, group: Option<&GroupName>) -> Result<Message, String> {
    let mut message = letter.message.clone();
    message.headers.remove(REPLAY_GROUP_HEADER);
    message.headers.remove(REPLAY_OF_HEADER);
    if let Some(group) = group {
        if message.headers.len() >= HEADERS_MAX {
            return Err(format!(
                "the message already has {HEADERS_MAX} headers; no room for {REPLAY_GROUP_HEADER} \
                 (replay it to the whole topic instead)"
            ));
        }
        message
            .headers
            .insert(REPLAY_GROUP_HEADER.to_string(), group.to_string());
    }
    // Informational only: added when there is room.
    if message.headers.len() < HEADERS_MAX {
        message
            .headers
            .insert(REPLAY_OF_HEADER.to_string(), letter.id.to_string());
    }
    Ok(message)
}

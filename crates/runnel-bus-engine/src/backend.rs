//! The small trait a storage backend implements to host the bus engine, and the values that
//! cross it. A backend owns its tables and SQL; the engine owns everything else (options,
//! publish checks, wake-ups, the consumer loop, renewal, acknowledgement, retention
//! scheduling).

use std::future::Future;
use std::time::Duration;

use runnel_core::bus::StartPosition;
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::uuid::Uuid;
use runnel_core::{BusError, GroupName, Message, TopicName};

use crate::{BusOptions, BusSignals, EncodedMessage, GroupBacklog};

/// Which queue row a delivery holds, and under which lease. Backends keep whatever their
/// settle statements bind (group ids, owner, attempt); the engine only reads these two.
pub trait Lease: Clone + Send + Sync + 'static {
    /// The message's place in the topic's log (for error messages).
    fn seq(&self) -> i64;
    /// The delivery attempt the claim made: 1 for the first delivery. A later claim of the
    /// same row has a higher one, so a stale lease can never settle a newer one.
    fn attempt(&self) -> u32;
}

/// What a consumer asks its backend to claim.
#[derive(Debug)]
pub struct ClaimRequest<'a, G> {
    /// The group, as [`BusBackend::ensure_group`] returned it.
    pub group: &'a G,
    /// The consumer claiming (a UUIDv7, one per subscription).
    pub owner: Uuid,
    /// Most rows to lease: the consumer's free in-flight slots, at most
    /// [`CLAIM_BATCH_MAX`](crate::CLAIM_BATCH_MAX).
    pub limit: usize,
    /// The consumer's clock reading when it decided to claim.
    pub now: DateTime<Utc>,
    /// How long a claimed row stays leased: `now + ack_timeout` (the backend may read
    /// the clock again when the claim actually runs).
    pub ack_timeout: Duration,
}

/// One claimed row with its message.
#[derive(Debug)]
pub struct ClaimedRow<L> {
    pub lease: L,
    pub message: Message,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim<L> {
    /// Rows leased until `lease_until`, in publish order (at most the request's limit,
    /// at least one).
    Claimed {
        rows: Vec<ClaimedRow<L>>,
        lease_until: DateTime<Utc>,
    },
    /// Nothing claimable now; the group's next head row becomes visible at
    /// `next_visible` (`None`: the group has no rows).
    Idle { next_visible: Option<DateTime<Utc>> },
}

/// How a delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done: delete the row; the key's next row becomes the head.
    Ack,
    /// Failed: free the row, claimable again at `visible_at`.
    Nack { visible_at: DateTime<Utc> },
    /// Still working: keep the lease until `visible_at`. Holds even when the lease has
    /// run out, as long as nobody claimed the row since (same owner, same attempt).
    Extend { visible_at: DateTime<Utc> },
    /// Claimed but never handed to the application (the consumer went away first): free
    /// the row at `visible_at` and take back the attempt the claim counted.
    Release { visible_at: DateTime<Utc> },
}

/// What settling did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The lease was still held (else the delivery is lost: redelivered elsewhere).
    pub held: bool,
    /// A row may have become claimable now: the engine wakes this process's consumers of
    /// the topic. (Waking other processes is the backend's business.)
    pub wake: bool,
}

impl Settled {
    /// The lease was gone: nothing changed.
    pub const LOST: Settled = Settled {
        held: false,
        wake: false,
    };
}

/// A storage backend hosting the bus: its tables, its statements, where its wake-ups live.
///
/// Every method is one short transaction (or a read); none holds a connection across calls.
/// Settling and claiming must respect the lease: only the lease that claimed a row (same
/// owner, same attempt) settles it, and only a key's head row is claimed — that is what
/// keeps per-key order, and it is the backend's SQL that guarantees it.
///
/// ```
/// use runnel_bus_engine::{BusBackend, BusEngine};
///
/// // A bus type wraps the engine over its backend and forwards to it.
/// struct MyBus<B: BusBackend> {
///     engine: BusEngine<B>,
/// }
///
/// impl<B: BusBackend> MyBus<B> {
///     fn new(backend: B) -> Result<Self, runnel_core::BusError> {
///         Ok(MyBus { engine: BusEngine::new(backend)? })
///     }
/// }
/// ```
pub trait BusBackend: Send + Sync + 'static {
    /// A consumer group once it exists (its ids).
    type Group: Clone + Send + Sync + 'static;
    /// What a delivery holds until it is settled.
    type Lease: Lease;

    /// The options; their clock is the engine's and the backend's only time source.
    fn options(&self) -> &BusOptions;

    /// The wake-up counters this process's consumers of this bus watch.
    fn signals(&self) -> &BusSignals;

    /// Appends `messages` (checked and encoded, at least one) to the topic's log and queues
    /// each for every group of the topic, in one durable commit. The engine wakes this
    /// process's consumers afterwards.
    fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<EncodedMessage>,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// The group, creating it (and the topic) on first use; a new group with
    /// [`StartPosition::Earliest`] queues every message the topic retains.
    fn ensure_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        start: StartPosition,
    ) -> impl Future<Output = Result<Self::Group, BusError>> + Send;

    /// Leases up to `request.limit` claimable head rows of the group, or says when the
    /// next one becomes visible.
    fn claim(
        &self,
        request: ClaimRequest<'_, Self::Group>,
    ) -> impl Future<Output = Result<Claim<Self::Lease>, BusError>> + Send;

    /// Settles one lease.
    fn settle(
        &self,
        topic: &TopicName,
        lease: &Self::Lease,
        how: Settle,
    ) -> impl Future<Output = Result<Settled, BusError>> + Send;

    /// Deletes log rows published before `cutoff` that no group needs any more, in
    /// transactions of at most [`SWEEP_BATCH_MAX`](crate::SWEEP_BATCH_MAX) rows. Returns
    /// how many were deleted.
    fn sweep(&self, cutoff: DateTime<Utc>) -> impl Future<Output = Result<usize, BusError>> + Send;

    /// Removes a group and everything it still had to consume; whether it existed.
    fn delete_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> impl Future<Output = Result<bool, BusError>> + Send;

    /// What the group still has to consume as of `now`, or `None` if it does not exist.
    fn backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<GroupBacklog>, BusError>> + Send;
}

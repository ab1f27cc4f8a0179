//! Membership of a partitioned group: how many partitions this member may hold.
//!
//! With `partitions` > 1 every subscription runs one partition driver per partition (the
//! same member task as an unpartitioned group, on the partition's durable consumer and
//! lease) and one membership task. The membership task keeps a heartbeat key
//! (`<stream>.<consumer>.m.<member id>`) in the lease bucket, written every third of the
//! lease TTL (the bucket's `max_age` expires it when the member stops), and counts the
//! group's live members from those keys. The member's *quota* is
//! `ceil(partitions / live members)`: a partition driver takes a free partition's lease
//! only while the member holds fewer than its quota, and a member that holds more than
//! its quota (a newcomer joined) gives the surplus up, one lease per driver, so the
//! newcomer finds them free on its next lease poll.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::bus::{unavailable, Inner};
use crate::names;
use runnel_core::BusError;

/// How often a member counts the live members of its group.
pub const MEMBERSHIP_POLL: Duration = Duration::from_millis(500);
/// Most live members counted (past it the quota is 1 partition).
pub const MEMBERS_MAX: usize = 1024;

pub(crate) struct Membership {
    member_id: String,
    key: String,
    /// `$KV.<bucket>.<stream>.<consumer>.m.*`: every member's heartbeat subject.
    filter: String,
    /// `$KV.<bucket>.`: what a heartbeat subject starts with before its key.
    subject_prefix: String,
    /// The lease bucket's stream.
    kv_stream: String,
    partitions: u32,
    held: AtomicU32,
    quota: AtomicU32,
}

impl Membership {
    pub(crate) fn new(inner: &Inner, stream: &str, consumer: &str, partitions: u32) -> Self {
        let member_id = uuid::Uuid::now_v7().simple().to_string();
        let bucket = &inner.options.lease_bucket;
        Membership {
            key: names::member_key(stream, consumer, &member_id),
            filter: format!("$KV.{bucket}.{}", names::member_key(stream, consumer, "*")),
            subject_prefix: format!("$KV.{bucket}."),
            kv_stream: format!("KV_{bucket}"),
            member_id,
            partitions,
            held: AtomicU32::new(0),
            quota: AtomicU32::new(partitions),
        }
    }

    pub(crate) fn member_id(&self) -> &str {
        &self.member_id
    }

    pub(crate) fn quota(&self) -> u32 {
        self.quota.load(Ordering::SeqCst)
    }

    pub(crate) fn held(&self) -> u32 {
        self.held.load(Ordering::SeqCst)
    }

    /// Reserves room for one more partition lease; false at the quota.
    pub(crate) fn try_reserve(&self) -> bool {
        let quota = self.quota();
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h < quota).then_some(h + 1)
            })
            .is_ok()
    }

    /// Returns a reservation (a lease not taken, or lost).
    pub(crate) fn unreserve(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_sub(1));
    }

    /// Claims the giving-up of one surplus lease; true when the caller must release its.
    pub(crate) fn try_give_up(&self) -> bool {
        let quota = self.quota();
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                if h > quota {
                    Some(h - 1)
                } else {
                    None
                }
            })
            .is_ok()
    }

    /// Writes this member's heartbeat.
    pub(crate) async fn beat(&self, store: &kv::Store) -> Result<(), BusError> {
        store
            .put(&self.key, Bytes::from(self.member_id.clone().into_bytes()))
            .await
            .map(|_| ())
            .map_err(|e| unavailable("writing a group member's heartbeat", e))
    }

    /// Counts the live members (heartbeat keys present and not deleted) and sets the
    /// quota from it; this member always counts itself.
    pub(crate) async fn refresh(&self, inner: &Inner, store: &kv::Store) -> Result<u32, BusError> {
        let kv_stream = inner
            .js
            .get_stream_no_info(&self.kv_stream)
            .await
            .map_err(|e| unavailable("the lease bucket", e))?;
        let mut subjects = kv_stream
            .info_with_subjects(&self.filter)
            .await
            .map_err(|e| unavailable("listing a group's members", e))?;
        let mut keys = Vec::new();
        while let Some((subject, _count)) = subjects
            .try_next()
            .await
            .map_err(|e| unavailable("listing a group's members", e))?
        {
            if keys.len() >= MEMBERS_MAX {
                break;
            }
            if let Some(key) = subject.strip_prefix(self.subject_prefix.as_str()) {
                keys.push(key.to_string());
            }
        }
        let mut live: u32 = 1;
        for key in keys {
            if key == self.key {
                continue;
            }
            match store.entry(key.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => live += 1,
                Ok(_) => {}
                Err(e) => return Err(unavailable("reading a group member's heartbeat", e)),
            }
        }
        let quota = self.partitions.div_ceil(live).max(1);
        self.quota.store(quota, Ordering::SeqCst);
        Ok(live)
    }

    /// Deletes this member's heartbeat (best effort: it expires anyway).
    pub(crate) async fn leave(&self, store: &kv::Store) {
        if let Err(e) = store.delete(&self.key).await {
            tracing::debug!(key = %self.key, error = %e, "deleting a member's heartbeat failed; it will expire");
        }
    }

    /// The membership task: heartbeat every third of the lease TTL, member count every
    /// [`MEMBERSHIP_POLL`], until `closed` resolves (the subscription was dropped).
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        inner: std::sync::Arc<Inner>,
        store: kv::Store,
        closed: impl std::future::Future<Output = ()>,
    ) {
        let beat_every = inner.options.lease_ttl / 3;
        let mut last_beat = Instant::now();
        let mut tick = tokio::time::interval(MEMBERSHIP_POLL.min(beat_every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => break,
                _ = tick.tick() => {}
            }
            if last_beat.elapsed() >= beat_every {
                match self.beat(&store).await {
                    Ok(()) => last_beat = Instant::now(),
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed; retrying"),
                }
            }
            match self.refresh(&inner, &store).await {
                Ok(live) => tracing::trace!(
                    member = %self.member_id,
                    live,
                    quota = self.quota(),
                    held = self.held(),
                    "group membership"
                ),
                Err(e) => tracing::debug!(error = %e, "counting the group's members failed"),
            }
        }
        self.leave(&store).await;
    }
}

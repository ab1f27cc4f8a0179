//! [`SqliteBackend`]: runnel-bus-engine's backend on the store's file. Every write (publish,
//! group creation, claim, settle, sweep) is a job of the store's group-commit writer, so
//! it is durable when answered and serialized with every other writer of the file; the
//! probes an idle consumer makes run on a read connection and never occupy the writer.
//! Times are stored as microseconds since the epoch.

use std::time::Duration;

use runnel_bus_engine::{
    BusBackend, BusOptions, BusSignals, Claim, ClaimRequest, EncodedMessage, GroupBacklog, Settle,
    Settled, SWEEP_BATCH_MAX,
};
use runnel_core::bus::StartPosition;
use runnel_core::chrono::{DateTime, Utc};
use runnel_core::{BusError, GroupName, TopicName};

use super::queue::{self, Lease};
use crate::store::{keep_all, SqliteStore};

/// `t` in microseconds since the epoch, as stored.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back as a time, saturating at the ends of the representable range.
pub(crate) fn from_micros(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t).unwrap_or(if t < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `d` in microseconds, saturating.
fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) struct SqliteBackend {
    store: SqliteStore,
    options: BusOptions,
}

impl SqliteBackend {
    pub fn new(store: SqliteStore, options: BusOptions) -> Self {
        SqliteBackend { store, options }
    }

    pub fn store(&self) -> &SqliteStore {
        &self.store
    }
}

impl BusBackend for SqliteBackend {
    /// The group's rowid.
    type Group = i64;
    type Lease = Lease;

    fn options(&self) -> &BusOptions {
        &self.options
    }

    /// Held by the store, so every bus on clones of one store shares them.
    fn signals(&self) -> &BusSignals {
        self.store.bus_signals()
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<EncodedMessage>,
    ) -> Result<(), BusError> {
        let count = messages.len();
        let clock = self.options.clock.clone();
        let name = topic.to_string();
        self.store
            .submit(count, keep_all, move |conn, _| {
                queue::publish_in_tx(conn, &name, &messages, micros(clock.now()))
            })
            .await?;
        Ok(())
    }

    async fn ensure_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        start: StartPosition,
    ) -> Result<i64, BusError> {
        let clock = self.options.clock.clone();
        let (t, g) = (topic.to_string(), group.to_string());
        Ok(self
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::ensure_group(conn, &t, &g, start, micros(clock.now()))
            })
            .await?)
    }

    /// First probes the group's next visible head on a read connection, so an idle
    /// consumer never occupies the writer; claims in a writer job only when one is due.
    async fn claim(&self, request: ClaimRequest<'_, i64>) -> Result<Claim<Lease>, BusError> {
        let group_id = *request.group;
        let next_visible = self
            .store
            .read(move |conn| queue::next_visible(conn, group_id))
            .await?;
        match next_visible {
            Some(t) if t <= micros(request.now) => {}
            _ => {
                return Ok(Claim::Idle {
                    next_visible: next_visible.map(from_micros),
                })
            }
        }
        let owner = request.owner;
        let limit = request.limit;
        let ack_timeout = duration_micros(request.ack_timeout);
        let clock = self.options.clock.clone();
        let claim = self
            .store
            .submit(0, keep_all, move |conn, _| {
                let now = micros(clock.now());
                let lease_until = now.saturating_add(ack_timeout);
                let rows = queue::claim(conn, group_id, owner, now, lease_until, limit)?;
                if rows.is_empty() {
                    // Another consumer took them first.
                    let next_visible = queue::next_visible(conn, group_id)?;
                    Ok(Claim::Idle {
                        next_visible: next_visible.map(from_micros),
                    })
                } else {
                    Ok(Claim::Claimed {
                        rows,
                        lease_until: from_micros(lease_until),
                    })
                }
            })
            .await?;
        Ok(claim)
    }

    async fn settle(
        &self,
        _topic: &TopicName,
        lease: &Lease,
        how: Settle,
    ) -> Result<Settled, BusError> {
        let lease = lease.clone();
        let clock = self.options.clock.clone();
        Ok(self
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::settle(conn, &lease, how, micros(clock.now()))
            })
            .await?)
    }

    async fn sweep(&self, cutoff: DateTime<Utc>) -> Result<usize, BusError> {
        let cutoff = micros(cutoff);
        let mut total = 0;
        loop {
            let deleted = self
                .store
                .submit(0, keep_all, move |conn, _| {
                    queue::sweep(conn, cutoff, SWEEP_BATCH_MAX)
                })
                .await?;
            total += deleted;
            if deleted < SWEEP_BATCH_MAX {
                return Ok(total);
            }
        }
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, BusError> {
        let (t, g) = (topic.to_string(), group.to_string());
        Ok(self
            .store
            .submit(0, keep_all, move |conn, _| {
                queue::delete_group(conn, &t, &g)
            })
            .await?)
    }

    async fn backlog(
        &self,
        topic: &TopicName,
        group: &GroupName,
        now: DateTime<Utc>,
    ) -> Result<Option<GroupBacklog>, BusError> {
        let (t, g) = (topic.to_string(), group.to_string());
        let now = micros(now);
        let backlog = self
            .store
            .read(move |conn| queue::group_backlog(conn, &t, &g, now))
            .await?;
        Ok(backlog.map(|(pending, in_flight)| GroupBacklog::new(pending, in_flight)))
    }
}

//! Group leases in a JetStream key-value bucket: at most one member of a group pulls
//! from the group's durable consumer at a time.
//!
//! A lease is one key (`<stream>.<consumer>`) whose value is the holder's member id.
//! It is taken with `create` (succeeds only when the key is absent or deleted), renewed
//! with `update` at the revision last written (compare-and-set: a holder that lost it
//! cannot renew), and given up with a delete at that revision. The bucket's `max_age` is
//! the lease TTL: a holder that stops renewing (crashed, cut off) loses the key to the
//! server's expiry, measured on the server's clock.

use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use runnel_core::BusError;

use crate::bus::{unavailable, Inner};

/// What the current member knows of its lease.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    member: String,
    revision: Option<u64>,
    renewed_at: Option<Instant>,
    ttl: Duration,
}

impl Lease {
    pub(crate) fn new(key: String, member: String, ttl: Duration) -> Self {
        Lease {
            key,
            member,
            revision: None,
            renewed_at: None,
            ttl,
        }
    }

    /// Whether this member holds the lease, as far as it can tell: it took or renewed it
    /// less than a TTL ago (less a margin, so it stops before the server lets another
    /// member in).
    pub(crate) fn held(&self) -> bool {
        match (self.revision, self.renewed_at) {
            (Some(_), Some(at)) => at.elapsed() < self.ttl.mul_f64(0.8),
            _ => false,
        }
    }

    /// Whether a renewal is due.
    pub(crate) fn renewal_due(&self) -> bool {
        self.renewed_at
            .is_some_and(|at| at.elapsed() >= self.ttl / 3)
    }

    /// Tries to take the lease. `Ok(true)` when this member now holds it.
    pub(crate) async fn acquire(&mut self, store: &kv::Store) -> Result<bool, BusError> {
        let value = Bytes::from(self.member.clone().into_bytes());
        match store.create(&self.key, value).await {
            Ok(revision) => {
                self.revision = Some(revision);
                self.renewed_at = Some(Instant::now());
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Ours from an attempt whose answer was lost?
                match store.entry(&self.key).await {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put
                            && entry.value.as_ref() == self.member.as_bytes() =>
                    {
                        self.revision = Some(entry.revision);
                        self.renewed_at = Some(Instant::now());
                        Ok(true)
                    }
                    Ok(_) => Ok(false),
                    Err(e) => Err(unavailable("reading a group lease", e)),
                }
            }
            Err(e) => Err(unavailable("taking a group lease", e)),
        }
    }

    /// Renews the lease. `Ok(false)` when it was lost (another member holds it, or it
    /// expired); a transport error leaves it as it was (it stays held until its TTL
    /// margin passes).
    pub(crate) async fn renew(&mut self, store: &kv::Store) -> Result<bool, BusError> {
        let Some(revision) = self.revision else {
            return Ok(false);
        };
        let value = Bytes::from(self.member.clone().into_bytes());
        match store.update(&self.key, value, revision).await {
            Ok(rev) => {
                self.revision = Some(rev);
                self.renewed_at = Some(Instant::now());
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.lose();
                Ok(false)
            }
            Err(e) => Err(unavailable("renewing a group lease", e)),
        }
    }

    /// Forgets the lease locally.
    pub(crate) fn lose(&mut self) {
        self.revision = None;
        self.renewed_at = None;
    }

    /// Gives the lease up (best effort: it expires anyway).
    pub(crate) async fn release(&mut self, store: &kv::Store) {
        if let Some(revision) = self.revision.take() {
            if let Err(e) = store
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                tracing::debug!(key = %self.key, error = %e, "releasing a group lease failed; it will expire");
            }
        }
        self.renewed_at = None;
    }
}

impl Inner {
    /// The lease bucket, created on first use with `max_age` = the lease TTL. The bucket's
    /// stream is created directly with the KV conventions (the client's own bucket
    /// creation first queries account limits in a shape a 2.9 server does not answer).
    pub(crate) async fn lease_store(&self) -> Result<kv::Store, BusError> {
        self.leases
            .get_or_try_init(|| async {
                let bucket = self.options.lease_bucket.clone();
                if let Ok(store) = self.js.get_key_value(&bucket).await {
                    return Ok(store);
                }
                let config = stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("Runnel consumer-group leases".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: self.options.lease_ttl,
                    storage: stream::StorageType::File,
                    num_replicas: self.options.replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    duplicate_window: self.options.lease_ttl.min(Duration::from_secs(120)),
                    ..Default::default()
                };
                if let Err(e) = self.js.create_stream(config).await {
                    tracing::debug!(error = %e, "lease bucket creation raced or failed; looking it up");
                }
                self.js
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| unavailable("opening the lease bucket", e))
            })
            .await
            .cloned()
    }
}

//! [`DedupLayer`]: a dedup window over a [`DedupStore`] for handlers with external side
//! effects.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use runnel_core::idempotency::{DedupClaim, DedupStore};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::consumer_name;

use crate::consumer::context::{lock, HandlerContext};
use crate::consumer::error::{HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};
use crate::consumer::time::{Sleeper, TokioSleeper};

/// Default lock TTL: longer than the default handler timeout, so a live holder keeps it.
pub const DEDUP_LOCK_TTL_DEFAULT: Duration = Duration::from_secs(60);
/// Default time a completed key is remembered.
pub const DEDUP_RESULT_TTL_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Default longest wait for a concurrent holder's result before handing the delivery back.
pub const DEDUP_WAIT_MAX_DEFAULT: Duration = Duration::from_secs(10);
/// Default interval between claims while another holder has the key.
pub const DEDUP_POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// How long a delivery waits before coming back when the dedup store failed.
pub const DEDUP_UNAVAILABLE_NACK_DELAY: Duration = Duration::from_secs(5);

/// A dedup window over a [`DedupStore`] for handlers with external side effects (an email,
/// a card charge) that cannot share a transaction with an inbox.
///
/// Per attempt it claims the key `"{consumer name}/{message id}"` (see [`consumer_name`]) —
/// * `Acquired` → runs the handler; on success caches its result (see
///   [`HandlerContext::set_result`]) for the result TTL, on failure releases the lock;
/// * `Completed` → skips the handler: [`Outcome::Duplicate`] with the cached result;
/// * `InProgress` → someone else is handling it: polls the claim until the wait deadline
///   (they finish → `Completed`; they crash → their lock expires → `Acquired`), then hands
///   the delivery back to come again later.
#[derive(Clone)]
pub struct DedupLayer {
    store: Arc<dyn DedupStore>,
    key_prefix: Option<String>,
    lock_ttl: Duration,
    result_ttl: Duration,
    wait_max: Duration,
    poll_interval: Duration,
    sleeper: Arc<dyn Sleeper>,
}

impl fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("key_prefix", &self.key_prefix)
            .field("lock_ttl", &self.lock_ttl)
            .field("result_ttl", &self.result_ttl)
            .field("wait_max", &self.wait_max)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl DedupLayer {
    /// Deduplicates through `store` with the default TTLs and waits.
    pub fn new(store: Arc<dyn DedupStore>) -> Self {
        DedupLayer {
            store,
            key_prefix: None,
            lock_ttl: DEDUP_LOCK_TTL_DEFAULT,
            result_ttl: DEDUP_RESULT_TTL_DEFAULT,
            wait_max: DEDUP_WAIT_MAX_DEFAULT,
            poll_interval: DEDUP_POLL_INTERVAL_DEFAULT,
            sleeper: Arc::new(TokioSleeper),
        }
    }

    /// Keys are `"{prefix}/{message id}"`; the default prefix is [`consumer_name`]
    /// (`"{topic}/{group}"`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// How long a claim holds the lock (make it longer than the slowest attempt).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long a completed key and its result are remembered.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How long to wait for a concurrent holder, polling every `poll_interval`.
    pub fn wait(mut self, wait_max: Duration, poll_interval: Duration) -> Self {
        self.wait_max = wait_max;
        self.poll_interval = poll_interval.max(Duration::from_millis(1));
        self
    }

    /// Waits between polls.
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`DedupLayer`].
#[derive(Clone, Debug)]
pub struct Dedup<S> {
    inner: S,
    config: DedupLayer,
}

fn unavailable(e: runnel_core::StoreError) -> HandlerError {
    HandlerError::redeliver(
        RouterFailure::DedupUnavailable(e),
        Some(DEDUP_UNAVAILABLE_NACK_DELAY),
    )
}

impl<S> Service<HandlerContext> for Dedup<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let key = match &config.key_prefix {
                Some(prefix) => format!("{prefix}/{}", ctx.message().id),
                None => format!(
                    "{}/{}",
                    consumer_name(ctx.topic(), ctx.group()),
                    ctx.message().id
                ),
            };
            let store = &config.store;
            let started = Instant::now();
            // Bounded by the wait deadline: at most wait_max / poll_interval + 1 claims.
            let token = loop {
                match store
                    .claim(&key, config.lock_ttl)
                    .await
                    .map_err(unavailable)?
                {
                    DedupClaim::Acquired { token } => break token,
                    DedupClaim::Completed { result } => {
                        ::tracing::debug!(%key, "already handled (dedup window); skipping the handler");
                        return Ok(Outcome::Duplicate {
                            cached_result: Some(result),
                        });
                    }
                    DedupClaim::InProgress => {
                        let waited = started.elapsed();
                        if waited >= config.wait_max {
                            return Err(HandlerError::redeliver(
                                RouterFailure::DedupBusy {
                                    message_id: ctx.message().id.clone(),
                                    waited,
                                },
                                Some(config.poll_interval.max(config.wait_max / 2)),
                            ));
                        }
                        let nap = config.poll_interval.min(config.wait_max - waited);
                        config.sleeper.sleep(nap).await;
                    }
                }
            };

            let slot = Arc::new(Mutex::new(None));
            let result = inner.oneshot(ctx.with_result_slot(Arc::clone(&slot))).await;
            match result {
                Ok(outcome) => {
                    let cached = lock(&slot).take().unwrap_or_default();
                    if let Err(e) = store
                        .complete(&key, &token, cached, config.result_ttl)
                        .await
                    {
                        // The effect happened; acking now is what prevents a repeat (a
                        // retry would wait for the lock to expire and then run it again).
                        ::tracing::warn!(%key, error = %e, "caching the dedup result failed; acknowledging anyway");
                    }
                    Ok(outcome)
                }
                Err(e) => {
                    if let Err(release) = store.release(&key, &token).await {
                        ::tracing::warn!(%key, error = %release, "releasing the dedup lock failed; it expires after its TTL");
                    }
                    Err(e)
                }
            }
        })
    }
}

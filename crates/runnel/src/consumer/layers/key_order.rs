//! [`KeyOrderLayer`]: per-key order, bounded buffers, back-pressure.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use runnel_core::bus::MAX_IN_FLIGHT_DEFAULT;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::consumer::context::{lock, HandlerContext, ShutdownSignal};
use crate::consumer::error::{HandlerError, RouterFailure};
use crate::consumer::handler::{BoxFuture, Outcome};

/// Default most deliveries queued per ordering key (the one being handled included). Every
/// built-in transport holds a key's next message until the previous is settled, so with
/// them this is one, and two while a redelivery after an ack timeout waits for the attempt
/// still running; a custom `Subscriber` may deliver a key's backlog at once.
pub const PER_KEY_QUEUE_MAX_DEFAULT: usize = 32;

/// Deliveries with the same ordering key are handled one at a time, in the order they were
/// delivered; different keys run in parallel. Buffers are bounded: while any key's queue
/// is full, or the layer holds `buffered_max` deliveries, the service is not ready, so the
/// consumer stops pulling from the subscription (back-pressure).
///
/// Order is decided in `call` — synchronously, in delivery order — not when the returned
/// futures first run, so tasks scheduled out of order cannot overtake each other. Layers
/// above this one must therefore call their inner service in `call` itself, not later in
/// the future they return (the built-in tracing layer does). A key waiting in a retry
/// backoff below holds only its own key: other keys go on. If shutdown begins before a
/// delivery's turn, the delivery is abandoned (left unsettled for redelivery).
///
/// # Why the router keeps this layer although every transport keeps per-key order
///
/// Every built-in broker transport (and the embedded bus) hands out a key's next message
/// only after the previous one is settled (the per-key book of `runnel-transport-kit` on
/// the brokers, head rows on the embedded bus).
/// With them this layer's per-key queue normally holds one delivery and costs a map lookup.
/// It stays in the default stack because a transport's order ends where a delivery is
/// handed out, and only the router sees where *handling* ends:
///
/// * **an ack timeout while the handler still runs**: the transport counts the delivery as
///   lost and hands the key's head out again, to this same consumer. Without this layer
///   the redelivery would run beside the first attempt of the same key, their effects in
///   any order; with it the redelivery waits until the first attempt is done (whose ack
///   then fails as lost);
/// * **users' own [`Subscriber`](runnel_core::bus::Subscriber)s**, which may promise order
///   without holding a key's next message back: guarantee 4 (per-key order end to end)
///   does not depend on the transport;
/// * it costs no parallelism — different keys run at once, up to `max_concurrency` — and
///   its bounds give the consumer back-pressure.
///
/// Removing it would be safe only for transports that hold keys *and* handlers that never
/// outlive their ack timeout; neither is something the router can check.
#[derive(Clone, Copy, Debug)]
pub struct KeyOrderLayer {
    per_key_max: usize,
    buffered_max: usize,
}

impl Default for KeyOrderLayer {
    fn default() -> Self {
        KeyOrderLayer {
            per_key_max: PER_KEY_QUEUE_MAX_DEFAULT,
            buffered_max: MAX_IN_FLIGHT_DEFAULT,
        }
    }
}

impl KeyOrderLayer {
    /// At most `per_key_max` deliveries per key and `buffered_max` in all (both ≥ 1).
    pub fn new(per_key_max: usize, buffered_max: usize) -> Self {
        KeyOrderLayer {
            per_key_max: per_key_max.max(1),
            buffered_max: buffered_max.max(1),
        }
    }
}

impl<S> Layer<S> for KeyOrderLayer {
    type Service = KeyOrder<S>;
    fn layer(&self, inner: S) -> KeyOrder<S> {
        KeyOrder {
            inner,
            state: Arc::new(State {
                per_key_max: self.per_key_max,
                buffered_max: self.buffered_max,
                queues: Mutex::new(Queues::default()),
            }),
        }
    }
}

/// The service of [`KeyOrderLayer`]. Clones share one set of queues.
pub struct KeyOrder<S> {
    inner: S,
    state: Arc<State>,
}

impl<S: Clone> Clone for KeyOrder<S> {
    fn clone(&self) -> Self {
        KeyOrder {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S> fmt::Debug for KeyOrder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = lock(&self.state.queues);
        f.debug_struct("KeyOrder")
            .field("buffered", &q.buffered)
            .field("keys", &q.keys.len())
            .finish()
    }
}

impl<S> KeyOrder<S> {
    /// Deliveries currently held (queued or being handled).
    pub fn buffered(&self) -> usize {
        lock(&self.state.queues).buffered
    }
}

struct State {
    per_key_max: usize,
    buffered_max: usize,
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    keys: HashMap<String, KeyQueue>,
    buffered: usize,
    /// Keys whose queue is at `per_key_max`.
    full_keys: usize,
    /// The consumer waiting in `poll_ready` for room.
    ready_waker: Option<Waker>,
}

#[derive(Default)]
struct KeyQueue {
    /// Deliveries of this key held, the one whose turn it is included.
    len: usize,
    /// Whether some delivery of this key holds the turn.
    turn_taken: bool,
    /// Deliveries waiting for the turn, in delivery order. A sender whose receiver is gone
    /// belongs to a dropped delivery and is skipped.
    waiters: VecDeque<oneshot::Sender<()>>,
}

enum Turn {
    Holding,
    Waiting(oneshot::Receiver<()>),
    Released,
}

/// A delivery's place in its key's line; dropping it passes the turn on.
struct Ticket {
    state: Arc<State>,
    key: Option<String>,
    turn: Turn,
}

impl State {
    fn admit(self: &Arc<Self>, key: Option<String>) -> Ticket {
        let mut q = lock(&self.queues);
        q.buffered += 1;
        debug_assert!(
            q.buffered <= self.buffered_max,
            "called without waiting for readiness"
        );
        let turn = match &key {
            None => Turn::Holding,
            Some(k) => {
                let per_key_max = self.per_key_max;
                let kq = q.keys.entry(k.clone()).or_default();
                kq.len += 1;
                let now_full = kq.len == per_key_max;
                let turn = if kq.turn_taken {
                    let (tx, rx) = oneshot::channel();
                    kq.waiters.push_back(tx);
                    Turn::Waiting(rx)
                } else {
                    kq.turn_taken = true;
                    Turn::Holding
                };
                if now_full {
                    q.full_keys += 1;
                }
                turn
            }
        };
        Ticket {
            state: Arc::clone(self),
            key,
            turn,
        }
    }
}

impl Ticket {
    /// Waits for this delivery's turn; a shutdown before it comes abandons the delivery.
    async fn wait_turn(&mut self, shutdown: &ShutdownSignal) -> Result<(), HandlerError> {
        if let Turn::Waiting(rx) = &mut self.turn {
            tokio::select! {
                biased;
                () = shutdown.requested() => {
                    return Err(HandlerError::abandoned(RouterFailure::ShuttingDown));
                }
                turn = rx => {
                    if turn.is_err() {
                        // Only possible if the key's queue vanished under us: a bug, but
                        // leaving the delivery to be redelivered is safe.
                        debug_assert!(false, "the key's turn was dropped without being passed");
                        return Err(HandlerError::abandoned(RouterFailure::ShuttingDown));
                    }
                    self.turn = Turn::Holding;
                }
            }
        }
        if shutdown.is_requested() {
            return Err(HandlerError::abandoned(RouterFailure::ShuttingDown));
        }
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let state = Arc::clone(&self.state);
        let mut q = lock(&state.queues);
        q.buffered -= 1;
        if let Some(key) = &self.key {
            let per_key_max = state.per_key_max;
            // Decide under the lock whether we hold the turn: a turn handed to us just as
            // we were dropped must be passed on, and dropping the receiver here (not after
            // unlocking) means no one can hand it to us afterwards.
            let holding = match std::mem::replace(&mut self.turn, Turn::Released) {
                Turn::Holding => true,
                Turn::Waiting(mut rx) => rx.try_recv().is_ok(),
                Turn::Released => false,
            };
            let mut was_full = false;
            let mut now_empty = false;
            if let Some(kq) = q.keys.get_mut(key) {
                was_full = kq.len == per_key_max;
                kq.len -= 1;
                if holding {
                    kq.turn_taken = false;
                    while let Some(next) = kq.waiters.pop_front() {
                        if next.send(()).is_ok() {
                            kq.turn_taken = true;
                            break;
                        }
                    }
                }
                now_empty = kq.len == 0;
                debug_assert!(!now_empty || !kq.turn_taken);
            } else {
                debug_assert!(false, "a ticket's key queue is missing");
            }
            if was_full {
                q.full_keys -= 1;
            }
            if now_empty {
                q.keys.remove(key);
            }
        }
        if let Some(waker) = q.ready_waker.take() {
            waker.wake();
        }
    }
}

impl<S> Service<HandlerContext> for KeyOrder<S>
where
    S: Service<HandlerContext, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        let mut q = lock(&self.state.queues);
        if q.buffered < self.state.buffered_max && q.full_keys == 0 {
            Poll::Ready(Ok(()))
        } else {
            q.ready_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, ctx: HandlerContext) -> Self::Future {
        let key = ctx.message().ordering_key().map(str::to_owned);
        let mut ticket = self.state.admit(key);
        let inner = self.inner.clone();
        Box::pin(async move {
            ticket.wait_turn(&ctx.shared().shutdown).await?;
            let result = inner.oneshot(ctx).await;
            drop(ticket);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::message::{GroupName, Message, TopicName};
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    fn ctx(key: &str) -> HandlerContext {
        HandlerContext::detached(
            Message::json("T", &serde_json::json!({})).with_key(key),
            TopicName::new("t").unwrap(),
            GroupName::new("g").unwrap(),
        )
    }

    #[derive(Clone)]
    struct Gate(Arc<Notify>, Arc<AtomicUsize>);

    impl Service<HandlerContext> for Gate {
        type Response = Outcome;
        type Error = HandlerError;
        type Future = BoxFuture<Result<Outcome, HandlerError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: HandlerContext) -> Self::Future {
            let gate = self.clone();
            Box::pin(async move {
                gate.1.fetch_add(1, Ordering::SeqCst);
                gate.0.notified().await;
                Ok(Outcome::Handled)
            })
        }
    }

    #[tokio::test]
    async fn a_full_key_queue_stops_readiness_until_it_drains() {
        let gate = Gate(Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let mut svc = KeyOrderLayer::new(2, 10).layer(gate.clone());
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let first = tokio::spawn(svc.call(ctx("k")));
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        let second = tokio::spawn(svc.call(ctx("k")));
        // Two of "k" held: not ready for anything until one finishes.
        let not_ready =
            tokio::time::timeout(Duration::from_millis(50), poll_fn(|cx| svc.poll_ready(cx))).await;
        assert!(not_ready.is_err(), "ready with a full key queue");
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.1.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            gate.1.load(Ordering::SeqCst),
            1,
            "the second ran before the first ended"
        );
        gate.0.notify_one();
        first.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| svc.poll_ready(cx)))
            .await
            .unwrap()
            .unwrap();
        gate.0.notify_one();
        second.await.unwrap().unwrap();
        assert_eq!(svc.buffered(), 0);
        assert!(lock(&svc.state.queues).keys.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_waiter_does_not_stall_its_key() {
        let gate = Gate(Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let mut svc = KeyOrderLayer::new(8, 8).layer(gate.clone());
        let first = tokio::spawn(svc.call(ctx("k")));
        let second = svc.call(ctx("k"));
        let third = tokio::spawn(svc.call(ctx("k")));
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.1.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        gate.0.notify_one();
        first.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while gate.1.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the third delivery never got the key");
        gate.0.notify_one();
        third.await.unwrap().unwrap();
        assert_eq!(svc.buffered(), 0);
    }
}

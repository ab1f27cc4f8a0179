//! The application's side of a subscription: a bounded channel of hand-outs turned into
//! a [`DeliveryStream`] that tells the state when the application takes each one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use runnel_core::bus::{Delivery, DeliveryStream};
use runnel_core::BusError;
use tokio::sync::mpsc;

use crate::book::{EntryId, KeyBook};
use crate::shared::Shared;

/// A delivery on its way to the application, with what identifies it in the book.
#[derive(Debug)]
pub struct Handout {
    pub id: EntryId,
    pub token: u64,
    pub delivery: Delivery,
}

/// A subscription state that learns when the application takes a hand-out.
pub trait TakesHandouts: Send + 'static {
    /// The application took `(id, token)` at `now`: its ack timeout starts. False when
    /// the hand-out is stale (expired, redelivered or forgotten while it waited in the
    /// stream): the stream skips it.
    fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool;
}

impl<K, T> TakesHandouts for KeyBook<K, T>
where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    fn taken(&mut self, id: EntryId, token: u64, now: Instant) -> bool {
        KeyBook::taken(self, id, token, now)
    }
}

/// Turns the driver's channel into the subscription's stream. Each hand-out is checked
/// against the state as the application takes it: a current one starts its ack timeout
/// (and the driver is woken to arm it), a stale one is dropped. `guard` lives as long as
/// the stream (e.g. aborts the driver's helper tasks when dropped).
pub fn handout_stream<S: TakesHandouts, G: Send + 'static>(
    rx: mpsc::Receiver<Result<Handout, BusError>>,
    shared: Arc<Shared<S>>,
    guard: G,
) -> DeliveryStream {
    Box::pin(Handouts {
        rx,
        shared,
        _guard: guard,
    })
}

struct Handouts<S, G> {
    rx: mpsc::Receiver<Result<Handout, BusError>>,
    shared: Arc<Shared<S>>,
    _guard: G,
}

impl<S: TakesHandouts, G> Unpin for Handouts<S, G> {}

impl<S: TakesHandouts, G> Stream for Handouts<S, G> {
    type Item = Result<Delivery, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(h))) => {
                    let current = self.shared.lock().taken(h.id, h.token, Instant::now());
                    if current {
                        self.shared.wake();
                        return Poll::Ready(Some(Ok(h.delivery)));
                    }
                    // Superseded while it waited: dropping it settles nothing.
                    tracing::trace!(id = h.id, "a superseded hand-out skipped");
                }
                other => return other.map(|o| o.map(|r| r.map(|h| h.delivery))),
            }
        }
    }
}

//! Group commit: concurrent calls of this process (publishes to one topic; acks) are
//! written by one statement — one transaction, one commit and one WAL flush — and each call
//! returns once that commit is durable. At most [`FLUSHES_MAX`] such transactions of a
//! kind run at once; calls arriving meanwhile wait for the next one, so the busier the bus,
//! the larger the transactions. A lone caller pays one task hand-off.
//!
//! Nothing is promised between concurrent calls (each call's messages stay in order and
//! together); a call made after another returned lands in a later transaction, so one
//! publisher's calls keep their order. If a transaction of several calls fails, each call
//! is retried alone, so one call's failure is never another's.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use runnel_bus_engine::EncodedMessage;
use runnel_core::StoreError;
use tokio::sync::oneshot;

use super::queue::Lease;

/// Transactions of one kind (publishes; acks) one process runs at once. Two keep the
/// server busy while a commit waits for its WAL flush, and leave the pool's other
/// connections to consumers and to the other kind.
pub(crate) const FLUSHES_MAX: usize = 2;

/// Most acks one transaction gathers.
pub(crate) const ACKS_PER_TRANSACTION_MAX: usize = 256;

/// One publish call waiting for its commit.
pub(crate) struct PublishCall {
    pub topic: String,
    pub messages: Vec<EncodedMessage>,
    bytes: usize,
}

impl PublishCall {
    pub fn new(topic: &str, messages: Vec<EncodedMessage>) -> Self {
        PublishCall {
            topic: topic.to_string(),
            bytes: messages.iter().map(EncodedMessage::bytes).sum(),
            messages,
        }
    }
}

/// Writes the calls of one transaction; one result per call, in order.
pub(crate) type WriteFn<C, O> = Arc<
    dyn Fn(Arc<Vec<C>>) -> Pin<Box<dyn Future<Output = Vec<Result<O, StoreError>>> + Send>>
        + Send
        + Sync,
>;

/// Picks the calls of the next transaction from the waiting ones (at least the oldest),
/// within a limit.
pub(crate) type TakeFn<C, O> = fn(&mut VecDeque<Waiting<C, O>>, usize) -> Vec<Waiting<C, O>>;

pub(crate) struct Waiting<C, O> {
    pub call: C,
    done: oneshot::Sender<Result<O, StoreError>>,
}

struct Queue<C, O> {
    waiting: VecDeque<Waiting<C, O>>,
    flushing: usize,
}

/// The calls waiting to be written, and the tasks writing them.
pub(crate) struct GroupCommit<C, O> {
    queue: Arc<Mutex<Queue<C, O>>>,
    take: TakeFn<C, O>,
    limit: usize,
    write: WriteFn<C, O>,
}

impl<C: Send + Sync + 'static, O: Clone + Send + 'static> GroupCommit<C, O> {
    pub fn new(take: TakeFn<C, O>, limit: usize, write: WriteFn<C, O>) -> Self {
        GroupCommit {
            queue: Arc::new(Mutex::new(Queue {
                waiting: VecDeque::new(),
                flushing: 0,
            })),
            take,
            limit,
            write,
        }
    }

    /// Writes `call` (with whatever other calls are waiting) and returns its result once
    /// committed. Cancelling the call does not cancel the write.
    pub async fn run(&self, call: C) -> Result<O, StoreError> {
        let (done, committed) = oneshot::channel();
        let start_flusher = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push_back(Waiting { call, done });
            if q.flushing < FLUSHES_MAX {
                q.flushing += 1;
                true
            } else {
                false
            }
        };
        if start_flusher {
            tokio::spawn(flush(
                Arc::clone(&self.queue),
                self.take,
                self.limit,
                Arc::clone(&self.write),
            ));
        }
        committed.await.map_err(|_| {
            StoreError::Backend("the bus's writer task ended before the commit".into())
        })?
    }
}

/// Writes waiting calls until none is left.
async fn flush<C: Send + Sync + 'static, O: Clone + Send + 'static>(
    queue: Arc<Mutex<Queue<C, O>>>,
    take: TakeFn<C, O>,
    limit: usize,
    write: WriteFn<C, O>,
) {
    loop {
        let batch = {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.waiting.is_empty() {
                q.flushing -= 1;
                return;
            }
            take(&mut q.waiting, limit)
        };
        debug_assert!(!batch.is_empty());
        let (calls, dones): (Vec<C>, Vec<_>) = batch.into_iter().map(|w| (w.call, w.done)).unzip();
        let calls = Arc::new(calls);
        let results = write(Arc::clone(&calls)).await;
        let failed = results.iter().any(Result::is_err);
        // The writer keeps no handle once done, so the calls are ours again.
        if let (true, Ok(calls)) = (failed && calls.len() > 1, Arc::try_unwrap(calls)) {
            // Nothing of the transaction was kept: each call on its own, so the failure
            // is reported only to the calls that fail alone.
            for (call, done) in calls.into_iter().zip(dones) {
                let mut result = write(Arc::new(vec![call])).await;
                let _ = done.send(result.pop().unwrap_or_else(|| {
                    Err(StoreError::Backend("a bus write returned no result".into()))
                }));
            }
            continue;
        }
        debug_assert_eq!(results.len(), dones.len());
        for (result, done) in results.into_iter().zip(dones) {
            // The caller may have gone away; what it wrote is committed all the same.
            let _ = done.send(result);
        }
    }
}

/// The oldest waiting publish and every later one of the same topic, up to `bytes_max` in
/// total (the first is always taken). Calls of other topics keep their place.
pub(crate) fn take_publishes<O>(
    waiting: &mut VecDeque<Waiting<PublishCall, O>>,
    bytes_max: usize,
) -> Vec<Waiting<PublishCall, O>> {
    let Some(first) = waiting.pop_front() else {
        return Vec::new();
    };
    let mut bytes = first.call.bytes;
    let mut batch = vec![first];
    let mut rest = VecDeque::with_capacity(waiting.len());
    while let Some(next) = waiting.pop_front() {
        if next.call.topic == batch[0].call.topic
            && bytes.saturating_add(next.call.bytes) <= bytes_max
        {
            bytes += next.call.bytes;
            batch.push(next);
        } else {
            rest.push_back(next);
        }
    }
    *waiting = rest;
    batch
}

/// The oldest waiting acks, at most `count_max` (at least one).
pub(crate) fn take_acks<O>(
    waiting: &mut VecDeque<Waiting<Lease, O>>,
    count_max: usize,
) -> Vec<Waiting<Lease, O>> {
    let n = waiting.len().min(count_max.max(1));
    waiting.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(topic: &str, bytes: usize) -> Waiting<PublishCall, ()> {
        let (done, _) = oneshot::channel();
        let message = EncodedMessage {
            ordering_key: None,
            envelope: String::new(),
            payload: vec![0; bytes],
        };
        Waiting {
            call: PublishCall::new(topic, vec![message]),
            done,
        }
    }

    #[test]
    fn a_publish_batch_takes_the_oldest_calls_topic_in_order_up_to_the_byte_limit() {
        let mut queue: VecDeque<_> = [("a", 10), ("b", 10), ("a", 20), ("a", 80), ("a", 5)]
            .into_iter()
            .map(|(t, b)| waiting(t, b))
            .collect();
        let batch = take_publishes(&mut queue, 40);
        let taken: Vec<(&str, usize)> = batch
            .iter()
            .map(|w| (w.call.topic.as_str(), w.call.bytes))
            .collect();
        assert_eq!(taken, [("a", 10), ("a", 20), ("a", 5)]);
        let left: Vec<(&str, usize)> = queue
            .iter()
            .map(|w| (w.call.topic.as_str(), w.call.bytes))
            .collect();
        assert_eq!(left, [("b", 10), ("a", 80)]);
        // A call over the limit on its own is still taken, alone.
        let mut big: VecDeque<_> = [waiting("a", 100)].into_iter().collect();
        assert_eq!(take_publishes(&mut big, 40).len(), 1);
        assert!(take_publishes(&mut big, 40).is_empty());
    }

    #[tokio::test]
    async fn a_failed_shared_transaction_is_retried_call_by_call() {
        // The writer fails any transaction holding call 13, and reports the sizes it saw.
        let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
        let write: WriteFn<u32, u32> = {
            let seen = Arc::clone(&seen);
            Arc::new(move |calls: Arc<Vec<u32>>| {
                let seen = Arc::clone(&seen);
                Box::pin(async move {
                    seen.lock().unwrap().push(calls.len());
                    let bad = calls.contains(&13);
                    calls
                        .iter()
                        .map(|c| {
                            if bad {
                                Err(StoreError::Backend(format!("refused with {c}")))
                            } else {
                                Ok(*c * 2)
                            }
                        })
                        .collect()
                })
            })
        };
        let commit = Arc::new(GroupCommit::new(|w, _| w.drain(..).collect(), 0, write));
        let mut calls = Vec::new();
        for c in [1u32, 13, 3, 4, 5, 6] {
            let commit = Arc::clone(&commit);
            calls.push(tokio::spawn(async move { commit.run(c).await }));
        }
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        assert_eq!(results[0], Ok(2));
        assert!(results[1].is_err());
        assert_eq!(&results[2..], [Ok(6), Ok(8), Ok(10), Ok(12)]);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter().sum::<usize>() >= 6,
            "every call written: {seen:?}"
        );
    }
}

//! The optional aggregate-state cache of a [`Repository`](super::Repository): the latest
//! state this process saw of each recently used aggregate, with the revision it is at.
//!
//! An entry is a hint, never the truth: a load starting from it still reads every event
//! after its revision, and a command run on it optimistically is appended with its revision
//! as the exact expectation, so the store refuses the append if anything (another process,
//! another repository) appended since. Entries only move forward.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use runnel_core::StreamName;

pub(crate) struct StateCache<A> {
    capacity: usize,
    /// `A::clone`, kept as a pointer so the repository needs no `Clone` bound except where
    /// the cache is turned on.
    clone: fn(&A) -> A,
    entries: Mutex<Entries<A>>,
    /// One lane per aggregate with a command running or waiting in this process (see
    /// [`Lane`]). Holds only aggregates in use (a lane goes with its last user), so it is
    /// bounded by the commands running at once.
    lanes: Mutex<HashMap<StreamName, Arc<Lane>>>,
}

/// The commands of this process waiting to run on one aggregate, and the lock of the
/// group commit running on it. Whoever takes the lock runs every waiting command (up to a
/// limit), each on the state the one before left, and appends their events in one commit;
/// so commands on one aggregate never race each other into conflicts, and a hot aggregate
/// commits many commands per round trip. The queue holds the repository's own pending
/// commands, type-erased so the cache needs no bound on `A`.
pub(crate) struct Lane {
    lock: Arc<tokio::sync::Mutex<()>>,
    queue: Mutex<VecDeque<Box<dyn Any + Send>>>,
}

impl Lane {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Box<dyn Any + Send>>> {
        // Never held across an await or user code.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a command.
    pub(crate) fn push(&self, pending: Box<dyn Any + Send>) {
        self.queue().push_back(pending);
    }

    /// Takes up to `max` waiting commands, oldest first.
    pub(crate) fn take(&self, max: usize) -> Vec<Box<dyn Any + Send>> {
        let mut queue = self.queue();
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// Waits for the lane's lock: the right to run a group commit on the aggregate.
    pub(crate) async fn lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.lock).lock_owned().await
    }
}

/// A command's use of its aggregate's [`Lane`]; the lane goes when its last user does.
pub(crate) struct LaneUse<'a, A> {
    cache: &'a StateCache<A>,
    stream: StreamName,
    lane: Option<Arc<Lane>>,
}

impl<A> std::ops::Deref for LaneUse<'_, A> {
    type Target = Lane;

    fn deref(&self) -> &Lane {
        self.lane
            .as_ref()
            .expect("a lane use holds its lane until dropped")
    }
}

impl<A> Drop for LaneUse<'_, A> {
    fn drop(&mut self) {
        // This use's reference goes first, so the count below sees only the map's copy
        // when nobody else uses this aggregate's lane.
        self.lane.take();
        let mut lanes = self.cache.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes
            .get(&self.stream)
            .is_some_and(|lane| Arc::strong_count(lane) == 1)
        {
            lanes.remove(&self.stream);
        }
    }
}

struct Entries<A> {
    map: HashMap<StreamName, (u64, A)>,
    /// The keys of `map`, oldest insertion first: the eviction order.
    order: VecDeque<StreamName>,
}

impl<A> StateCache<A> {
    pub(crate) fn new(capacity: usize, clone: fn(&A) -> A) -> Self {
        StateCache {
            capacity: capacity.max(1),
            clone,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// The lane of `stream`, created on first use.
    pub(crate) fn lane(&self, stream: &StreamName) -> LaneUse<'_, A> {
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(lanes.entry(stream.clone()).or_insert_with(|| {
                Arc::new(Lane {
                    lock: Arc::new(tokio::sync::Mutex::new(())),
                    queue: Mutex::new(VecDeque::new()),
                })
            }))
        };
        LaneUse {
            cache: self,
            stream: stream.clone(),
            lane: Some(lane),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries<A>> {
        // Never held across an await or user code: a poisoned lock cannot hold a half-made
        // change.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The function that copies a state.
    pub(crate) fn clone_of(&self) -> fn(&A) -> A {
        self.clone
    }

    /// A copy of the cached state of `stream` and its revision.
    pub(crate) fn get(&self, stream: &StreamName) -> Option<(u64, A)> {
        let entries = self.entries();
        entries
            .map
            .get(stream)
            .map(|(revision, state)| (*revision, (self.clone)(state)))
    }

    /// Records `state` at `revision` unless the cache already holds a later one.
    pub(crate) fn put(&self, stream: &StreamName, revision: u64, state: A) {
        let mut entries = self.entries();
        if let Some(entry) = entries.map.get_mut(stream) {
            if revision > entry.0 {
                *entry = (revision, state);
            }
            return;
        }
        while entries.map.len() >= self.capacity {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            entries.map.remove(&oldest);
        }
        entries.order.push_back(stream.clone());
        entries.map.insert(stream.clone(), (revision, state));
    }

    /// Forgets `stream` (its entry turned out to be ahead of the stored stream).
    pub(crate) fn remove(&self, stream: &StreamName) {
        let mut entries = self.entries();
        if entries.map.remove(stream).is_some() {
            entries.order.retain(|s| s != stream);
        }
    }

    /// Aggregates cached now.
    pub(crate) fn len(&self) -> usize {
        self.entries().map.len()
    }

    /// Aggregates with a command running or waiting now.
    #[cfg(test)]
    fn lanes_held(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: u32) -> StreamName {
        StreamName::new(format!("Counter-{i}")).expect("valid name")
    }

    #[test]
    fn holds_at_most_its_capacity_evicting_the_oldest() {
        let cache = StateCache::<u32>::new(2, u32::clone);
        cache.put(&name(1), 1, 10);
        cache.put(&name(2), 1, 20);
        cache.put(&name(3), 1, 30);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&name(1)).is_none(), "the oldest entry goes first");
        assert_eq!(cache.get(&name(3)), Some((1, 30)));
    }

    #[tokio::test]
    async fn a_lane_queues_in_order_locks_one_holder_and_goes_with_its_last_user() {
        let cache = StateCache::<u32>::new(2, u32::clone);
        let (one, two) = (name(1), name(2));
        let first = cache.lane(&one);
        let same = cache.lane(&one);
        let other = cache.lane(&two);
        first.push(Box::new(1u32));
        same.push(Box::new(2u32));
        same.push(Box::new(3u32));
        let taken: Vec<u32> = first
            .take(2)
            .into_iter()
            .map(|b| *b.downcast::<u32>().expect("a u32"))
            .collect();
        assert_eq!(taken, vec![1, 2], "oldest first, at most the limit");
        {
            let held = first.lock().await;
            let waiting = same.lock();
            tokio::pin!(waiting);
            assert!(
                futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none(),
                "one holder of an aggregate's lock at a time"
            );
            drop(held);
            let _second = waiting.await;
        }
        assert_eq!(cache.lanes_held(), 2);
        drop(first);
        assert_eq!(cache.lanes_held(), 2, "a lane stays while anyone uses it");
        drop(same);
        drop(other);
        assert_eq!(cache.lanes_held(), 0);
    }

    #[test]
    fn entries_only_move_forward() {
        let cache = StateCache::<u32>::new(4, u32::clone);
        cache.put(&name(1), 5, 50);
        cache.put(&name(1), 3, 30);
        assert_eq!(cache.get(&name(1)), Some((5, 50)));
        cache.put(&name(1), 6, 60);
        assert_eq!(cache.get(&name(1)), Some((6, 60)));
        cache.remove(&name(1));
        assert!(cache.get(&name(1)).is_none());
        cache.put(&name(1), 2, 20);
        assert_eq!(cache.get(&name(1)), Some((2, 20)));
    }
}

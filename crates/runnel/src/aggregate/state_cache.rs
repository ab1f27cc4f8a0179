//! The optional aggregate-state cache of a [`Repository`](super::Repository): the latest
//! state this process saw of each recently used aggregate, with the revision it is at.
//!
//! An entry is a hint, never the truth: a load starting from it still reads every event
//! after its revision, and a command run on it optimistically is appended with its revision
//! as the exact expectation, so the store refuses the append if anything (another process,
//! another repository) appended since. Entries only move forward.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use runnel_core::StreamName;

pub(crate) struct StateCache<A> {
    capacity: usize,
    /// `A::clone`, kept as a pointer so the repository needs no `Clone` bound except where
    /// the cache is turned on.
    clone: fn(&A) -> A,
    entries: Mutex<Entries<A>>,
    /// One lock per aggregate with a command running in this process: commands on one
    /// aggregate take turns, each on the state the one before left, instead of racing
    /// each other into conflicts. Holds only aggregates in use (an entry goes with its
    /// last user), so it is bounded by the commands running at once.
    turns: Mutex<HashMap<StreamName, Arc<tokio::sync::Mutex<()>>>>,
}

/// A command's turn on one aggregate (see [`StateCache::turn`]); ending it lets the next
/// command on that aggregate run.
pub(crate) struct Turn<'a, A> {
    cache: &'a StateCache<A>,
    stream: StreamName,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<A> Drop for Turn<'_, A> {
    fn drop(&mut self) {
        // The guard's lock goes first, so the count below sees only the map's copy when
        // nobody else holds or waits for this aggregate.
        self.guard.take();
        let mut turns = self.cache.turns.lock().unwrap_or_else(|p| p.into_inner());
        if turns
            .get(&self.stream)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            turns.remove(&self.stream);
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
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until no other command of this process runs on `stream`, and holds that
    /// until the returned turn ends.
    pub(crate) async fn turn(&self, stream: &StreamName) -> Turn<'_, A> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(turns.entry(stream.clone()).or_default())
        };
        // The turn exists before the wait, so a caller dropped while waiting still cleans
        // up its entry.
        let mut turn = Turn {
            cache: self,
            stream: stream.clone(),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
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
    fn turns_held(&self) -> usize {
        self.turns.lock().unwrap_or_else(|p| p.into_inner()).len()
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
    async fn turns_on_one_aggregate_take_turns_and_leave_nothing_behind() {
        let cache = StateCache::<u32>::new(2, u32::clone);
        let (one, two) = (name(1), name(2));
        let first = cache.turn(&one).await;
        let other = cache.turn(&two).await;
        let waiting = cache.turn(&one);
        tokio::pin!(waiting);
        assert!(
            futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none(),
            "a second command on the same aggregate waits"
        );
        drop(first);
        let second = waiting.await;
        assert_eq!(cache.turns_held(), 2);
        drop(second);
        drop(other);
        assert_eq!(cache.turns_held(), 0);
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

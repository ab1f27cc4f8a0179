//! [`MemoryInbox`]: the in-memory [`Inbox`] for tests.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use runnel_core::StoreError;

use super::{Inbox, InboxBegin, InboxCommit, InboxError, InboxKey};
use crate::consumer::context::lock;

/// Most messages a [`MemoryInbox`] remembers (it is for tests; nothing grows unbounded).
pub const MEMORY_INBOX_ENTRIES_MAX: usize = 100_000;

/// An in-memory [`Inbox`] for tests: its scope records "effects" (strings) that become
/// visible, with the processed mark, only when the attempt commits.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    state: Mutex<MemoryInboxState>,
}

#[derive(Debug, Default)]
struct MemoryInboxState {
    processed: HashSet<InboxKey>,
    effects: Vec<String>,
}

/// The scope of a [`MemoryInbox`]: the attempt's effects, applied only on commit.
#[derive(Debug, Default)]
pub struct MemoryInboxScope {
    effects: Vec<String>,
}

impl MemoryInboxScope {
    /// Records an effect (committed with the processed mark, or not at all).
    pub fn record(&mut self, effect: impl Into<String>) {
        self.effects.push(effect.into());
    }
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every committed effect, in commit order.
    pub fn effects(&self) -> Vec<String> {
        lock(&self.state).effects.clone()
    }

    /// Whether `key` is marked processed.
    pub fn is_processed(&self, key: &InboxKey) -> bool {
        lock(&self.state).processed.contains(key)
    }

    /// How many messages are marked processed.
    pub fn processed_count(&self) -> usize {
        lock(&self.state).processed.len()
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    type Scope = MemoryInboxScope;

    async fn begin(&self, key: &InboxKey) -> Result<InboxBegin<MemoryInboxScope>, InboxError> {
        if lock(&self.state).processed.contains(key) {
            Ok(InboxBegin::AlreadyProcessed)
        } else {
            Ok(InboxBegin::Started(MemoryInboxScope::default()))
        }
    }

    async fn commit(
        &self,
        key: &InboxKey,
        scope: MemoryInboxScope,
    ) -> Result<InboxCommit, InboxError> {
        // One lock = one transaction: the check, the mark and the effects are atomic.
        let mut state = lock(&self.state);
        if state.processed.contains(key) {
            return Ok(InboxCommit::AlreadyProcessed);
        }
        if state.processed.len() >= MEMORY_INBOX_ENTRIES_MAX {
            return Err(InboxError::Store(StoreError::Backend(format!(
                "the memory inbox holds {MEMORY_INBOX_ENTRIES_MAX} messages, its limit"
            ))));
        }
        state.processed.insert(key.clone());
        state.effects.extend(scope.effects);
        Ok(InboxCommit::Committed)
    }
}

//! The name → handler table both buses keep. Each entry holds the handler twice: typed
//! (for `dispatch::<T>`, found by name and checked by type) and behind a JSON adapter (for
//! dispatch by name).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::error::DispatchError;

/// The future a JSON adapter returns.
pub(crate) type JsonFuture = BoxFuture<'static, Result<Value, DispatchError>>;

/// A handler behind its JSON adapter; `In` is what a dispatch by name carries.
pub(crate) type JsonCall<In> = Arc<dyn Fn(In) -> JsonFuture + Send + Sync>;

struct Entry<In> {
    type_name: &'static str,
    typed: Arc<dyn Any + Send + Sync>,
    json: JsonCall<In>,
}

pub(crate) struct Registry<In> {
    // Only map operations run under the lock (handlers run after it is released), so a
    // poisoned lock still guards a consistent map and is safe to keep using.
    entries: RwLock<HashMap<&'static str, Entry<In>>>,
}

impl<In> Default for Registry<In> {
    fn default() -> Self {
        Registry {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<In> Registry<In> {
    pub(crate) fn insert(
        &self,
        name: &'static str,
        type_name: &'static str,
        typed: Arc<dyn Any + Send + Sync>,
        json: JsonCall<In>,
    ) -> Result<(), DispatchError> {
        if name.is_empty() {
            return Err(DispatchError::InvalidName);
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(name) {
            return Err(DispatchError::AlreadyRegistered {
                name: name.to_string(),
            });
        }
        entries.insert(
            name,
            Entry {
                type_name,
                typed,
                json,
            },
        );
        Ok(())
    }

    /// The typed handler registered under `name`, which must be a `T`.
    pub(crate) fn typed<T: Any + Send + Sync>(
        &self,
        name: &str,
        requested: &'static str,
    ) -> Result<Arc<T>, DispatchError> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(name).ok_or_else(|| DispatchError::NoHandler {
            name: name.to_string(),
        })?;
        Arc::clone(&entry.typed)
            .downcast::<T>()
            .map_err(|_| DispatchError::TypeMismatch {
                name: name.to_string(),
                registered: entry.type_name,
                requested,
            })
    }

    /// The JSON adapter registered under `name`.
    pub(crate) fn json(&self, name: &str) -> Result<JsonCall<In>, DispatchError> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(name)
            .map(|e| Arc::clone(&e.json))
            .ok_or_else(|| DispatchError::NoHandler {
                name: name.to_string(),
            })
    }

    /// Every registered name, sorted.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&'static str> = entries.keys().copied().collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.contains_key(name)
    }
}

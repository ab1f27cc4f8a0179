//! Runnel's dedup window on Redis: [`RedisDedupStore`] implements
//! [`runnel_core::idempotency::DedupStore`] for handlers with external side effects (an
//! email, a card charge) — lock a key while the handler runs, cache its result for a TTL,
//! let concurrent duplicates see `InProgress` and later the cached result.
//!
//! See `DESIGN.md` in this crate for the keys, the scripts, the TTLs and the failure modes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runnel_core::StoreError> {
//! use std::time::Duration;
//! use runnel_core::idempotency::{DedupClaim, DedupStore};
//! use runnel_redis::{RedisDedupStore, RedisOptions};
//!
//! let dedup = RedisDedupStore::connect_with(
//!     RedisOptions::new("redis://127.0.0.1:6379").key_prefix("shop:dedup"),
//! )
//! .await?;
//! match dedup.claim("email/order-1", Duration::from_secs(30)).await? {
//!     DedupClaim::Acquired { token } => {
//!         // send the email, then cache the outcome for a day
//!         dedup
//!             .complete("email/order-1", &token, b"sent".to_vec(), Duration::from_secs(86_400))
//!             .await?;
//!     }
//!     DedupClaim::Completed { result } => { /* sent before: reuse `result` */ }
//!     DedupClaim::InProgress => { /* another consumer is on it: retry later */ }
//! }
//! # Ok(()) }
//! ```

mod error_map;
pub mod options;
mod store;

pub use options::RedisOptions;
pub use store::RedisDedupStore;

/// The Redis client, re-exported so applications use the same version.
pub use redis;

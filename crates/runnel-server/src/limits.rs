//! The server's explicit limits. Each is checked before work is done and refused with a
//! `application/problem+json` that names it.

use runnel_core::store::READ_LIMIT_MAX;
use runnel_core::StoreLimits;

/// Events (or streams) in one page when the request does not say.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// Most events (or streams) one page may hold. Below the store's own
/// [`READ_LIMIT_MAX`]: a page is rendered as one JSON body, and a thousand events of the
/// store's largest payload is already a gigabyte.
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Most live SSE subscriptions at once (each holds at most one page of events in memory).
pub const SUBSCRIBERS_MAX_DEFAULT: usize = 1024;
/// Events one SSE subscription reads from the store at a time, and so holds in memory at
/// most (besides its socket's buffers). Small: with the store's 1 MiB payload limit a
/// page is at most 64 MiB, and a subscriber of small events still catches up in few reads.
pub const SUBSCRIPTION_PAGE_EVENTS_DEFAULT: usize = 64;
/// Room in a request body for JSON syntax, ids and metadata beside the payload bytes the
/// store counts against [`StoreLimits::max_append_bytes`].
pub const BODY_OVERHEAD_BYTES: usize = 1024 * 1024;

const _: () = assert!(PAGE_LIMIT_MAX <= READ_LIMIT_MAX);

/// The limits of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes (413 beyond).
    pub body_bytes_max: usize,
    /// Most items in one page (400 beyond).
    pub page_limit_max: usize,
    /// Most open SSE subscriptions (503 beyond).
    pub subscribers_max: usize,
    /// Events an SSE subscription reads from the store at a time (its in-memory buffer).
    pub subscription_page_events: usize,
}

impl HttpLimits {
    /// Limits that fit a store's: the largest body is the largest append it accepts plus
    /// [`BODY_OVERHEAD_BYTES`], so anything the store would take fits, and nothing far
    /// bigger is read into memory.
    pub fn for_store(store: &StoreLimits) -> HttpLimits {
        HttpLimits {
            body_bytes_max: store.max_append_bytes.saturating_add(BODY_OVERHEAD_BYTES),
            page_limit_max: PAGE_LIMIT_MAX,
            subscribers_max: SUBSCRIBERS_MAX_DEFAULT,
            subscription_page_events: SUBSCRIPTION_PAGE_EVENTS_DEFAULT,
        }
    }
}

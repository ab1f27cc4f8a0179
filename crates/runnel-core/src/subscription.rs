//! Catch-up-then-live subscriptions, built once on top of any [`EventStore`].
//!
//! A subscription reads pages after its cursor until it has caught up, then waits on the
//! store's [`EventStore::wait_for_events`] and reads again. It never relies on positions
//! being contiguous: it only ever asks for "after the last position seen", and backends
//! guarantee that `read_all` never hands out a position while a lower one can still commit.
//! Memory is bounded by one page.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::position::Position;
use crate::store::{EventFilter, EventStore, EventStream, ReadStream};
use crate::stream_name::StreamName;

/// Events fetched per read while catching up.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 512;
/// Longest single wait for new events before the subscription reads again anyway (the
/// polling fallback for writes the backend cannot signal).
pub const SUBSCRIPTION_WAIT_MAX: Duration = Duration::from_millis(500);

struct AllState<S: ?Sized> {
    store: Arc<S>,
    page_events: usize,
    filter: EventFilter,
    /// Everything matching up to and including `cursor` has been handed out.
    cursor: Position,
    buffer: VecDeque<RecordedEvent>,
    done: bool,
}

/// See [`EventStore::subscribe_all`].
pub fn subscribe_all<S: EventStore + ?Sized>(
    store: Arc<S>,
    after: Position,
    filter: EventFilter,
) -> EventStream {
    subscribe_all_paged(store, after, filter, SUBSCRIPTION_PAGE_EVENTS)
}

/// [`subscribe_all`] reading at most `page_events` events per read (clamped to
/// 1..=[`SUBSCRIPTION_PAGE_EVENTS`]): what the subscription holds in memory is at most one
/// page, so a server with many subscribers of large events keeps each one's share small.
pub fn subscribe_all_paged<S: EventStore + ?Sized>(
    store: Arc<S>,
    after: Position,
    filter: EventFilter,
    page_events: usize,
) -> EventStream {
    let state = AllState {
        store,
        page_events: page_events.clamp(1, SUBSCRIPTION_PAGE_EVENTS),
        filter,
        cursor: after,
        buffer: VecDeque::new(),
        done: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Err(e) = st.filter.validate() {
            st.done = true;
            return Some((Err(e), st));
        }
        loop {
            if let Some(event) = st.buffer.pop_front() {
                debug_assert!(event.position > st.cursor, "subscription went backwards");
                st.cursor = event.position;
                return Some((Ok(event), st));
            }
            match fill_all(&mut st).await {
                Ok(()) => {}
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

async fn fill_all<S: EventStore + ?Sized>(st: &mut AllState<S>) -> Result<(), StoreError> {
    // Read the head first: if the page then comes back empty, nothing matching exists up
    // to that head and the cursor may skip to it (a filter that matches nothing must not
    // turn the wait into a busy loop).
    let head = st.store.head_position().await?;
    let page = st
        .store
        .read_all(st.cursor, &st.filter, st.page_events)
        .await?;
    if page.is_empty() {
        if head > st.cursor {
            st.cursor = head;
        }
        st.store
            .wait_for_events(st.cursor, SUBSCRIPTION_WAIT_MAX)
            .await?;
    } else {
        st.buffer.extend(page);
    }
    Ok(())
}

struct StreamState<S: ?Sized> {
    store: Arc<S>,
    page_events: usize,
    stream: StreamName,
    revision: u64,
    buffer: VecDeque<RecordedEvent>,
    done: bool,
}

/// See [`EventStore::subscribe_stream`].
pub fn subscribe_stream<S: EventStore + ?Sized>(
    store: Arc<S>,
    stream_name: StreamName,
    after_revision: u64,
) -> EventStream {
    subscribe_stream_paged(store, stream_name, after_revision, SUBSCRIPTION_PAGE_EVENTS)
}

/// [`subscribe_stream`] reading at most `page_events` events per read (clamped to
/// 1..=[`SUBSCRIPTION_PAGE_EVENTS`]).
pub fn subscribe_stream_paged<S: EventStore + ?Sized>(
    store: Arc<S>,
    stream_name: StreamName,
    after_revision: u64,
    page_events: usize,
) -> EventStream {
    let state = StreamState {
        store,
        page_events: page_events.clamp(1, SUBSCRIPTION_PAGE_EVENTS),
        stream: stream_name,
        revision: after_revision,
        buffer: VecDeque::new(),
        done: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some(event) = st.buffer.pop_front() {
                debug_assert_eq!(event.revision, st.revision + 1, "stream subscription gap");
                st.revision = event.revision;
                return Some((Ok(event), st));
            }
            let filled: Result<(), StoreError> = async {
                let head = st.store.head_position().await?;
                let page = st
                    .store
                    .read_stream(
                        &st.stream,
                        ReadStream::forward(st.page_events).from(st.revision + 1),
                    )
                    .await?;
                if page.is_empty() {
                    st.store
                        .wait_for_events(head, SUBSCRIPTION_WAIT_MAX)
                        .await?;
                } else {
                    st.buffer.extend(page);
                }
                Ok(())
            }
            .await;
            if let Err(e) = filled {
                st.done = true;
                return Some((Err(e), st));
            }
        }
    }))
}

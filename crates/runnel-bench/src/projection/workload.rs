//! What both sides of `runnel-bench projection` do: the events in `$all`, and the read
//! model each event upserts one row of (the event's stream: how many events, their summed
//! amount, the last position).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runnel::projection::{Projection, ProjectionError, Writes};
use runnel_core::projection::Dialect;
use runnel_core::{
    EventFilter, EventStore, ExpectedRevision, NewEvent, RecordedEvent, StoreError, StreamName,
};

/// The category of every benchmark event (the projection reads this one category).
pub const CATEGORY: &str = "Acct";
/// The type of every benchmark event.
pub const EVENT_TYPE: &str = "Posted";
/// Appends in flight while seeding a store through [`EventStore::append`].
const SEED_APPENDS_IN_FLIGHT: u64 = 64;

/// The amount event `k` (0-based, in append order) carries: 1..=100.
pub fn amount_of(k: u64) -> i64 {
    (k % 100) as i64 + 1
}

/// The stream event `k` of a history over `streams` streams goes to: round robin, so
/// consecutive positions belong to different streams (the read model's rows are touched
/// in no helpful order) and every stream gets its events spread over the whole history.
pub fn stream_of(k: u64, streams: u64) -> String {
    format!("{CATEGORY}-{}", k % streams.max(1))
}

/// Event `k`'s payload: a small JSON document, as an application's would be.
pub fn event_of(k: u64) -> NewEvent {
    NewEvent::json(
        EVENT_TYPE,
        &serde_json::json!({ "amount": amount_of(k), "memo": "benchmark posting" }),
    )
}

/// Reads the amount from an event's JSON payload (both sides decode it the same way).
pub fn amount_in(data: &[u8]) -> Result<i64, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Posted {
        amount: i64,
    }
    serde_json::from_slice::<Posted>(data).map(|p| p.amount)
}

/// The read model's table (same columns on both sides and both databases).
pub fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (stream TEXT PRIMARY KEY, events BIGINT NOT NULL, \
         amount BIGINT NOT NULL, last_position BIGINT NOT NULL)"
    )
}

/// The upsert each event makes: `$1` stream, `$2` amount, `$3` position.
pub fn upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (stream, events, amount, last_position) VALUES ($1, 1, $2, $3) \
         ON CONFLICT (stream) DO UPDATE SET events = {table}.events + 1, \
         amount = {table}.amount + excluded.amount, last_position = excluded.last_position"
    )
}

/// What a correct read model holds after `events` events over `streams` streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Rows (streams that got an event).
    pub rows: i64,
    /// Summed `events` column.
    pub events: i64,
    /// Summed `amount` column.
    pub amount: i64,
}

impl Totals {
    /// The totals after events `0..events`.
    pub fn expected(events: u64, streams: u64) -> Totals {
        let hundreds = events / 100;
        let rest = events % 100;
        // Each full hundred carries 1 + 2 + … + 100; the rest 1 + … + rest.
        let amount = hundreds as i64 * 5050 + (rest * (rest + 1) / 2) as i64;
        Totals {
            rows: events.min(streams) as i64,
            events: events as i64,
            amount,
        }
    }

    /// `SELECT` of the totals from `table`.
    pub fn query(table: &str) -> String {
        format!(
            "SELECT count(*), CAST(COALESCE(sum(events), 0) AS BIGINT), \
             CAST(COALESCE(sum(amount), 0) AS BIGINT) FROM {table}"
        )
    }
}

/// The benchmark's projection: one upsert per event into its own table. Each run gets a
/// fresh name (and table), so each run rebuilds from the start of `$all`.
pub struct Upserting {
    name: String,
    upsert: String,
}

impl Upserting {
    /// The projection `name`, owning the table of the same name.
    pub fn new(name: &str) -> Upserting {
        Upserting {
            name: name.to_string(),
            upsert: upsert_sql(&format!("{{{name}}}")),
        }
    }
}

impl Projection for Upserting {
    fn name(&self) -> &str {
        &self.name
    }
    fn tables(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
    fn schema(&self, _: Dialect) -> Vec<String> {
        vec![create_table_sql(&format!("{{{}}}", self.name))]
    }
    fn filter(&self) -> EventFilter {
        EventFilter::categories([CATEGORY])
    }
    fn apply(&self, event: &RecordedEvent, out: &mut Writes) -> Result<(), ProjectionError> {
        let amount = amount_in(&event.data)?;
        out.execute(
            self.upsert.clone(),
            vec![
                event.stream.as_str().into(),
                amount.into(),
                (event.position.get() as i64).into(),
            ],
        );
        Ok(())
    }
}

/// Appends events `from..to` through the store's public API, [`SEED_APPENDS_IN_FLIGHT`]
/// at a time (one event per append, so streams interleave in `$all`); `done` counts them.
pub async fn seed_appends(
    events: Arc<dyn EventStore>,
    from: u64,
    to: u64,
    streams: u64,
    done: Arc<AtomicU64>,
) -> Result<(), StoreError> {
    let next = Arc::new(AtomicU64::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEED_APPENDS_IN_FLIGHT {
        let (events, next, done) = (Arc::clone(&events), Arc::clone(&next), Arc::clone(&done));
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= to {
                    return Ok::<(), StoreError>(());
                }
                let stream = StreamName::new(stream_of(k, streams))?;
                events
                    .append(&stream, ExpectedRevision::Any, vec![event_of(k)])
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| StoreError::Backend(format!("a seeding task failed: {e}")))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_totals_add_up_the_amounts() {
        let brute = |n: u64, streams: u64| {
            let amount: i64 = (0..n).map(amount_of).sum();
            let rows = (0..n)
                .map(|k| stream_of(k, streams))
                .collect::<std::collections::HashSet<_>>()
                .len() as i64;
            Totals {
                rows,
                events: n as i64,
                amount,
            }
        };
        for (n, streams) in [
            (0, 10),
            (1, 10),
            (99, 10),
            (100, 7),
            (1234, 100),
            (250, 1000),
        ] {
            assert_eq!(
                Totals::expected(n, streams),
                brute(n, streams),
                "{n} {streams}"
            );
        }
    }

    #[test]
    fn events_carry_their_amount() {
        let event = event_of(41);
        assert_eq!(amount_in(&event.data).unwrap(), 42);
        assert_eq!(stream_of(41, 10), "Acct-1");
        assert!(amount_in(b"{\"memo\": 1}").is_err());
    }

    #[test]
    fn the_upsert_names_its_table_everywhere() {
        let sql = upsert_sql("{t}");
        assert_eq!(sql.matches("{t}").count(), 3, "{sql}");
        assert!(!upsert_sql("t").contains('{'));
    }
}

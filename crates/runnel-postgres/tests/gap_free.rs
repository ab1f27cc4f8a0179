//! Catch-up subscribers never skip an event that commits late, and never see one twice,
//! whatever the interleaving of long-running transactions (the bigserial trap).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::RngExt;
use runnel_core::{
    EventFilter, EventId, EventStore, ExpectedRevision, NewEvent, Position, StreamName,
};
use serde_json::json;

const TX_WRITERS: usize = 6;
const FAST_WRITERS: usize = 4;
const APPENDS_PER_WRITER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_subscriber_never_skips_late_commits() {
    let Some(store) = common::fresh_store().await else {
        return;
    };
    let mut subscription = Arc::clone(&store).subscribe_all(Position::START, EventFilter::all());

    let mut writers = Vec::new();
    // Writers that append inside their own transactions and hold them open for a random
    // time before committing — or rolling back.
    for w in 0..TX_WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for n in 0..APPENDS_PER_WRITER {
                let (hold_ms, roll_back) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..25u64), rng.random_range(0..10) == 0)
                };
                let stream = StreamName::new(format!("Tx-{w}x{n}")).unwrap();
                let event = NewEvent::json("TxAppended", &json!({"w": w, "n": n}));
                let id = event.id;
                let mut tx = store.pool().begin().await.unwrap();
                store
                    .append_in(&mut tx, &stream, ExpectedRevision::NoStream, vec![event])
                    .await
                    .unwrap();
                // Holding the transaction open is the point of this test.
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                if roll_back {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.push(id);
                }
            }
            committed
        }));
    }
    // Writers going through the batcher at the same time.
    for w in 0..FAST_WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for n in 0..APPENDS_PER_WRITER {
                let stream = StreamName::new(format!("Fast-{w}x{n}")).unwrap();
                let event = NewEvent::json("FastAppended", &json!({"w": w, "n": n}));
                let id = event.id;
                store
                    .append(&stream, ExpectedRevision::NoStream, vec![event])
                    .await
                    .unwrap();
                committed.push(id);
            }
            committed
        }));
    }
    let mut expected: HashSet<EventId> = HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }

    let mut seen: HashSet<EventId> = HashSet::new();
    let mut last = Position::START;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected.len() {
        let next = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .expect("subscriber saw every committed event before the deadline")
            .expect("subscription open")
            .expect("subscription event");
        assert!(
            next.position > last,
            "position order: {} after {}",
            next.position,
            last
        );
        last = next.position;
        assert!(
            expected.contains(&next.id),
            "a rolled-back or unknown event was delivered"
        );
        assert!(seen.insert(next.id), "delivered twice: {}", next.id);
    }
    assert_eq!(seen, expected);
    // Nothing more arrives: no rolled-back event shows up late.
    let extra = tokio::time::timeout(Duration::from_millis(700), subscription.next()).await;
    assert!(extra.is_err(), "unexpected extra event {extra:?}");
}

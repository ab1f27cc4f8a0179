//! The README's library example is `examples/library.rs`, verbatim, and it runs.

#[path = "../examples/library.rs"]
#[allow(dead_code)] // `main` is the example's entry point; the test calls `run`.
mod library;

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
const EXAMPLE: &str = include_str!("../examples/library.rs");

#[test]
fn readme_shows_the_checked_library_example() {
    let block = format!("```rust\n{EXAMPLE}```");
    assert!(
        README.contains(&block),
        "README.md's library example differs from examples/order-fulfillment/examples/library.rs; \
         paste the file into the README's ```rust block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_library_example_appends_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.db");
    library::run(&path)
        .await
        .expect("the README example failed");

    use runnel::core::{EventStore, ReadStream, StreamName};
    let store = runnel::sqlite::SqliteStore::open(&path).unwrap();
    let events = store
        .read_stream(
            &StreamName::new("Order-1").unwrap(),
            ReadStream::forward(10),
        )
        .await
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderShipped"]);
}

#[path = "../examples/messaging.rs"]
#[allow(dead_code)] // `main` is the example's entry point; the test calls `run`.
mod messaging;

const MESSAGING_EXAMPLE: &str = include_str!("../examples/messaging.rs");

#[test]
fn readme_shows_the_checked_messaging_example() {
    let block = format!("```rust\n{MESSAGING_EXAMPLE}```");
    assert!(
        README.contains(&block),
        "README.md's messaging example differs from examples/order-fulfillment/examples/messaging.rs; \
         paste the file into the README's ```rust block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_messaging_example_publishes_and_consumes_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let store = runnel::sqlite::SqliteStore::open(dir.path().join("orders.db")).unwrap();
    let billed = messaging::run(store.clone())
        .await
        .expect("the README messaging example failed");
    assert_eq!(
        billed, 42,
        "the consumer did not handle the published order"
    );

    // Handled and acknowledged: nothing left for the group, nothing dead-lettered.
    use runnel::core::dead_letter::{DeadLetterFilter, DeadLetterStore};
    let bus = runnel::sqlite::SqliteBus::new(store.clone(), Default::default()).unwrap();
    let backlog = bus
        .group_backlog(
            &runnel::core::TopicName::new("orders").unwrap(),
            &runnel::core::GroupName::new("billing").unwrap(),
        )
        .await
        .unwrap()
        .expect("the example created the group");
    assert_eq!(backlog.pending, 0);
    let dead = runnel::sqlite::SqliteDeadLetters::new(store)
        .count(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(dead, 0);
}

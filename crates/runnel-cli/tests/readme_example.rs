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
        "README.md's library example differs from crates/runnel-cli/examples/library.rs; \
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

    use runnel_core::{EventStore, ReadStream, StreamName};
    let store = runnel_sqlite::SqliteStore::open(&path).unwrap();
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

use std::path::Path;

use runnel::core::{EventStore, ExpectedRevision, NewEvent, ReadStream, StreamName};
use runnel::sqlite::SqliteStore;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(Path::new("orders.db")).await
}

pub async fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    // One SQLite file (created if missing); an append returns once it is fsynced.
    let store = SqliteStore::open(path)?;
    let order = StreamName::new("Order-1")?;

    // Optimistic concurrency: the first append expects no stream, the second revision 1.
    let placed = NewEvent::json("OrderPlaced", &json!({ "customer": "c-7", "total": 42 }));
    let r = store
        .append(&order, ExpectedRevision::NoStream, vec![placed])
        .await?;
    let shipped = NewEvent::json("OrderShipped", &json!({ "carrier": "ups" }));
    let expected = ExpectedRevision::Exact(r.next_expected_revision);
    store.append(&order, expected, vec![shipped]).await?;

    for event in store.read_stream(&order, ReadStream::forward(100)).await? {
        let data = event.data_json()?;
        println!(
            "{}@{} {} {data}",
            event.stream, event.revision, event.event_type
        );
    }
    Ok(())
}

use std::sync::Arc;
use std::time::Duration;

use runnel::consumer::{Consumer, HandlerContext, HandlerError};
use runnel::core::bus::Publisher;
use runnel::core::{GroupName, Message, TopicName};
use runnel::sqlite::bus::{BusOptions, SqliteBus};
use runnel::sqlite::{SqliteDeadLetters, SqliteStore};
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = run(SqliteStore::open("orders.db")?).await?;
    println!("billed {total}");
    Ok(())
}

pub async fn run(store: SqliteStore) -> Result<u64, Box<dyn std::error::Error>> {
    // The durable bus and the dead letters live in the same SQLite file as the events.
    let bus = Arc::new(SqliteBus::new(store.clone(), BusOptions::default())?);
    let orders = TopicName::new("orders")?;
    let (billed, mut bills) = mpsc::channel(16);

    // Group "billing" handles the orders one key at a time; a failure is retried with
    // backoff, then dead-lettered with its history (`runnel dlq list`).
    let consumer = Consumer::builder(bus.clone(), orders.clone(), GroupName::new("billing")?)
        .handler(move |ctx: HandlerContext| {
            let billed = billed.clone();
            async move {
                let order: serde_json::Value = ctx.json()?; // bad JSON: dead letter at once
                let _ = billed.send(order["total"].as_u64().unwrap_or(0)).await;
                Ok::<_, HandlerError>(())
            }
        })
        .dead_letters(Arc::new(SqliteDeadLetters::new(store)))
        .start()
        .await?;

    let placed = Message::json("OrderPlaced", &json!({ "total": 42 })).with_key("Order-1");
    bus.publish(&orders, vec![placed]).await?; // returns once fsynced
    let total = tokio::time::timeout(Duration::from_secs(10), bills.recv()).await?;
    consumer.shutdown(Duration::from_secs(5)).await?;
    Ok(total.unwrap_or(0))
}

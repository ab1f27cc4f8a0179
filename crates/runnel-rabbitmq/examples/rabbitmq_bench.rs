//! Publish and end-to-end rates of 256-byte messages: Runnel's RabbitMQ transport beside
//! the bare lapin client doing the same work with the same durability (persistent
//! messages, publisher confirms awaited per batch, a topic exchange bound to a quorum
//! queue and the topic's retention stream, manual acks).
//!
//! `cargo run --release -p runnel-rabbitmq --example rabbitmq_bench -- amqp://guest:guest@127.0.0.1:5672/%2f [messages]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use runnel_core::bus::{Publisher, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_rabbitmq::topology::{dead_letter_queue_name, group_queue_name, stream_name};
use runnel_rabbitmq::RabbitBus;

const PAYLOAD_BYTES: usize = 256;
const BATCH: usize = 100;
const KEYS: usize = 64;
const MESSAGES_DEFAULT: usize = 20_000;
const MAX_IN_FLIGHT: usize = 256;
const ROUNDS: usize = 3;
const E2E_DEADLINE: Duration = Duration::from_secs(600);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn message(n: usize) -> Message {
    let mut m =
        Message::json("BenchEvent", &serde_json::Value::Null).with_key(format!("key-{}", n % KEYS));
    m.content_type = "application/octet-stream".into();
    m.payload = vec![b'x'; PAYLOAD_BYTES];
    m
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.to_string()))
}

/// The bare client's topology: what Runnel declares for a topic and one group.
async fn bare_topology(
    conn: &Connection,
    exchange: &str,
    queue: &str,
    stream: &str,
) -> Result<(), Error> {
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange,
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let mut q = FieldTable::default();
    q.insert("x-queue-type".into(), text("quorum"));
    q.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        q,
    )
    .await?;
    ch.queue_bind(
        queue,
        exchange,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut s = FieldTable::default();
    s.insert("x-queue-type".into(), text("stream"));
    s.insert("x-max-age".into(), text("3600s"));
    ch.queue_declare(
        stream,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        s,
    )
    .await?;
    ch.queue_bind(
        stream,
        exchange,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

async fn bare_publish(conn: &Connection, exchange: &str, count: usize) -> Result<(), Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; PAYLOAD_BYTES];
    let mut n = 0;
    while n < count {
        let mut confirms = Vec::with_capacity(BATCH);
        for i in n..(n + BATCH).min(count) {
            // The same CloudEvents headers Runnel writes (binary mode), built by hand.
            let mut headers = FieldTable::default();
            let id = runnel_core::uuid::Uuid::now_v7().to_string();
            let time = runnel_core::chrono::Utc::now().to_rfc3339();
            let key = format!("key-{}", i % KEYS);
            for (k, v) in [
                ("cloudEvents:specversion", "1.0"),
                ("cloudEvents:id", id.as_str()),
                ("cloudEvents:type", "BenchEvent"),
                ("cloudEvents:source", "urn:runnel"),
                ("event-type", "BenchEvent"),
                ("event-id", id.as_str()),
                ("cloudEvents:partitionkey", key.as_str()),
                ("cloudEvents:time", time.as_str()),
            ] {
                headers.insert(k.into(), text(v));
            }
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/octet-stream".into())
                .with_message_id(id.as_str().into())
                .with_headers(headers);
            confirms.push(
                ch.basic_publish(
                    exchange,
                    "BenchEvent",
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        for c in confirms {
            let c = c.await?;
            assert!(c.is_ack(), "negative confirm");
        }
        n += BATCH;
    }
    Ok(())
}

async fn runnel_publish(bus: &RabbitBus, topic: &TopicName, count: usize) -> Result<(), Error> {
    let mut n = 0;
    while n < count {
        let batch: Vec<Message> = (n..(n + BATCH).min(count)).map(message).collect();
        bus.publish(topic, batch).await?;
        n += BATCH;
    }
    Ok(())
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn row(what: &str, runnel: f64, bare: f64) {
    println!(
        "{what:<28} runnel {runnel:>10.0} msg/s   bare lapin {bare:>10.0} msg/s   ratio {:.2}x",
        runnel / bare
    );
}

async fn delete_queues(conn: &Connection, queues: &[String]) -> Result<(), Error> {
    let ch = conn.create_channel().await?;
    for q in queues {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    let _ = ch.close(200, "cleaned").await;
    Ok(())
}

fn fresh(what: &str) -> Result<(TopicName, GroupName), Error> {
    let suffix = runnel_core::uuid::Uuid::now_v7().simple().to_string();
    Ok((
        TopicName::new(format!("bench.{what}.{suffix}"))?,
        GroupName::new(format!("bench-{what}-{suffix}"))?,
    ))
}

fn runnel_queues(topic: &TopicName, group: &GroupName) -> Vec<String> {
    vec![
        group_queue_name(topic, group),
        stream_name(topic),
        dead_letter_queue_name(topic, group),
    ]
}

fn bare_names() -> (String, String, String) {
    let suffix = runnel_core::uuid::Uuid::now_v7().simple().to_string();
    (
        format!("bench-bare:{suffix}"),
        format!("bench-bare:{suffix}:q"),
        format!("bench-bare:{suffix}:s"),
    )
}

async fn runnel_publish_rate(url: &str, conn: &Connection, count: usize) -> Result<f64, Error> {
    let bus = runnel_rabbitmq::connect(&format!("{url}?retention=1h")).await?;
    let (topic, group) = fresh("pub")?;
    // A group so messages are queued (the work a real topic does).
    drop(
        bus.subscribe(&topic, &group, SubscribeOptions::default())
            .await?,
    );
    let t = Instant::now();
    runnel_publish(&bus, &topic, count).await?;
    let r = rate(count, t.elapsed());
    bus.close().await;
    delete_queues(conn, &runnel_queues(&topic, &group)).await?;
    Ok(r)
}

async fn bare_publish_rate(conn: &Connection, count: usize) -> Result<f64, Error> {
    let (x, q, s) = bare_names();
    bare_topology(conn, &x, &q, &s).await?;
    let t = Instant::now();
    bare_publish(conn, &x, count).await?;
    let r = rate(count, t.elapsed());
    delete_queues(conn, &[q, s]).await?;
    Ok(r)
}

async fn runnel_e2e_rate(url: &str, conn: &Connection, count: usize) -> Result<f64, Error> {
    let bus = runnel_rabbitmq::connect(&format!("{url}?retention=1h")).await?;
    let sub_bus = runnel_rabbitmq::connect(&format!("{url}?retention=1h")).await?;
    let (topic, group) = fresh("e2e")?;
    let mut stream = sub_bus
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                max_in_flight: MAX_IN_FLIGHT,
                ..Default::default()
            },
        )
        .await?;
    let t = Instant::now();
    let publishing = {
        let bus = Arc::clone(&bus);
        let topic = topic.clone();
        tokio::spawn(async move {
            runnel_publish(&bus, &topic, count)
                .await
                .map_err(|e| e.to_string())
        })
    };
    let consuming = async {
        let mut done = 0;
        while done < count {
            let d = stream.next().await.ok_or("stream ended")??;
            std::hint::black_box(&d.message.payload);
            d.ack().await?;
            done += 1;
        }
        Ok::<(), Error>(())
    };
    tokio::time::timeout(E2E_DEADLINE, consuming)
        .await
        .map_err(|_| "runnel e2e deadline")??;
    publishing.await?.map_err(|e| -> Error { e.into() })?;
    let r = rate(count, t.elapsed());
    drop(stream);
    bus.close().await;
    sub_bus.close().await;
    delete_queues(conn, &runnel_queues(&topic, &group)).await?;
    Ok(r)
}

async fn bare_e2e_rate(url: &str, conn: &Connection, count: usize) -> Result<f64, Error> {
    let (x, q, s) = bare_names();
    bare_topology(conn, &x, &q, &s).await?;
    let conn2 = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn2.create_channel().await?;
    ch.basic_qos((MAX_IN_FLIGHT * 2) as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            &q,
            "bench",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let t = Instant::now();
    let publishing = {
        let url = url.to_string();
        let x = x.clone();
        tokio::spawn(async move {
            let c = Connection::connect(&url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let r = bare_publish(&c, &x, count).await.map_err(|e| e.to_string());
            let _ = c.close(200, "done").await;
            r
        })
    };
    let consuming = async {
        let mut done = 0;
        while done < count {
            let d = consumer.next().await.ok_or("consumer ended")??;
            std::hint::black_box(&d.data);
            d.acker.ack(BasicAckOptions::default()).await?;
            done += 1;
        }
        Ok::<(), Error>(())
    };
    tokio::time::timeout(E2E_DEADLINE, consuming)
        .await
        .map_err(|_| "bare e2e deadline")??;
    publishing.await?.map_err(|e| -> Error { e.into() })?;
    let r = rate(count, t.elapsed());
    let _ = conn2.close(200, "done").await;
    delete_queues(conn, &[q, s]).await?;
    Ok(r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let count: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MESSAGES_DEFAULT);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let (mut rp, mut bp, mut re, mut be) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Rounds alternate which side goes first, so a busy moment on the shared machine
    // does not always fall on the same side; medians are reported.
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            bp.push(bare_publish_rate(&conn, count).await?);
            rp.push(runnel_publish_rate(&url, &conn, count).await?);
            be.push(bare_e2e_rate(&url, &conn, count).await?);
            re.push(runnel_e2e_rate(&url, &conn, count).await?);
        } else {
            rp.push(runnel_publish_rate(&url, &conn, count).await?);
            bp.push(bare_publish_rate(&conn, count).await?);
            re.push(runnel_e2e_rate(&url, &conn, count).await?);
            be.push(bare_e2e_rate(&url, &conn, count).await?);
        }
        eprintln!(
            "round {round}: publish runnel {:.0} bare {:.0}; e2e runnel {:.0} bare {:.0}",
            rp[round], bp[round], re[round], be[round]
        );
    }
    println!(
        "RabbitMQ 3.10, {count} messages of {PAYLOAD_BYTES} bytes, {KEYS} keys, batches of {BATCH}, \
         persistent + confirms, quorum queue + retention stream, max_in_flight {MAX_IN_FLIGHT}; \
         median of {ROUNDS} alternating rounds"
    );
    row("publish", median(rp), median(bp));
    row("end to end (pub->ack)", median(re), median(be));
    println!("peak RSS {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

//! Throughput of the Kafka transport beside the bare rdkafka client doing the same work
//! with the same durability settings (idempotent producer, acks=all, manual commits).
//!
//! ```text
//! cargo run --release -p runnel-kafka --example kafka_bench -- kafka://127.0.0.1:9092 [messages]
//! ```
//!
//! * publish: `messages` 256-byte keyed messages in batches of 1000, each batch awaited
//!   (acknowledged by the broker) before the next; the bare client sends the same
//!   CloudEvents binary-mode records (same headers, built per record);
//! * end to end: the same publish running while one consumer receives, handles (a
//!   no-op) and acks every message; timed until the last one is acked and its offset
//!   committed. Runnel consumes through its `Subscriber` (per-key order, contiguous
//!   commits); the bare client consumes in order and commits asynchronously.
//!
//! Prints each rate, the ratio Runnel / bare, and the process's peak RSS (VmHWM).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_kafka::{KafkaBus, KafkaOptions};

const PAYLOAD_BYTES: usize = 256;
const BATCH: usize = 1000;
const KEYS: usize = 256;
const MESSAGES_DEFAULT: usize = 50_000;
const DEADLINE: Duration = Duration::from_secs(300);
const BARE_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn payload() -> Vec<u8> {
    vec![b'x'; PAYLOAD_BYTES]
}

fn runnel_messages(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = Message::json("Benched", &serde_json::Value::Null)
                .with_key(format!("key-{}", i % KEYS));
            m.content_type = "application/octet-stream".into();
            m.payload = payload();
            m
        })
        .collect()
}

fn fresh(what: &str) -> String {
    format!("bench.{what}.{}", uuid::Uuid::now_v7().simple())
}

async fn runnel_publish(bus: &KafkaBus, topic: &TopicName, messages: Vec<Message>) -> Result<()> {
    let mut rest = messages;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(BATCH));
        bus.publish(topic, rest).await?;
        rest = tail;
    }
    Ok(())
}

fn bare_producer(options: &KafkaOptions) -> Result<FutureProducer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", options.linger.as_millis().to_string())
        .set("partitioner", "murmur2_random");
    Ok(c.create()?)
}

async fn bare_publish(producer: &FutureProducer, topic: &str, n: usize) -> Result<()> {
    let body = payload();
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let mut pending = Vec::with_capacity(end - i);
        for j in i..end {
            let key = format!("key-{}", j % KEYS);
            // The same CloudEvents binary-mode record a hand-written producer would send.
            let id = uuid::Uuid::now_v7().to_string();
            let time = runnel_core::chrono::Utc::now().to_rfc3339();
            let headers = [
                ("ce_specversion", "1.0"),
                ("ce_id", id.as_str()),
                ("ce_type", "Benched"),
                ("ce_source", "urn:bench"),
                ("content-type", "application/octet-stream"),
                ("event-type", "Benched"),
                ("event-id", id.as_str()),
                ("ce_partitionkey", key.as_str()),
                ("ce_time", time.as_str()),
            ]
            .iter()
            .fold(OwnedHeaders::new_with_capacity(9), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            let mut record = FutureRecord::to(topic)
                .key(&key)
                .payload(&body)
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        for f in pending {
            f.await?.map_err(|(e, _)| e)?;
        }
        i = end;
    }
    Ok(())
}

async fn bare_consume(options: &KafkaOptions, topic: &str, n: usize) -> Result<()> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.brokers)
        .set("group.id", fresh("bare-group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    let consumer: StreamConsumer = c.create()?;
    consumer.subscribe(&[topic])?;
    let mut positions: std::collections::HashMap<i32, i64> = Default::default();
    let mut last_commit = Instant::now();
    let commit = |positions: &std::collections::HashMap<i32, i64>, mode| -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
        }
        if tpl.count() > 0 {
            consumer.commit(&tpl, mode)?;
        }
        Ok(())
    };
    for _ in 0..n {
        let m = consumer.recv().await?;
        std::hint::black_box(m.payload());
        positions.insert(m.partition(), m.offset() + 1);
        if last_commit.elapsed() >= BARE_COMMIT_INTERVAL {
            commit(&positions, CommitMode::Async)?;
            last_commit = Instant::now();
        }
    }
    commit(&positions, CommitMode::Sync)?;
    Ok(())
}

async fn runnel_consume(bus: &KafkaBus, topic: &TopicName, n: usize) -> Result<()> {
    let mut stream = bus
        .subscribe(
            topic,
            &GroupName::new(fresh("runnel-group").replace("bench.", ""))?,
            SubscribeOptions {
                max_in_flight: 1000,
                ack_timeout: Duration::from_secs(60),
                start: StartPosition::Earliest,
                ..Default::default()
            },
        )
        .await?;
    for _ in 0..n {
        let d = stream.next().await.ok_or("the subscription ended")??;
        std::hint::black_box(&d.message.payload);
        d.ack().await?;
    }
    // Dropping the stream commits what was acked before leaving the group.
    drop(stream);
    Ok(())
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn row(name: &str, runnel: f64, bare: f64) {
    println!(
        "{name:<28} runnel {runnel:>10.0} msg/s   bare rdkafka {bare:>10.0} msg/s   ratio {:.2}x",
        runnel / bare
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "kafka://127.0.0.1:9092".to_string());
    let n: usize = match args.next() {
        Some(v) => v.parse()?,
        None => MESSAGES_DEFAULT,
    };
    let options = KafkaOptions::from_url(&url)?;
    let bus = Arc::new(KafkaBus::new(options.clone())?);
    let producer = bare_producer(&options)?;
    println!(
        "kafka bench: {n} messages of {PAYLOAD_BYTES} bytes, {KEYS} keys, batches of {BATCH}, {} partitions",
        options.partitions
    );

    // Warm-up: connections, metadata.
    let warm = TopicName::new(fresh("warm"))?;
    runnel_publish(&bus, &warm, runnel_messages(BATCH)).await?;
    bus.ensure_topic(&warm).await?;
    bare_publish(&producer, warm.as_str(), BATCH).await?;

    // Publish.
    let t = TopicName::new(fresh("pub-runnel"))?;
    bus.ensure_topic(&t).await?;
    let messages = runnel_messages(n);
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, runnel_publish(&bus, &t, messages)).await??;
    let runnel_pub = rate(n, started.elapsed());
    let t = TopicName::new(fresh("pub-bare"))?;
    bus.ensure_topic(&t).await?;
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, bare_publish(&producer, t.as_str(), n)).await??;
    let bare_pub = rate(n, started.elapsed());

    // End to end.
    let t = TopicName::new(fresh("e2e-runnel"))?;
    bus.ensure_topic(&t).await?;
    let messages = runnel_messages(n);
    let started = Instant::now();
    let consuming = {
        let (bus, t) = (bus.clone(), t.clone());
        tokio::spawn(async move { runnel_consume(&bus, &t, n).await })
    };
    tokio::time::timeout(DEADLINE, runnel_publish(&bus, &t, messages)).await??;
    tokio::time::timeout(DEADLINE, consuming).await???;
    let runnel_e2e = rate(n, started.elapsed());

    let t = TopicName::new(fresh("e2e-bare"))?;
    bus.ensure_topic(&t).await?;
    let started = Instant::now();
    let consuming = {
        let (options, t) = (options.clone(), t.to_string());
        tokio::spawn(async move { bare_consume(&options, &t, n).await })
    };
    tokio::time::timeout(DEADLINE, bare_publish(&producer, t.as_str(), n)).await??;
    tokio::time::timeout(DEADLINE, consuming).await???;
    let bare_e2e = rate(n, started.elapsed());

    row("publish", runnel_pub, bare_pub);
    row("end to end (pub→ack→commit)", runnel_e2e, bare_e2e);
    println!("peak RSS (VmHWM): {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

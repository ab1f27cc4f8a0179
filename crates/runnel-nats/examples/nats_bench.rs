//! Publish and end-to-end throughput of the NATS transport beside the bare async-nats
//! client doing the same work with the same durability (file-backed stream, every publish
//! acknowledged by JetStream, `Nats-Msg-Id` set, explicit acks on a durable pull
//! consumer), 256-byte payloads.
//!
//! ```text
//! cargo run --release -p runnel-nats --example nats_bench -- nats://127.0.0.1:4222
//! ```
//! `BENCH_MESSAGES` sets the messages per scenario (default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_nats::NatsBus;

const PAYLOAD_BYTES: usize = 256;
const BATCH: usize = 1000;
const MAX_IN_FLIGHT: usize = 1000;
const KEYS: usize = 64;
const DEADLINE: Duration = Duration::from_secs(300);
/// Rounds of every scenario (best one reported).
const ROUNDS: usize = 3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn runnel_message(n: usize, keyed: bool) -> Message {
    let mut m = Message::json("BenchTested", &serde_json::Value::Null);
    m.content_type = "application/octet-stream".into();
    m.payload = vec![b'x'; PAYLOAD_BYTES];
    m.time = None;
    if keyed {
        m = m.with_key(format!("key-{}", n % KEYS));
    }
    m
}

async fn bare_stream(js: &jetstream::Context, name: &str, subject: &str) -> Result<(), BoxError> {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        storage: stream::StorageType::File,
        duplicate_window: runnel_nats::DUPLICATE_WINDOW_DEFAULT,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The bare client's publish loop; with `cloudevents_headers` it also sends the headers
/// Runnel's CloudEvents binding adds (to show what the binding itself costs).
async fn bare_publish_with(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    cloudevents_headers: bool,
) -> Result<(), BoxError> {
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(n - sent) {
            let id = uuid::Uuid::now_v7().to_string();
            let mut publish = jetstream::message::PublishMessage::build().payload(payload.clone());
            if cloudevents_headers {
                publish = publish.headers(runnel_nats::to_headers(&runnel_message(sent, false))?);
            } else {
                publish = publish.message_id(id);
            }
            acks.push(js.send_publish(subject.to_string(), publish).await?);
            sent += 1;
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

async fn runnel_publish(
    bus: &NatsBus,
    topic: &TopicName,
    n: usize,
    keyed: bool,
) -> Result<(), BoxError> {
    let mut sent = 0;
    while sent < n {
        let batch: Vec<Message> = (sent..(sent + BATCH).min(n))
            .map(|i| runnel_message(i, keyed))
            .collect();
        sent += batch.len();
        bus.publish(topic, batch).await?;
    }
    Ok(())
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn bare_publish_rate(
    js: &jetstream::Context,
    n: usize,
    cloudevents_headers: bool,
) -> Result<f64, BoxError> {
    let s = suffix();
    let (name, subject) = (format!("BENCH_BARE_{s}"), format!("bench.bare.{s}"));
    bare_stream(js, &name, &subject).await?;
    let t = Instant::now();
    bare_publish_with(js, &subject, n, cloudevents_headers).await?;
    let r = rate(n, t.elapsed());
    js.delete_stream(&name).await?;
    Ok(r)
}

async fn runnel_publish_rate(
    bus: &NatsBus,
    js: &jetstream::Context,
    n: usize,
    keyed: bool,
) -> Result<f64, BoxError> {
    let topic = TopicName::new(format!("bench.runnel.{}", suffix()))?;
    bus.ensure_stream(&topic).await?;
    let t = Instant::now();
    runnel_publish(bus, &topic, n, keyed).await?;
    let r = rate(n, t.elapsed());
    js.delete_stream(bus.stream_name(&topic)).await?;
    Ok(r)
}

async fn bare_end_to_end(
    js: &jetstream::Context,
    n: usize,
    cloudevents_headers: bool,
) -> Result<f64, BoxError> {
    let s = suffix();
    let (name, subject) = (format!("BENCH_BARE_{s}"), format!("bench.bare.{s}"));
    bare_stream(js, &name, &subject).await?;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&name)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(MAX_IN_FLIGHT)
        .messages()
        .await?;
    let handler = tokio::spawn(async move {
        let mut done = 0;
        while done < n {
            match messages.next().await {
                Some(Ok(m)) => {
                    m.ack().await?;
                    done += 1;
                }
                Some(Err(e)) => return Err::<(), BoxError>(e.into()),
                None => return Err("the bare consumer ended".into()),
            }
        }
        Ok(())
    });
    let t = Instant::now();
    bare_publish_with(js, &subject, n, cloudevents_headers).await?;
    tokio::time::timeout(DEADLINE, handler).await???;
    let r = rate(n, t.elapsed());
    js.delete_stream(&name).await?;
    Ok(r)
}

async fn runnel_end_to_end(
    publisher: &NatsBus,
    subscriber: &NatsBus,
    js: &jetstream::Context,
    n: usize,
    keyed: bool,
) -> Result<f64, BoxError> {
    let topic = TopicName::new(format!("bench.runnel.{}", suffix()))?;
    let group = GroupName::new("bench")?;
    let mut deliveries = subscriber
        .subscribe(
            &topic,
            &group,
            SubscribeOptions {
                max_in_flight: MAX_IN_FLIGHT,
                ack_timeout: Duration::from_secs(30),
                start: StartPosition::Latest,
                ..Default::default()
            },
        )
        .await?;
    let handler = tokio::spawn(async move {
        let mut done = 0;
        while done < n {
            match deliveries.next().await {
                Some(Ok(d)) => {
                    d.ack().await?;
                    done += 1;
                }
                Some(Err(e)) => return Err::<(), BoxError>(e.into()),
                None => return Err("the Runnel subscription ended".into()),
            }
        }
        Ok(())
    });
    let t = Instant::now();
    runnel_publish(publisher, &topic, n, keyed).await?;
    tokio::time::timeout(DEADLINE, handler).await???;
    let r = rate(n, t.elapsed());
    js.delete_stream(publisher.stream_name(&topic)).await?;
    Ok(r)
}

fn row(what: &str, subject: &str, rate: f64, bare: f64) {
    println!(
        "{what:<36} {subject:<12} {rate:>9.0} msg/s   bare async-nats {bare:>9.0} msg/s   ratio {:.2}x",
        rate / bare
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let options = runnel_nats::NatsOptions::from_url(&url)?;
    let publisher = NatsBus::connect(options.clone()).await?;
    let subscriber = Arc::new(NatsBus::connect(options.clone()).await?);
    let bare = async_nats::connect(format!("nats://{}", options.servers[0])).await?;
    let js = jetstream::new(bare);

    println!(
        "NATS JetStream, {n} messages of {PAYLOAD_BYTES} bytes per scenario, file storage, \
         publish acks awaited, explicit acks (batches of {BATCH}, max_in_flight {MAX_IN_FLIGHT}); \
         best of {ROUNDS} interleaved rounds"
    );
    // Warm-up: streams, connections, allocator.
    bare_publish_rate(&js, 2_000, false).await?;
    runnel_publish_rate(&publisher, &js, 2_000, false).await?;

    // The machine is shared: every scenario runs ROUNDS times, interleaved, and the best
    // round of each is reported (the least disturbed one).
    let mut best = [0f64; 8];
    for _ in 0..ROUNDS {
        let round = [
            bare_publish_rate(&js, n, false).await?,
            runnel_publish_rate(&publisher, &js, n, false).await?,
            runnel_publish_rate(&publisher, &js, n, true).await?,
            bare_publish_rate(&js, n, true).await?,
            bare_end_to_end(&js, n, false).await?,
            bare_end_to_end(&js, n, true).await?,
            runnel_end_to_end(&publisher, &subscriber, &js, n, false).await?,
            runnel_end_to_end(&publisher, &subscriber, &js, n, true).await?,
        ];
        for (b, r) in best.iter_mut().zip(round) {
            *b = b.max(r);
        }
    }
    let [bare_pub, runnel_pub, runnel_pub_keyed, bare_pub_ce, bare_e2e, bare_e2e_ce, runnel_e2e, runnel_e2e_keyed] =
        best;
    row("publish (keyless)", "runnel", runnel_pub, bare_pub);
    row(
        &format!("publish ({KEYS} ordering keys)"),
        "runnel",
        runnel_pub_keyed,
        bare_pub,
    );
    row(
        "publish, CloudEvents headers",
        "bare+headers",
        bare_pub_ce,
        bare_pub,
    );
    row("end to end (keyless)", "runnel", runnel_e2e, bare_e2e);
    row(
        &format!("end to end ({KEYS} keys, key order)"),
        "runnel",
        runnel_e2e_keyed,
        bare_e2e,
    );
    row(
        "end to end, CloudEvents headers",
        "bare+headers",
        bare_e2e_ce,
        bare_e2e,
    );
    println!("peak RSS {} KiB", peak_rss_kib());
    Ok(())
}

//! Publish and end-to-end throughput of Runnel's SNS/SQS transport beside the bare AWS SDK
//! doing the same work (same FIFO topic/queue setup, same 256-byte bodies, one message
//! group per key, publish in batches of 10, consume with long polling and delete after
//! handling), printed side by side with the ratio and the process's peak RSS.
//!
//! ```text
//! cargo run --release -p runnel-sqs --example sqs_bench -- 'sqs://test:test@us-east-1?endpoint=http://127.0.0.1:4566&wait=1s' [MESSAGES]
//! ```
//!
//! Both consumers long-poll with the URL's `wait`. On moto use `wait=1s`:
//! moto keeps a FIFO queue's in-flight groups as they were when a long poll started, so a
//! key unblocked by an ack is served only by the next poll (see DESIGN.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use futures_util::StreamExt;
use runnel_core::bus::{Publisher, StartPosition, SubscribeOptions, Subscriber};
use runnel_core::{GroupName, Message, TopicName};
use runnel_sqs::codec;

const PAYLOAD_BYTES: usize = 256;
const KEYS: usize = 64;
const MESSAGES_DEFAULT: usize = 2000;
/// Messages per Runnel publish call (Runnel splits it into PublishBatch calls of 10).
const PUBLISH_CALL: usize = 100;
const MAX_IN_FLIGHT: usize = 64;
const DEADLINE: Duration = Duration::from_secs(300);

fn message(n: usize) -> Message {
    let mut m =
        Message::json("Benchmarked", &serde_json::json!({})).with_key(format!("key-{}", n % KEYS));
    m.content_type = "text/plain".into();
    m.payload = vec![b'x'; PAYLOAD_BYTES];
    m
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

fn fresh(what: &str) -> (TopicName, GroupName) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (
        TopicName::new(format!("bench.{what}.{id}")).expect("topic"),
        GroupName::new(format!("bench-{id}")).expect("group"),
    )
}

/// Bare SDK: the same encoded messages, PublishBatch of 10, sequentially.
async fn bare_publish(bus: &runnel_sqs::SqsBus, topic_arn: &str, messages: &[Message]) {
    use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
    let sns = bare_sns(bus);
    for chunk in messages.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let w = codec::encode(m, &runnel_core::envelope::Envelope::CloudEvents)
                    .expect("encode");
                let mut e = PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(w.body)
                    .message_group_id(w.group_id)
                    .message_deduplication_id(w.deduplication_id);
                for (k, v) in w.attributes {
                    e = e.message_attributes(
                        k,
                        MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(v)
                            .build()
                            .expect("attribute"),
                    );
                }
                e.build().expect("entry")
            })
            .collect();
        sns.publish_batch()
            .topic_arn(topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .expect("bare publish");
    }
}

fn sdk_parts(url: &str) -> (String, Option<String>) {
    let o = runnel_sqs::SqsOptions::from_url(url).expect("url");
    (o.region, o.endpoint)
}

static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A bare SNS client with the same region, endpoint and HTTP stack as the bus.
fn bare_sns(_bus: &runnel_sqs::SqsBus) -> aws_sdk_sns::Client {
    let (region, endpoint) = sdk_parts(URL.get().expect("url"));
    let mut c = aws_sdk_sns::Config::builder()
        .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
        .region(aws_sdk_sns::config::Region::new(region))
        .credentials_provider(aws_sdk_sns::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .http_client(http());
    if let Some(e) = endpoint {
        c = c.endpoint_url(e);
    }
    aws_sdk_sns::Client::from_conf(c.build())
}

fn bare_sqs() -> aws_sdk_sqs::Client {
    let (region, endpoint) = sdk_parts(URL.get().expect("url"));
    let mut c = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(region))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .http_client(http());
    if let Some(e) = endpoint {
        c = c.endpoint_url(e);
    }
    aws_sdk_sqs::Client::from_conf(c.build())
}

fn http() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Bare SDK consumer: long-poll 10 at a time, delete the batch after "handling".
async fn bare_consume(
    queue_url: String,
    expected: usize,
    done: Arc<AtomicUsize>,
    wait_seconds: i32,
) {
    let sqs = bare_sqs();
    while done.load(Ordering::SeqCst) < expected {
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_seconds)
            .visibility_timeout(30)
            .message_attribute_names("All")
            .send()
            .await
            .expect("bare receive");
        let msgs = out.messages();
        if msgs.is_empty() {
            continue;
        }
        let entries: Vec<_> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("entry")
            })
            .collect();
        let n = entries.len();
        sqs.delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("bare delete");
        done.fetch_add(n, Ordering::SeqCst);
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "sqs://test:test@us-east-1?endpoint=http://127.0.0.1:4566".into());
    let n: usize = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES_DEFAULT);
    URL.set(url.clone()).expect("set once");
    let bus = runnel_sqs::connect(&url).expect("connect");
    let messages: Vec<Message> = (0..n).map(message).collect();

    // Publish: Runnel. The publish scenarios measure SNS accepting the messages on topics
    // without subscriptions (moto delivers to subscribed queues synchronously, inside the
    // publish call, at a cost growing with the queue depth; AWS fans out asynchronously).
    // The end-to-end scenarios below include the delivery to a group queue.
    let (topic, _) = fresh("pub");
    bus.ensure_topic(&topic).await.expect("topic");
    let start = Instant::now();
    for chunk in messages.chunks(PUBLISH_CALL) {
        bus.publish(&topic, chunk.to_vec()).await.expect("publish");
    }
    let runnel_pub = rate(n, start.elapsed());
    // Publish: bare SDK.
    let (topic, _) = fresh("pubbare");
    let arn = bus.ensure_topic(&topic).await.expect("topic");
    let start = Instant::now();
    bare_publish(&bus, &arn, &messages).await;
    let bare_pub = rate(n, start.elapsed());

    // End to end: Runnel publisher + subscriber, ack after handling.
    let (topic, group) = fresh("e2e");
    let mut stream = bus
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
        .await
        .expect("subscribe");
    let start = Instant::now();
    let publisher = bus.clone();
    let to_publish = messages.clone();
    let t = topic.clone();
    let pub_task = tokio::spawn(async move {
        for chunk in to_publish.chunks(PUBLISH_CALL) {
            publisher
                .publish(&t, chunk.to_vec())
                .await
                .expect("publish");
        }
    });
    let acked = Arc::new(AtomicUsize::new(0));
    let mut acks = futures_util::stream::FuturesUnordered::new();
    while acked.load(Ordering::SeqCst) < n {
        assert!(start.elapsed() < DEADLINE, "end-to-end run took too long");
        tokio::select! {
            Some(d) = stream.next() => {
                let d = d.expect("delivery");
                let acked = acked.clone();
                acks.push(async move {
                    d.ack().await.expect("ack");
                    acked.fetch_add(1, Ordering::SeqCst);
                });
            }
            Some(()) = acks.next(), if !acks.is_empty() => {}
        }
    }
    let runnel_e2e = rate(n, start.elapsed());
    pub_task.await.expect("publisher task");
    drop(stream);

    // End to end: bare SDK publisher + consumer.
    let (topic, group) = fresh("e2ebare");
    let queue_url = bus
        .provision_group(&topic, &group, StartPosition::Latest)
        .await
        .expect("provision");
    let arn = bus.ensure_topic(&topic).await.expect("topic");
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let consumer = tokio::spawn(bare_consume(
        queue_url,
        n,
        done.clone(),
        bus.options().wait_seconds as i32,
    ));
    bare_publish(&bus, &arn, &messages).await;
    tokio::time::timeout(DEADLINE, consumer)
        .await
        .expect("bare consumer in time")
        .expect("bare consumer");
    let bare_e2e = rate(n, start.elapsed());

    println!(
        "runnel-sqs bench: {n} messages of {PAYLOAD_BYTES} bytes, {KEYS} keys, {url_shown}",
        url_shown = bus
            .options()
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS".into())
    );
    println!(
        "{:<28} {:>12} {:>12} {:>7}",
        "scenario", "runnel/s", "bare/s", "ratio"
    );
    println!(
        "{:<28} {:>12.0} {:>12.0} {:>7.2}",
        "publish (SNS FIFO)",
        runnel_pub,
        bare_pub,
        runnel_pub / bare_pub
    );
    println!(
        "{:<28} {:>12.0} {:>12.0} {:>7.2}",
        "end-to-end (publish->ack)",
        runnel_e2e,
        bare_e2e,
        runnel_e2e / bare_e2e
    );
    println!("peak RSS: {} KiB", peak_rss_kib());
}

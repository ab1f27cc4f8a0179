//! The broker objects behind topics and groups, their names and their declarations.
//!
//! | Runnel | RabbitMQ |
//! |---|---|
//! | topic `t` | durable topic exchange `runnel:t` |
//! | retention of `t` (for `Earliest`) | stream queue `runnel:t:$retained` bound to it |
//! | group `g` of `t` | durable quorum queue `runnel:t:g`, single active consumer, bound with `#` |
//! | native dead letters of `g` | quorum queue `runnel:t:g:$dead` behind the direct exchange `runnel.dead-letter` |

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use runnel_core::{BusError, GroupName, TopicName};

use crate::codec::FENCE_HEADER;
use crate::config::RabbitOptions;
use crate::error::from_lapin;

/// The one dead-letter exchange (direct; routing key = the dead-letter queue's name).
pub const DEAD_LETTER_EXCHANGE: &str = "runnel.dead-letter";
/// Longest AMQP queue or exchange name.
const AMQP_NAME_MAX: usize = 255;
/// Messages the copy of a topic's stream into a new `Earliest` group may have unconfirmed.
const STREAM_COPY_PREFETCH: u16 = 256;
/// Longest a new `Earliest` group's copy of the retained stream may take.
const STREAM_COPY_DEADLINE: Duration = Duration::from_secs(120);

/// The exchange of a topic.
pub fn exchange_name(topic: &TopicName) -> String {
    format!("runnel:{topic}")
}

/// The retention stream of a topic.
pub fn stream_name(topic: &TopicName) -> String {
    format!("runnel:{topic}:$retained")
}

/// The queue of a group.
pub fn group_queue_name(topic: &TopicName, group: &GroupName) -> String {
    bounded(format!("runnel:{topic}:{group}"))
}

/// The native dead-letter queue of a group.
pub fn dead_letter_queue_name(topic: &TopicName, group: &GroupName) -> String {
    bounded(format!("runnel:{topic}:{group}:$dead"))
}

/// Names over the AMQP limit keep a readable start and end in a stable hash.
fn bounded(name: String) -> String {
    if name.len() <= AMQP_NAME_MAX {
        return name;
    }
    let hash = fnv1a(name.as_bytes());
    // Names are ASCII (topic and group names are validated), so any byte is a boundary.
    format!("{}~{hash:016x}~{}", &name[..150], &name[name.len() - 80..])
}

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn millis(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_string()))
}

/// Declares a topic's exchange and, when retention is on, its stream (idempotent).
pub(crate) async fn declare_topic(
    channel: &Channel,
    topic: &TopicName,
    options: &RabbitOptions,
) -> Result<(), BusError> {
    let exchange = exchange_name(topic);
    channel
        .exchange_declare(
            &exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(from_lapin)?;
    if let Some(retention) = options.retention {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("stream"));
        args.insert(
            "x-max-age".into(),
            text(&format!("{}s", retention.as_secs().max(1))),
        );
        let stream = stream_name(topic);
        channel
            .queue_declare(&stream, durable_queue(), args)
            .await
            .map_err(from_lapin)?;
        channel
            .queue_bind(
                &stream,
                &exchange,
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(from_lapin)?;
    }
    Ok(())
}

/// Declares a group: its dead-letter queue and its quorum queue bound to the topic.
/// Returns whether the group's queue was created by this call. A new group that starts
/// at `Earliest` gets the topic's retained messages copied in first.
pub(crate) async fn declare_group(
    connection: &Connection,
    topic: &TopicName,
    group: &GroupName,
    earliest: bool,
    options: &RabbitOptions,
) -> Result<bool, BusError> {
    let channel = connection.create_channel().await.map_err(from_lapin)?;
    declare_topic(&channel, topic, options).await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(from_lapin)?;
    let dead = dead_letter_queue_name(topic, group);
    let mut dead_args = FieldTable::default();
    dead_args.insert("x-queue-type".into(), text("quorum"));
    if let Some(expires) = options.group_expires {
        dead_args.insert("x-expires".into(), millis(expires));
    }
    channel
        .queue_declare(&dead, durable_queue(), dead_args)
        .await
        .map_err(from_lapin)?;
    channel
        .queue_bind(
            &dead,
            DEAD_LETTER_EXCHANGE,
            &dead,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(from_lapin)?;

    let queue = group_queue_name(topic, group);
    // A passive declare tells whether the group exists; on a miss the broker closes the
    // channel, so the real declare uses a fresh one.
    let exists = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = channel.close(200, "done").await;
        return Ok(false);
    }
    let channel = connection.create_channel().await.map_err(from_lapin)?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(options.delivery_limit)),
    );
    args.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
    args.insert("x-dead-letter-routing-key".into(), text(&dead));
    if let Some(expires) = options.group_expires {
        args.insert("x-expires".into(), millis(expires));
    }
    channel
        .queue_declare(&queue, durable_queue(), args)
        .await
        .map_err(from_lapin)?;
    let bind = || async {
        channel
            .queue_bind(
                &queue,
                &exchange_name(topic),
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(from_lapin)
    };
    if earliest && options.retention.is_some() {
        // Copy the backlog before binding, so new messages queue behind it; then bind
        // and copy the few that arrived in between (up to a second fence).
        let copy = async {
            let first_fence = copy_retained(connection, topic, &queue, None).await?;
            bind().await?;
            copy_retained(connection, topic, &queue, Some(first_fence + 1)).await
        };
        tokio::time::timeout(STREAM_COPY_DEADLINE, copy)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "copying the retained messages of {topic} into group {group} took over {STREAM_COPY_DEADLINE:?}"
                ))
            })??;
    } else {
        bind().await?;
    }
    let _ = channel.close(200, "done").await;
    Ok(true)
}

/// Copies the topic's stream from offset `from` (the start for `None`) up to a fence
/// written now into the group's queue (publish order kept, confirmed); returns the
/// fence's offset. See DESIGN.md ("Earliest") for the narrow race it leaves.
async fn copy_retained(
    connection: &Connection,
    topic: &TopicName,
    queue: &str,
    from: Option<i64>,
) -> Result<i64, BusError> {
    let stream = stream_name(topic);
    let fence_id = runnel_core::uuid::Uuid::now_v7().to_string();
    let publisher = connection.create_channel().await.map_err(from_lapin)?;
    publisher
        .confirm_select(Default::default())
        .await
        .map_err(from_lapin)?;
    let mut fence_headers = FieldTable::default();
    fence_headers.insert(FENCE_HEADER.into(), text(&fence_id));
    publisher
        .basic_publish(
            "",
            &stream,
            BasicPublishOptions::default(),
            &[],
            BasicProperties::default()
                .with_delivery_mode(crate::codec::PERSISTENT)
                .with_headers(fence_headers),
        )
        .await
        .map_err(from_lapin)?
        .await
        .map_err(from_lapin)?;

    let reader = connection.create_channel().await.map_err(from_lapin)?;
    reader
        .basic_qos(STREAM_COPY_PREFETCH, BasicQosOptions::default())
        .await
        .map_err(from_lapin)?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        match from {
            Some(offset) => AMQPValue::LongLongInt(offset),
            None => text("first"),
        },
    );
    let mut consumer = reader
        .basic_consume(
            &stream,
            &format!("runnel-copy-{fence_id}"),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(from_lapin)?;
    let mut pending = Vec::new();
    let mut fence_offset = None;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(from_lapin)?;
        let fence = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(FENCE_HEADER).cloned());
        let tag_ack = delivery.acker.clone();
        match fence {
            Some(AMQPValue::LongString(id)) if id.as_bytes() == fence_id.as_bytes() => {
                fence_offset = crate::codec::header_int(&delivery.properties, "x-stream-offset");
                break;
            }
            Some(_) => {}
            None => {
                pending.push(
                    publisher
                        .basic_publish(
                            "",
                            queue,
                            BasicPublishOptions::default(),
                            &delivery.data,
                            delivery.properties.clone(),
                        )
                        .await
                        .map_err(from_lapin)?,
                );
            }
        }
        tag_ack.ack(Default::default()).await.map_err(from_lapin)?;
        if pending.len() >= usize::from(STREAM_COPY_PREFETCH) {
            for confirm in pending.drain(..) {
                check_confirm(confirm.await.map_err(from_lapin)?)?;
            }
        }
    }
    for confirm in pending.drain(..) {
        check_confirm(confirm.await.map_err(from_lapin)?)?;
    }
    let _ = reader.close(200, "copied").await;
    let _ = publisher.close(200, "copied").await;
    fence_offset.ok_or_else(|| {
        BusError::Backend(format!(
            "the stream {stream} ended before the copy fence (or it carried no offset)"
        ))
    })
}

pub(crate) fn check_confirm(
    confirmation: lapin::publisher_confirm::Confirmation,
) -> Result<(), BusError> {
    if confirmation.is_nack() {
        return Err(BusError::Unavailable(
            "the broker refused a message (negative publisher confirm)".into(),
        ));
    }
    Ok(())
}

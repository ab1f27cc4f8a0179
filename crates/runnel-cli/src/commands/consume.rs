//! `runnel consume`: read a topic as a consumer group, acknowledging each message once it
//! is printed (so a crash between the two prints it again: at least once).

use std::sync::Arc;

use futures_util::StreamExt as _;
use runnel::dead_letter::replay_targets_other_group;
use runnel_core::bus::{StartPosition, SubscribeOptions, Subscriber, MAX_IN_FLIGHT_DEFAULT};
use runnel_core::{BusError, GroupName, Message, TopicName};
use serde::Serialize;

use crate::cli::ConsumeArgs;
use crate::exit::BadInput;
use crate::output::Printer;
use crate::time_args::parse_duration;

/// Longest payload shown on a human line, in characters.
const HUMAN_PAYLOAD_CHARS_MAX: usize = 160;

/// A consumed message as printed with `--json`.
#[derive(Serialize)]
struct ConsumedLine<'a> {
    topic: &'a str,
    group: &'a str,
    attempt: u32,
    #[serde(flatten)]
    message: &'a Message,
}

fn parse_start(text: &str) -> Result<StartPosition, BadInput> {
    match text.trim().to_ascii_lowercase().as_str() {
        "earliest" | "beginning" | "first" => Ok(StartPosition::Earliest),
        "latest" | "end" | "new" => Ok(StartPosition::Latest),
        other => Err(BadInput(format!(
            "--from {other:?}: expected `earliest` or `latest`"
        ))),
    }
}

/// `runnel consume`.
pub async fn consume(
    subscriber: Arc<dyn Subscriber>,
    printer: Printer,
    args: ConsumeArgs,
) -> anyhow::Result<()> {
    let topic = TopicName::new(args.topic.as_str())?;
    let group =
        GroupName::new(args.group.as_str()).map_err(|e| BadInput(format!("--group: {e}")))?;
    if args.count == Some(0) {
        return Err(BadInput("--count must be at least 1".into()).into());
    }
    let wait = parse_duration(&args.wait).map_err(|e| BadInput(format!("--wait: {}", e.0)))?;
    let start = parse_start(&args.from)?;
    let count = args.count.unwrap_or(u64::MAX);
    // Never lease more than will be printed: what is leased and not acked would only come
    // back after the ack timeout.
    let max_in_flight = count.min(MAX_IN_FLIGHT_DEFAULT as u64) as usize;
    let options = SubscribeOptions {
        max_in_flight,
        start,
        ..SubscribeOptions::default()
    };
    let mut deliveries = match subscriber.subscribe(&topic, &group, options).await {
        Ok(deliveries) => deliveries,
        // The library's error names its API; say it in flags.
        Err(BusError::EarliestUnavailable { reason }) => {
            return Err(BadInput(format!(
                "--from earliest (the default) cannot start the new group {group} on this bus: \
                 {reason}; pass --from latest to start it at the messages published from now on"
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed = 0u64;
    while printed < count {
        let next = if args.follow {
            tokio::select! {
                next = deliveries.next() => next,
                _ = &mut ctrl_c => break,
            }
        } else {
            tokio::select! {
                next = tokio::time::timeout(wait, deliveries.next()) => match next {
                    Ok(next) => next,
                    Err(_) => break, // idle for --wait: caught up
                },
                _ = &mut ctrl_c => break,
            }
        };
        let delivery = match next {
            Some(delivery) => delivery?,
            None => break,
        };
        if replay_targets_other_group(&delivery.message, &group) {
            // A dead-letter replay for another group: not ours to handle.
            tracing::debug!(id = %delivery.message.id, "skipping a replay meant for another group");
            delivery.ack().await?;
            continue;
        }
        let line = ConsumedLine {
            topic: topic.as_str(),
            group: group.as_str(),
            attempt: delivery.attempt,
            message: &delivery.message,
        };
        printer.value(&line, || human_line(&line))?;
        delivery.ack().await?;
        printed += 1;
    }
    if printed == 0 && !printer.json {
        eprintln!("no messages for group {group} on {topic}");
    }
    Ok(())
}

fn human_line(line: &ConsumedLine<'_>) -> String {
    let m = line.message;
    let payload = match m.payload_json() {
        Ok(v) => truncate(&v.to_string(), HUMAN_PAYLOAD_CHARS_MAX),
        Err(_) => format!("<{} bytes of {}>", m.payload.len(), m.content_type),
    };
    let key = m
        .ordering_key()
        .map(|k| format!("  key={k}"))
        .unwrap_or_default();
    let attempt = if line.attempt > 1 {
        format!("  (delivery {})", line.attempt)
    } else {
        String::new()
    };
    format!(
        "{}  {}  {}{key}{attempt}  {payload}",
        line.topic, m.event_type, m.id
    )
}

fn truncate(s: &str, chars_max: usize) -> String {
    if s.chars().count() <= chars_max {
        s.to_string()
    } else {
        let head: String = s.chars().take(chars_max).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest").unwrap(), StartPosition::Earliest);
        assert_eq!(parse_start("LATEST").unwrap(), StartPosition::Latest);
        assert!(parse_start("middle").is_err());
    }
}

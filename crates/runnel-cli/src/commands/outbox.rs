//! `runnel outbox status | retry`.
//!
//! * `status`: pending rows (parked ones included), the oldest pending row's age, rows
//!   published and kept until the retention purge, and the same per topic.
//! * `retry`: rows parked after repeated publish failures become claimable again, their
//!   attempts reset (all, or one topic's).
//!
//! The relay's benchmark is `runnel-bench outbox` (crates/runnel-bench).

use std::time::Duration;

use chrono::Utc;
use runnel_core::outbox::{OutboxStatus, OutboxStore};
use runnel_core::TopicName;
use serde::Serialize;

use crate::cli::OutboxRetryArgs;
use crate::exit::BadInput;
use crate::output::{print_line, Printer};

#[derive(Serialize)]
struct StatusLine<'a> {
    #[serde(flatten)]
    status: &'a OutboxStatus,
    oldest_pending_age_seconds: f64,
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `runnel outbox status`.
pub async fn status(outbox: &dyn OutboxStore, printer: Printer) -> anyhow::Result<()> {
    let status = outbox.status().await?;
    let now = Utc::now();
    let age = status.oldest_pending_age(now);
    if printer.json {
        let line = StatusLine {
            status: &status,
            oldest_pending_age_seconds: age.as_secs_f64(),
        };
        return print_line(&serde_json::to_string(&line)?);
    }
    print_line(&format!(
        "pending {}  parked {}  oldest pending {}  published (kept for retention) {}",
        status.pending,
        status.parked,
        if status.pending == 0 {
            "-".to_string()
        } else {
            human_age(age)
        },
        status.published_retained
    ))?;
    for t in &status.topics {
        let age = t
            .oldest_pending
            .and_then(|o| (now - o).to_std().ok())
            .unwrap_or_default();
        print_line(&format!(
            "  {:<40} pending {:>8}  parked {:>6}  oldest {}",
            t.topic,
            t.pending,
            t.parked,
            human_age(age)
        ))?;
    }
    Ok(())
}

/// `runnel outbox retry`.
pub async fn retry(
    outbox: &dyn OutboxStore,
    printer: Printer,
    args: OutboxRetryArgs,
) -> anyhow::Result<()> {
    let topic = args
        .topic
        .as_deref()
        .map(|t| TopicName::new(t).map_err(|e| BadInput(format!("--topic: {e}"))))
        .transpose()?;
    let n = outbox.retry_parked(topic.as_ref()).await?;
    if printer.json {
        print_line(&serde_json::json!({ "retried": n }).to_string())
    } else {
        print_line(&format!(
            "{n} parked row(s) will be published again (attempts reset)"
        ))
    }
}

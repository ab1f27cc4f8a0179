//! Runnel's publish scenarios: P concurrent publishers, each publishing K messages per
//! call, on any [`Publisher`] (the embedded bus on SQLite or PostgreSQL).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use runnel_core::bus::Publisher;
use runnel_core::TopicName;

use super::workload::{message, Budget, Latency, Run};

/// The shape of a publish scenario.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub publishers: usize,
    pub messages_per_call: usize,
}

/// Runs the scenario; `published` tracks progress, `commits` reads the store's commit
/// counter (0 where the backend has none).
pub async fn run(
    bus: Arc<dyn Publisher>,
    topic: &TopicName,
    shape: Shape,
    budget: Budget,
    published: Arc<AtomicU64>,
    commits: &(dyn Fn() -> u64 + Sync),
) -> anyhow::Result<Run> {
    let commits_before = commits();
    let reserved = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shape.publishers);
    for _ in 0..shape.publishers {
        let (bus, topic) = (Arc::clone(&bus), topic.clone());
        let (reserved, published) = (Arc::clone(&reserved), Arc::clone(&published));
        tasks.push(tokio::spawn(async move {
            let per_call = shape.messages_per_call as u64;
            let mut latency = Latency::new()?;
            loop {
                if start.elapsed() >= budget.duration {
                    break;
                }
                let n = reserved.fetch_add(per_call, Ordering::Relaxed);
                if n + per_call > budget.messages_max {
                    break;
                }
                let batch = (n..n + per_call).map(message).collect();
                let sent = Instant::now();
                bus.publish(&topic, batch)
                    .await
                    .with_context(|| format!("benchmark publish to {topic} failed"))?;
                latency.record(sent.elapsed());
                published.fetch_add(per_call, Ordering::Relaxed);
            }
            anyhow::Ok(latency)
        }));
    }
    let mut latency = Latency::new()?;
    for task in tasks {
        latency.add(&task.await.context("a benchmark publisher panicked")??)?;
    }
    let elapsed = start.elapsed();
    Ok(Run {
        messages: published.load(Ordering::Relaxed),
        elapsed,
        commits: commits().saturating_sub(commits_before),
        latency,
    })
}

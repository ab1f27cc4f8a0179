//! `runnel projections list | status | rebuild | pause | resume | retry | skip | drop-old`: a
//! thin shell over `runnel::projection::admin`.
//!
//! The CLI never runs a projection's code: it reads and changes the projection store, and
//! the services running the projection act on what it changed (a rebuild is a new
//! generation they fill and switch to; `rebuild` watches them do it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel::projection::admin::{self, GenerationStatus, RebuildProgress};
use runnel_core::projection::{
    validate_identifier, ProjectionStatus, ProjectionStore, VersionRole,
};
use runnel_core::EventStore;
use serde::Serialize;

use crate::cli::{ProjectionsCommand, ProjectionsRebuildArgs, ProjectionsStatusArgs};
use crate::commands::processors::{stream_job_note, stream_job_of};
use crate::exit::{BadInput, Interrupted};
use crate::output::{human_time, truncate, Printer};
use crate::time_args::parse_duration;

/// How often `rebuild` looks at the new generation.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// Longest error text on a human line, in characters.
const HUMAN_ERROR_CHARS_MAX: usize = 100;

/// A `projections` command with its input checked: built before the store is opened, so
/// a typo is a one-line exit-code-2 error that touches nothing.
#[derive(Debug)]
pub enum ProjectionsRequest {
    List,
    Status {
        name: Option<String>,
        sample: Duration,
    },
    Rebuild {
        name: String,
        detach: bool,
        stall_timeout: Duration,
    },
    Pause(String),
    Resume(String),
    Retry(String),
    Skip(String),
    DropOld(String),
}

fn parse_name(name: String) -> Result<String, BadInput> {
    validate_identifier("projection name", &name).map_err(|e| BadInput(e.to_string()))?;
    Ok(name)
}

fn parse_wait(flag: &str, text: &str) -> Result<Duration, BadInput> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text).map_err(|e| BadInput(format!("{flag}: {}", e.0)))
}

/// Checks the command's input.
pub fn prepare(command: ProjectionsCommand) -> anyhow::Result<ProjectionsRequest> {
    Ok(match command {
        ProjectionsCommand::List => ProjectionsRequest::List,
        ProjectionsCommand::Status(ProjectionsStatusArgs { name, sample }) => {
            ProjectionsRequest::Status {
                name: name.map(parse_name).transpose()?,
                sample: parse_wait("--sample", &sample)?,
            }
        }
        ProjectionsCommand::Rebuild(ProjectionsRebuildArgs {
            name,
            detach,
            stall_timeout,
        }) => {
            let stall_timeout = parse_wait("--stall-timeout", &stall_timeout)?;
            if stall_timeout.is_zero() {
                return Err(BadInput("--stall-timeout must be more than 0".into()).into());
            }
            ProjectionsRequest::Rebuild {
                name: parse_name(name)?,
                detach,
                stall_timeout,
            }
        }
        ProjectionsCommand::Pause(a) => ProjectionsRequest::Pause(parse_name(a.name)?),
        ProjectionsCommand::Resume(a) => ProjectionsRequest::Resume(parse_name(a.name)?),
        ProjectionsCommand::Retry(a) => ProjectionsRequest::Retry(parse_name(a.name)?),
        ProjectionsCommand::Skip(a) => ProjectionsRequest::Skip(parse_name(a.name)?),
        ProjectionsCommand::DropOld(a) => ProjectionsRequest::DropOld(parse_name(a.name)?),
    })
}

/// Runs a prepared command against the stores.
pub async fn run(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    printer: Printer,
    request: ProjectionsRequest,
) -> anyhow::Result<()> {
    match request {
        ProjectionsRequest::List => list(store, events, printer).await,
        ProjectionsRequest::Status { name, sample } => {
            status(store, events, printer, name.as_deref(), sample).await
        }
        ProjectionsRequest::Rebuild {
            name,
            detach,
            stall_timeout,
        } => rebuild(store, events, printer, &name, detach, stall_timeout).await,
        ProjectionsRequest::Pause(name) => {
            let n = admin::pause(store, &name).await?;
            acted(printer, &name, "paused", n)
        }
        ProjectionsRequest::Resume(name) => {
            let n = admin::resume(store, &name).await?;
            acted(printer, &name, "resumed", n)
        }
        ProjectionsRequest::Retry(name) => {
            let n = admin::retry(store, &name).await?;
            acted(printer, &name, "retrying", n)
        }
        ProjectionsRequest::Skip(name) => {
            let skipped = admin::skip(store, &name).await?;
            for s in &skipped {
                printer.value(s, || {
                    format!(
                        "{name}: skipped the event at position {} (generation {}, partition {}): {}",
                        s.position,
                        s.version,
                        s.partition,
                        s.error.as_deref().unwrap_or("no error recorded")
                    )
                })?;
            }
            Ok(())
        }
        ProjectionsRequest::DropOld(name) => {
            let dropped = admin::drop_old(store, &name).await?;
            #[derive(Serialize)]
            struct Dropped<'a> {
                name: &'a str,
                dropped: &'a [u32],
            }
            printer.value(
                &Dropped {
                    name: &name,
                    dropped: &dropped,
                },
                || {
                    let list: Vec<String> = dropped.iter().map(u32::to_string).collect();
                    format!(
                        "{name}: dropped the tables of retired generation(s) {}",
                        list.join(", ")
                    )
                },
            )
        }
    }
}

fn acted(printer: Printer, name: &str, what: &str, partitions: u64) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Acted<'a> {
        name: &'a str,
        action: &'a str,
        partitions: u64,
    }
    printer.value(
        &Acted {
            name,
            action: what,
            partitions,
        },
        || format!("{name}: {what} ({partitions} partition(s))"),
    )
}

/// One projection on `list`: its current generation and any rebuild under way.
#[derive(Serialize)]
struct ListLine<'a> {
    name: &'a str,
    version: Option<u32>,
    code_version: Option<u32>,
    status: &'a str,
    checkpoint: u64,
    lag_events: u64,
    lag_seconds: f64,
    rebuilding: Option<Rebuilding>,
    last_error: Option<&'a str>,
    /// The topic a topic projection reads (no checkpoint, no lag against `$all`).
    topic: Option<&'a str>,
    /// The stream job this projection runs (`stream_job_{job}`; `runnel processors`).
    stream_job: Option<&'a str>,
}

#[derive(Serialize)]
struct Rebuilding {
    version: u32,
    code_version: u32,
    checkpoint: u64,
    status: ProjectionStatus,
}

async fn list(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    printer: Printer,
) -> anyhow::Result<()> {
    let all = admin::status(store, events, None).await?;
    let mut by_name: BTreeMap<&str, Vec<&GenerationStatus>> = BTreeMap::new();
    for g in &all {
        by_name.entry(&g.name).or_default().push(g);
    }
    if by_name.is_empty() && !printer.json {
        eprintln!("no projections are registered in this store");
    }
    for (name, generations) in by_name {
        let current = generations.iter().find(|g| g.role == VersionRole::Current);
        let building = generations.iter().find(|g| g.role == VersionRole::Building);
        let status = match current {
            Some(c) => c.status.as_str(),
            None => "building",
        };
        let line = ListLine {
            name,
            version: current.map(|c| c.version),
            code_version: current.map(|c| c.code_version),
            status,
            checkpoint: current.map_or(0, |c| c.checkpoint),
            lag_events: current.map_or(0, |c| c.lag_events),
            lag_seconds: current.map_or(0.0, |c| c.lag_seconds),
            rebuilding: building.map(|b| Rebuilding {
                version: b.version,
                code_version: b.code_version,
                checkpoint: b.checkpoint,
                status: b.status,
            }),
            last_error: current.and_then(|c| c.last_error.as_deref()),
            topic: current.and_then(|c| c.topic.as_deref()),
            stream_job: stream_job_of(name),
        };
        printer.value(&line, || {
            let generation = line
                .version
                .map(|v| format!("gen {v}"))
                .unwrap_or_else(|| "-".into());
            let mut text = match line.topic {
                Some(topic) => format!(
                    "{name:<32} {generation:<10} {:<8} topic {topic}  checkpoint n/a  lag n/a",
                    line.status,
                ),
                None => format!(
                    "{name:<32} {generation:<10} {:<8} checkpoint {:>10}  lag {} events / {:.1}s",
                    line.status, line.checkpoint, line.lag_events, line.lag_seconds
                ),
            };
            if let Some(b) = &line.rebuilding {
                text.push_str(&format!(
                    "  rebuilding: gen {} at {} ({})",
                    b.version,
                    b.checkpoint,
                    b.status.as_str()
                ));
            }
            if let Some(e) = line.last_error {
                text.push_str(&format!("  error: {}", truncate(e, HUMAN_ERROR_CHARS_MAX)));
            }
            if let Some(job) = line.stream_job {
                text.push_str(&stream_job_note(job));
            }
            text
        })?;
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusLine<'a> {
    #[serde(flatten)]
    generation: &'a GenerationStatus,
    /// Measured over the sample; `None` when not measured.
    events_per_second: Option<f64>,
    /// The stream job this projection runs (`runnel processors`).
    stream_job: Option<&'a str>,
}

async fn status(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    printer: Printer,
    name: Option<&str>,
    sample: Duration,
) -> anyhow::Result<()> {
    let first = admin::status(store, events, name).await?;
    let (generations, rates) = if sample.is_zero() {
        (first, None)
    } else {
        let started = Instant::now();
        tokio::time::sleep(sample).await;
        let second = admin::status(store, events, name).await?;
        let secs = started.elapsed().as_secs_f64();
        let before: BTreeMap<(&str, u32), u64> = first
            .iter()
            .map(|g| ((g.name.as_str(), g.version), g.events_applied))
            .collect();
        let rates: Vec<f64> = second
            .iter()
            .map(|g| {
                let was = before
                    .get(&(g.name.as_str(), g.version))
                    .copied()
                    .unwrap_or(0);
                g.events_applied.saturating_sub(was) as f64 / secs
            })
            .collect();
        (second, Some(rates))
    };
    if generations.is_empty() && !printer.json {
        eprintln!("no projections are registered in this store");
    }
    for (i, g) in generations.iter().enumerate() {
        let rate = rates.as_ref().map(|r| r[i]);
        printer.value(
            &StatusLine {
                generation: g,
                events_per_second: rate,
                stream_job: stream_job_of(&g.name),
            },
            || human_status(g, rate),
        )?;
    }
    Ok(())
}

fn human_status(g: &GenerationStatus, rate: Option<f64>) -> String {
    let position = match &g.topic {
        Some(topic) => format!(
            "topic {topic}  checkpoint n/a  lag n/a  {} messages applied",
            g.events_applied
        ),
        None => format!(
            "checkpoint {:>10}  lag {} events / {:.1}s",
            g.checkpoint, g.lag_events, g.lag_seconds
        ),
    };
    let mut text = format!(
        "{:<32} gen {:<4} (code v{}) {:<8} {:<8} {position}",
        g.name,
        g.version,
        g.code_version,
        g.role.as_str(),
        g.status.as_str(),
    );
    if let Some(rate) = rate {
        text.push_str(&format!("  {rate:.0} events/s"));
    }
    if g.partitions > 1 {
        text.push_str(&format!("  {} partitions", g.partitions));
    }
    if !g.leased_by.is_empty() {
        text.push_str(&format!("  run by {}", g.leased_by.join(", ")));
    }
    text.push_str(&format!("  updated {}", human_time(&g.updated_at)));
    if let Some(p) = g.failed_position {
        text.push_str(&format!("  stopped at position {p}"));
    }
    if let Some(e) = &g.last_error {
        text.push_str(&format!("  error: {}", truncate(e, HUMAN_ERROR_CHARS_MAX)));
    }
    if let Some(job) = stream_job_of(&g.name) {
        text.push_str(&stream_job_note(job));
    }
    text
}

#[derive(Serialize)]
struct RebuildLine<'a> {
    name: &'a str,
    version: u32,
    code_version: u32,
    /// `started`, `resumed`, `current` (done), or `paused` (interrupted).
    state: &'a str,
    checkpoint: u64,
    head: u64,
}

async fn rebuild(
    store: &dyn ProjectionStore,
    events: &dyn EventStore,
    printer: Printer,
    name: &str,
    detach: bool,
    stall_timeout: Duration,
) -> anyhow::Result<()> {
    let started = admin::rebuild(store, name).await?;
    let state = if started.created {
        "started"
    } else {
        "resumed"
    };
    let line = |state: &'static str, checkpoint: u64, head: u64| RebuildLine {
        name,
        version: started.version,
        code_version: started.code_version,
        state,
        checkpoint,
        head,
    };
    if detach {
        let progress = admin::rebuild_progress(store, events, name, started.version).await?;
        let (done, total) = match progress {
            RebuildProgress::Building { done, total, .. } => (done, total),
            _ => (0, 0),
        };
        return printer.value(&line(state, done, total), || {
            format!(
                "{name}: rebuild {state} as generation {} (code v{}); the services running \
                 {name} fill it and switch to it once caught up",
                started.version, started.code_version
            )
        });
    }
    if !printer.json {
        eprintln!(
            "{name}: rebuild {state} as generation {} (code v{}); Ctrl-C pauses it",
            started.version, started.code_version
        );
    }
    let bar = crate::progress::rate_bar(0, "positions");
    let mut last_done = None;
    let mut moved_at = Instant::now();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let progress = admin::rebuild_progress(store, events, name, started.version).await?;
        match progress {
            RebuildProgress::Current => {
                bar.finish_and_clear();
                let head = events.head_position().await?.get();
                return printer.value(&line("current", head, head), || {
                    format!(
                        "{name}: generation {} is current; the old generation's tables stay \
                         until `runnel projections drop-old {name}`",
                        started.version
                    )
                });
            }
            RebuildProgress::Gone => {
                bar.finish_and_clear();
                anyhow::bail!(
                    "{name}: generation {} is no longer building: newer code registered a newer \
                     version, or it was dropped",
                    started.version
                );
            }
            RebuildProgress::Building {
                done,
                total,
                status,
                error,
            } => {
                bar.set_length(total.max(done));
                bar.set_position(done);
                match status {
                    ProjectionStatus::Running => bar.set_message(""),
                    ProjectionStatus::Paused => {
                        bar.set_message("paused (`runnel projections resume` or rebuild again)")
                    }
                    ProjectionStatus::Faulted => bar.set_message(format!(
                        "faulted: {} (`runnel projections retry {name}` or `skip {name}`)",
                        truncate(error.as_deref().unwrap_or("?"), HUMAN_ERROR_CHARS_MAX)
                    )),
                }
                if last_done != Some(done) || status != ProjectionStatus::Running {
                    last_done = Some(done);
                    moved_at = Instant::now();
                } else if moved_at.elapsed() >= stall_timeout {
                    admin::pause_rebuild(store, name, started.version).await?;
                    bar.finish_and_clear();
                    anyhow::bail!(
                        "{name}: no service moved the rebuild for {stall_timeout:?} (is a service \
                         running projection {name} at code version {}?); the rebuild is paused at \
                         position {done} of {total}: run this command again to resume it",
                        started.code_version
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_POLL) => {}
            _ = &mut interrupt => {
                admin::pause_rebuild(store, name, started.version).await?;
                bar.finish_and_clear();
                let done = last_done.unwrap_or(0);
                let head = events.head_position().await?.get();
                printer.value(&line("paused", done, head), || {
                    format!(
                        "{name}: rebuild paused at position {done} of {head}; \
                         `runnel projections rebuild {name}` resumes it"
                    )
                })?;
                return Err(Interrupted.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProjectionNameArg;

    #[test]
    fn names_and_durations_are_checked_before_anything_opens() {
        assert!(prepare(ProjectionsCommand::Pause(ProjectionNameArg {
            name: "Bad Name".into()
        }))
        .is_err());
        assert!(prepare(ProjectionsCommand::Status(ProjectionsStatusArgs {
            name: None,
            sample: "soon".into()
        }))
        .is_err());
        assert!(matches!(
            prepare(ProjectionsCommand::Status(ProjectionsStatusArgs {
                name: None,
                sample: "0".into()
            }))
            .unwrap(),
            ProjectionsRequest::Status { sample, .. } if sample.is_zero()
        ));
        assert!(prepare(ProjectionsCommand::Rebuild(ProjectionsRebuildArgs {
            name: "orders".into(),
            detach: false,
            stall_timeout: "0".into()
        }))
        .is_err());
    }
}

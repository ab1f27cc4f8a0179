//! `runnel processors list | status | reset`: stream jobs (`runnel::stream`), a thin shell
//! over `runnel::stream::{processor_names, job_status, reset}`.
//!
//! As with projections, the CLI never runs a job's code: it reads the job's projection
//! (`stream_job_{job}`) and state table, and `reset` starts a new generation that the
//! services running the job fill and switch to.

use runnel::connect::Stores;
use runnel::stream::{self, JOB_NAME_LEN_MAX};
use runnel_core::projection::validate_identifier;
use runnel_server::admin::stream_jobs::{current_version, statuses, JobView, ResetStarted};

use crate::cli::ProcessorsCommand;
use crate::exit::{BadInput, NotFound};
use crate::output::{truncate, Printer};

/// Longest error text on a human line, in characters.
const HUMAN_ERROR_CHARS_MAX: usize = 100;

/// A `processors` command with its input checked before the store is opened.
#[derive(Debug)]
pub enum ProcessorsRequest {
    List,
    Status(String),
    Reset(String),
}

fn parse_name(name: String) -> Result<String, BadInput> {
    validate_identifier("stream job name", &name).map_err(|e| BadInput(e.to_string()))?;
    if name.len() > JOB_NAME_LEN_MAX {
        return Err(BadInput(format!(
            "stream job name {name} is {} bytes; the limit is {JOB_NAME_LEN_MAX}",
            name.len()
        )));
    }
    Ok(name)
}

/// Checks the command's input.
pub fn prepare(command: ProcessorsCommand) -> Result<ProcessorsRequest, BadInput> {
    Ok(match command {
        ProcessorsCommand::List => ProcessorsRequest::List,
        ProcessorsCommand::Status(a) => ProcessorsRequest::Status(parse_name(a.name)?),
        ProcessorsCommand::Reset(a) => ProcessorsRequest::Reset(parse_name(a.name)?),
    })
}

fn unknown(name: &str) -> NotFound {
    NotFound(format!(
        "no stream job named {name:?} runs on this store (`runnel processors list` lists them)"
    ))
}

/// Runs a prepared command against the stores.
pub async fn run(
    stores: &Stores,
    printer: Printer,
    request: ProcessorsRequest,
) -> anyhow::Result<()> {
    match request {
        ProcessorsRequest::List => list(stores, printer).await,
        ProcessorsRequest::Status(name) => {
            let view: JobView = stream::job_status(stores, &name)
                .await?
                .ok_or_else(|| unknown(&name))?
                .into();
            printer.value(&view, || human_status(&view))
        }
        ProcessorsRequest::Reset(name) => reset(stores, printer, &name).await,
    }
}

/// `-` for what is not known yet.
fn or_dash(t: Option<&str>) -> &str {
    t.unwrap_or("-")
}

async fn list(stores: &Stores, printer: Printer) -> anyhow::Result<()> {
    let views = statuses(stores).await?;
    if views.is_empty() && !printer.json {
        eprintln!("no stream jobs run on this store");
    }
    for v in &views {
        printer.value(v, || {
            let mut text = format!(
                "{:<32} gen {:<4} {:<8} position {:>10}  lag {} events  watermark {}  late {}  state {} rows",
                v.name,
                v.version,
                v.status,
                v.position,
                v.lag_events,
                or_dash(v.watermark.as_deref()),
                v.late,
                v.state_rows,
            );
            if let Some(e) = &v.last_error {
                text.push_str(&format!("  error: {}", truncate(e, HUMAN_ERROR_CHARS_MAX)));
            }
            text
        })?;
    }
    Ok(())
}

/// Every figure of a job, one per line.
fn human_status(v: &JobView) -> String {
    let mut lines = vec![
        format!("job          {}", v.name),
        format!("generation   {}", v.version),
        format!("status       {}", v.status),
        format!(
            "position     {} of {} (lag {} events)",
            v.position, v.head, v.lag_events
        ),
        format!("watermark    {}", or_dash(v.watermark.as_deref())),
    ];
    for (i, t) in v.source_times.iter().enumerate() {
        lines.push(format!(
            "source {i:<5} latest event time {}",
            or_dash(t.as_deref())
        ));
    }
    lines.extend([
        format!("records      {}", v.records),
        format!("outputs      {}", v.outputs),
        format!("late         {}", v.late),
        format!(
            "state        {} rows, {} bytes",
            v.state_rows, v.state_bytes
        ),
        format!("lease        {}", or_dash(v.lease_owner.as_deref())),
    ]);
    if let Some(e) = &v.last_error {
        lines.push(format!("last error   {e}"));
    }
    lines.join("\n")
}

async fn reset(stores: &Stores, printer: Printer, name: &str) -> anyhow::Result<()> {
    let previous_version = current_version(stores.projections.as_ref(), name)
        .await?
        .ok_or_else(|| unknown(name))?;
    let started = stream::reset(stores.projections.as_ref(), name).await?;
    let line = ResetStarted {
        name: name.to_string(),
        version: started.version,
        previous_version,
        created: started.created,
        progress: format!("runnel processors status {name}"),
    };
    printer.value(&line, || {
        let what = if started.created {
            "reset: generation"
        } else {
            "a reset was under way already: generation"
        };
        format!(
            "{name}: {what} {} starts from the beginning of $all with empty state beside \
             generation {previous_version}, and replaces it once caught up; the services \
             running {name} do the work, and its results are emitted again \
             (`runnel processors status {name}` shows how far it is)",
            started.version
        )
    })
}

/// The stream job a projection name belongs to, if any (`stream_job_{job}` → `job`).
pub fn stream_job_of(projection: &str) -> Option<&str> {
    projection.strip_prefix(stream::JOB_PREFIX)
}

/// The note `runnel projections` adds to a stream job's projection on a human line.
pub fn stream_job_note(job: &str) -> String {
    format!("  (stream job {job}: see `runnel processors status {job}`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProcessorNameArg;

    #[test]
    fn names_are_checked_before_anything_opens() {
        let bad = |name: &str| {
            prepare(ProcessorsCommand::Reset(ProcessorNameArg {
                name: name.into(),
            }))
            .is_err()
        };
        assert!(bad("Bad Name"));
        assert!(bad(&"a".repeat(JOB_NAME_LEN_MAX + 1)));
        assert!(!bad("revenue_per_minute"));
    }
}

//! `runnel sagas list | show | retry | skip-step | compensate | purge`: a thin shell over
//! `runnel_core::processor::ProcessorStore` and `runnel::saga::admin`.
//!
//! The CLI never loads a saga's definition: it reads instances from the store, and an
//! operator action is a request committed on the instance (a history line and an
//! `operator` timer due now) that the service running the saga claims and applies with its
//! own definition. `--wait` watches for that.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use runnel::saga::admin::request_action;
use runnel::saga::{OperatorAction, SagaError};
use runnel_core::processor::{
    HistoryRecord, InstanceFilter, InstanceRecord, InstanceStatus, ProcessorStore, StatusCount,
    TimerRecord, PROCESSOR_BATCH_MAX, PROCESSOR_NAME_LEN_MAX,
};
use runnel_core::SystemClock;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{SagasActionArgs, SagasCommand, SagasListArgs, SagasPurgeArgs, SagasShowArgs};
use crate::exit::{BadInput, NotFound};
use crate::output::{human_time, print_line, truncate, Printer};
use crate::time_args::{parse_duration, parse_time};

/// Instances fetched per store call while listing.
const PAGE_INSTANCES: usize = 500;
const _: () = assert!(PAGE_INSTANCES <= PROCESSOR_BATCH_MAX);
/// History lines fetched per store call by `show`.
const PAGE_HISTORY: usize = PROCESSOR_BATCH_MAX;
/// Finished instances deleted per store call by `purge` (one transaction each, so a long
/// purge never holds the store's writer for long).
const PURGE_BATCH: usize = 500;
const _: () = assert!(PURGE_BATCH <= PROCESSOR_BATCH_MAX);
/// How often `--wait` looks at the instance.
const WAIT_POLL: Duration = Duration::from_millis(200);
/// Longest error text on a human list line, in characters.
const HUMAN_ERROR_CHARS_MAX: usize = 100;
/// The kind prefix of sagas; other kinds (`process:`) are process managers.
const SAGA_KIND_PREFIX: &str = "saga:";
/// The timer an operator request is (see `runnel::saga::admin`).
const OPERATOR_TIMER: &str = "operator";

/// A `sagas` command with its input checked: built before the store is opened, so a typo
/// is a one-line exit-code-2 error that touches nothing.
#[derive(Debug)]
pub enum SagasRequest {
    List {
        kind: Option<String>,
        status: Option<InstanceStatus>,
        limit: Option<u64>,
    },
    Show {
        kind: Option<String>,
        id: String,
    },
    Act {
        kind: Option<String>,
        id: String,
        action: OperatorAction,
        wait: Option<Duration>,
    },
    Purge {
        kind: Option<String>,
        finished_before: DateTime<Utc>,
    },
}

/// Checks the command's input; `now` anchors ages (`--finished-before 7d`).
pub fn prepare(command: SagasCommand, now: DateTime<Utc>) -> anyhow::Result<SagasRequest> {
    Ok(match command {
        SagasCommand::List(SagasListArgs {
            kind,
            status,
            limit,
        }) => {
            if limit == Some(0) {
                return Err(BadInput("--limit must be at least 1".into()).into());
            }
            SagasRequest::List {
                kind: kind.as_deref().map(parse_kind).transpose()?,
                status: status.as_deref().map(parse_status).transpose()?,
                limit,
            }
        }
        SagasCommand::Show(SagasShowArgs { id, kind }) => SagasRequest::Show {
            kind: kind.as_deref().map(parse_kind).transpose()?,
            id: parse_id(id)?,
        },
        SagasCommand::Retry(args) => prepare_action(args, OperatorAction::Retry)?,
        SagasCommand::SkipStep(args) => prepare_action(args, OperatorAction::Skip)?,
        SagasCommand::Compensate(args) => prepare_action(args, OperatorAction::Compensate)?,
        SagasCommand::Purge(SagasPurgeArgs {
            finished_before,
            kind,
        }) => SagasRequest::Purge {
            kind: kind.as_deref().map(parse_kind).transpose()?,
            finished_before: parse_time(&finished_before, now)
                .map_err(|e| BadInput(format!("--finished-before: {}", e.0)))?,
        },
    })
}

fn prepare_action(args: SagasActionArgs, action: OperatorAction) -> anyhow::Result<SagasRequest> {
    let kind = args.kind.as_deref().map(parse_kind).transpose()?;
    if let Some(kind) = &kind {
        if !kind.starts_with(SAGA_KIND_PREFIX) {
            return Err(not_a_saga(kind).into());
        }
    }
    Ok(SagasRequest::Act {
        kind,
        id: parse_id(args.id)?,
        action,
        wait: args
            .wait
            .as_deref()
            .map(|w| parse_duration(w).map_err(|e| BadInput(format!("--wait: {}", e.0))))
            .transpose()?,
    })
}

/// `--type T`: a saga's name (kind `saga:T`) or a full kind (`process:shipping`).
pub fn parse_kind(text: &str) -> Result<String, BadInput> {
    let text = text.trim();
    let kind = if text.contains(':') {
        text.to_string()
    } else {
        format!("{SAGA_KIND_PREFIX}{text}")
    };
    let name_is_empty = kind.split_once(':').is_none_or(|(_, name)| name.is_empty());
    if name_is_empty || !is_name(&kind) {
        return Err(BadInput(format!(
            "--type {text:?}: expected a saga's name (checkout) or a kind (saga:checkout, \
             process:shipping) of at most {PROCESSOR_NAME_LEN_MAX} bytes"
        )));
    }
    Ok(kind)
}

fn parse_id(id: String) -> Result<String, BadInput> {
    if !is_name(&id) {
        return Err(BadInput(format!(
            "instance id {:?}: must be 1..={PROCESSOR_NAME_LEN_MAX} bytes without control characters",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(id)
}

/// The store's rule for kinds and ids.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= PROCESSOR_NAME_LEN_MAX && !s.chars().any(char::is_control)
}

/// `--status S`, or an error listing the valid ones.
pub fn parse_status(text: &str) -> Result<InstanceStatus, BadInput> {
    InstanceStatus::parse(text.trim()).ok_or_else(|| {
        let valid: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.as_str()).collect();
        BadInput(format!(
            "--status {text:?} is not a status; use one of: {}",
            valid.join(", ")
        ))
    })
}

fn not_a_saga(kind: &str) -> BadInput {
    BadInput(format!(
        "{kind} is not a saga (kind saga:NAME): operator actions apply to sagas only; a \
         process manager moves on events and its own timers"
    ))
}

/// Runs a prepared command against the store.
pub async fn run(
    store: &dyn ProcessorStore,
    printer: Printer,
    request: SagasRequest,
) -> anyhow::Result<()> {
    match request {
        SagasRequest::List {
            kind,
            status,
            limit,
        } => list(store, printer, kind, status, limit).await,
        SagasRequest::Show { kind, id } => show(store, printer, kind.as_deref(), &id).await,
        SagasRequest::Act {
            kind,
            id,
            action,
            wait,
        } => act(store, printer, kind.as_deref(), &id, action, wait).await,
        SagasRequest::Purge {
            kind,
            finished_before,
        } => purge(store, printer, kind.as_deref(), finished_before).await,
    }
}

/// An instance as `list` prints it with `--json` (and the head of `show`'s object).
#[derive(Serialize)]
struct InstanceLine<'a> {
    kind: &'a str,
    id: &'a str,
    status: InstanceStatus,
    state: &'a str,
    definition_version: u32,
    version: u64,
    correlation: Option<&'a str>,
    last_error: Option<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a InstanceRecord> for InstanceLine<'a> {
    fn from(r: &'a InstanceRecord) -> Self {
        InstanceLine {
            kind: &r.kind,
            id: &r.id,
            status: r.status,
            state: &r.state,
            definition_version: r.definition_version,
            version: r.version,
            correlation: r.correlation.as_deref(),
            last_error: r.last_error.as_deref(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// `runnel sagas list`.
async fn list(
    store: &dyn ProcessorStore,
    printer: Printer,
    kind: Option<String>,
    status: Option<InstanceStatus>,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let unfiltered = kind.is_none() && status.is_none();
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut after: Option<(String, String)> = None;
    let mut printed = 0u64;
    while remaining > 0 {
        let page_len = remaining.min(PAGE_INSTANCES as u64) as usize;
        let filter = InstanceFilter {
            kind: kind.clone(),
            status,
            after: after.take(),
            limit: page_len,
        };
        let page = store.list(&filter).await?;
        debug_assert!(page.len() <= page_len, "the store returned more than asked");
        for r in &page {
            printer.value(&InstanceLine::from(r), || human_line(r))?;
        }
        printed += page.len() as u64;
        remaining -= page.len() as u64;
        match page.last() {
            Some(last) if page.len() == page_len => {
                after = Some((last.kind.clone(), last.id.clone()))
            }
            _ => break,
        }
    }
    if !printer.json {
        if printed == 0 {
            eprintln!("no saga instances match");
        }
        if unfiltered {
            eprintln!("{}", summary(&store.count_by_status().await?));
        }
    }
    Ok(())
}

fn human_line(r: &InstanceRecord) -> String {
    let error = r
        .last_error
        .as_deref()
        .map(|e| format!("  {}", truncate(&one_line(e), HUMAN_ERROR_CHARS_MAX)))
        .unwrap_or_default();
    format!(
        "{:<20}  {:<24}  {:<19}  {:<36}  v{:<3}  updated {}{error}",
        r.id,
        r.kind,
        r.status,
        r.state,
        r.version,
        human_time(&r.updated_at)
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `4 instances: saga:checkout running 2, completed 1; process:shipping running 1`.
fn summary(counts: &[StatusCount]) -> String {
    let mut by_kind: BTreeMap<&str, BTreeMap<usize, (InstanceStatus, u64)>> = BTreeMap::new();
    let mut total = 0u64;
    for c in counts {
        // Statuses in their display order, whatever order the store returned.
        let rank = InstanceStatus::ALL
            .iter()
            .position(|s| *s == c.status)
            .unwrap_or(usize::MAX);
        let entry = by_kind
            .entry(c.kind.as_str())
            .or_default()
            .entry(rank)
            .or_insert((c.status, 0));
        entry.1 += c.count;
        total += c.count;
    }
    if total == 0 {
        return "0 instances".to_string();
    }
    let kinds: Vec<String> = by_kind
        .iter()
        .map(|(kind, statuses)| {
            let parts: Vec<String> = statuses
                .values()
                .map(|(status, n)| format!("{status} {n}"))
                .collect();
            format!("{kind} {}", parts.join(", "))
        })
        .collect();
    format!("{total} instances: {}", kinds.join("; "))
}

/// Finds instance `id`: in `kind`, or in whichever kind has it.
async fn find(
    store: &dyn ProcessorStore,
    kind: Option<&str>,
    id: &str,
) -> anyhow::Result<InstanceRecord> {
    if let Some(kind) = kind {
        return store.load(kind, id).await?.ok_or_else(|| {
            NotFound(format!(
                "no {kind} instance {id:?} (list them with `runnel sagas list --type {kind}`)"
            ))
            .into()
        });
    }
    let kinds: BTreeSet<String> = store
        .count_by_status()
        .await?
        .into_iter()
        .map(|c| c.kind)
        .collect();
    let mut found = Vec::new();
    for kind in &kinds {
        if let Some(record) = store.load(kind, id).await? {
            found.push(record);
        }
    }
    match found.len() {
        0 => Err(NotFound(format!(
            "no saga instance {id:?} (list them with `runnel sagas list`)"
        ))
        .into()),
        1 => Ok(found.remove(0)),
        _ => {
            let kinds: Vec<&str> = found.iter().map(|r| r.kind.as_str()).collect();
            Err(BadInput(format!(
                "instance {id:?} exists in {}: say which with --type",
                kinds.join(" and ")
            ))
            .into())
        }
    }
}

/// A history line as `show` prints it with `--json`.
#[derive(Serialize)]
struct HistoryItem<'a> {
    seq: u64,
    at: DateTime<Utc>,
    step: Option<&'a str>,
    what: &'a str,
    detail: Option<&'a str>,
}

/// A pending timer as `show` prints it with `--json`.
#[derive(Serialize)]
struct TimerItem<'a> {
    id: u64,
    name: &'a str,
    due: DateTime<Utc>,
    leased_to: Option<&'a str>,
    leased_until: Option<DateTime<Utc>>,
}

/// What `show --json` prints.
#[derive(Serialize)]
struct ShowLine<'a> {
    #[serde(flatten)]
    instance: InstanceLine<'a>,
    data: Value,
    progress: Value,
    history: Vec<HistoryItem<'a>>,
    timers: Vec<TimerItem<'a>>,
}

/// `runnel sagas show`.
async fn show(
    store: &dyn ProcessorStore,
    printer: Printer,
    kind: Option<&str>,
    id: &str,
) -> anyhow::Result<()> {
    let record = find(store, kind, id).await?;
    let history = all_history(store, &record).await?;
    let timers = store.timers(&record.kind, &record.id).await?;
    if printer.json {
        let line = ShowLine {
            instance: InstanceLine::from(&record),
            data: json_or_text(&record.data),
            progress: json_or_text(&record.progress),
            history: history
                .iter()
                .map(|h| HistoryItem {
                    seq: h.seq,
                    at: h.at,
                    step: h.line.step.as_deref(),
                    what: &h.line.what,
                    detail: h.line.detail.as_deref(),
                })
                .collect(),
            timers: timers
                .iter()
                .map(|t| TimerItem {
                    id: t.id,
                    name: &t.name,
                    due: t.due,
                    leased_to: t.leased_to.as_ref().map(|(owner, _)| owner.as_str()),
                    leased_until: t.leased_to.as_ref().map(|(_, until)| *until),
                })
                .collect(),
        };
        return print_line(&serde_json::to_string(&line)?);
    }
    for line in human_details(&record, &history, &timers) {
        print_line(&line)?;
    }
    Ok(())
}

/// The whole history, page by page.
async fn all_history(
    store: &dyn ProcessorStore,
    record: &InstanceRecord,
) -> anyhow::Result<Vec<HistoryRecord>> {
    let mut history: Vec<HistoryRecord> = Vec::new();
    loop {
        let after = history.last().map_or(0, |h| h.seq);
        let page = store
            .history(&record.kind, &record.id, after, PAGE_HISTORY)
            .await?;
        debug_assert!(
            page.iter().all(|h| h.seq > after),
            "history pages move forward"
        );
        let full = page.len() == PAGE_HISTORY;
        history.extend(page);
        if !full {
            return Ok(history);
        }
    }
}

/// Stored JSON as a value; anything else as a string saying what it is.
fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(format!("<{} bytes, not JSON>", bytes.len())))
}

fn human_details(
    r: &InstanceRecord,
    history: &[HistoryRecord],
    timers: &[TimerRecord],
) -> Vec<String> {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let mut out = vec![
        format!("{} instance {}", r.kind, r.id),
        format!("  status              {}", r.status),
        format!("  state               {}", r.state),
        format!("  definition version  {}", r.definition_version),
        format!("  version             {}", r.version),
        format!("  correlation         {}", or_dash(r.correlation.clone())),
        format!("  created             {}", human_time(&r.created_at)),
        format!("  updated             {}", human_time(&r.updated_at)),
        format!(
            "  finished            {}",
            or_dash(r.finished_at.as_ref().map(human_time))
        ),
    ];
    match &r.last_error {
        None => out.push("  last error          -".to_string()),
        Some(e) => {
            let mut lines = e.lines();
            out.push(format!(
                "  last error          {}",
                lines.next().unwrap_or_default()
            ));
            out.extend(lines.map(|l| format!("                      {l}")));
        }
    }
    out.push("data".to_string());
    match serde_json::from_slice::<Value>(&r.data) {
        Ok(v) => {
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            out.extend(pretty.lines().map(|l| format!("  {l}")));
        }
        Err(_) => out.push(format!("  <{} bytes, not JSON>", r.data.len())),
    }
    out.push(format!("history ({} lines)", history.len()));
    for h in history {
        let step = h
            .line
            .step
            .as_deref()
            .map(|s| format!("  {s}"))
            .unwrap_or_default();
        out.push(format!(
            "  #{:<4} {}  {}{step}",
            h.seq,
            human_time(&h.at),
            h.line.what
        ));
        if let Some(detail) = &h.line.detail {
            out.extend(detail.lines().map(|l| format!("        {l}")));
        }
    }
    if timers.is_empty() {
        out.push("timers: none pending".to_string());
    } else {
        out.push(format!("timers ({} pending)", timers.len()));
        for t in timers {
            let lease = match &t.leased_to {
                Some((owner, until)) => {
                    format!("leased to {owner} until {}", human_time(until))
                }
                None => "not leased".to_string(),
            };
            out.push(format!(
                "  {:<12} due {}  {lease}",
                t.name,
                human_time(&t.due)
            ));
        }
    }
    out
}

/// What `retry | skip-step | compensate` print with `--json`.
#[derive(Serialize)]
struct ActionLine<'a> {
    kind: &'a str,
    id: &'a str,
    action: &'a str,
    /// The instance's status when the request was recorded.
    status: InstanceStatus,
    /// The instance's version with the request recorded.
    requested_at_version: u64,
    /// With `--wait`: the instance once the service took the request.
    applied: Option<InstanceLine<'a>>,
}

/// `runnel sagas retry | skip-step | compensate`.
async fn act(
    store: &dyn ProcessorStore,
    printer: Printer,
    kind: Option<&str>,
    id: &str,
    action: OperatorAction,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let found = find(store, kind, id).await?;
    let kind = found.kind.as_str();
    let Some(saga) = kind.strip_prefix(SAGA_KIND_PREFIX) else {
        return Err(not_a_saga(kind).into());
    };
    let before = request_action(store, &SystemClock, kind, id, action)
        .await
        .map_err(saga_error)?;
    // The request is one commit on the version request_action read.
    let requested_at_version = before.version + 1;
    let what = action.as_str();
    if !printer.json {
        print_line(&format!(
            "recorded the {what} request for {kind} instance {id} ({}; request at version \
             {requested_at_version}); the service running saga {saga} applies it when it claims \
             the `operator` timer",
            before.status
        ))?;
    }
    let applied = match wait {
        None => None,
        Some(wait) => {
            let after = wait_until_taken(store, kind, id, what, requested_at_version, wait).await?;
            if !printer.json {
                print_line(&format!(
                    "applied: {kind} instance {id} is now {} ({}), version {}",
                    after.status, after.state, after.version
                ))?;
            }
            Some(after)
        }
    };
    if printer.json {
        let line = ActionLine {
            kind,
            id,
            action: what,
            status: before.status,
            requested_at_version,
            applied: applied.as_ref().map(InstanceLine::from),
        };
        print_line(&serde_json::to_string(&line)?)?;
    }
    Ok(())
}

/// Polls until the service running the saga took the request: the operator timer is gone
/// (a timer is deleted in the commit that applies it). Returns the instance then.
async fn wait_until_taken(
    store: &dyn ProcessorStore,
    kind: &str,
    id: &str,
    what: &str,
    requested_at_version: u64,
    wait: Duration,
) -> anyhow::Result<InstanceRecord> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Some(record) = store.load(kind, id).await? else {
            anyhow::bail!("{kind} instance {id} was purged while waiting for the {what} request");
        };
        let pending = store
            .timers(kind, id)
            .await?
            .iter()
            .any(|t| t.name == OPERATOR_TIMER);
        if !pending {
            if record.version > requested_at_version {
                return Ok(record);
            }
            // Taken without a transition: it no longer applied when the service read it.
            anyhow::bail!(
                "the service running the saga dropped the {what} request: it no longer \
                 applied, the instance is {} ({})",
                record.status,
                record.state
            );
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "no service took the {what} request for {kind} instance {id} within {}: the \
                 service running saga {} may be down; the request stays recorded and is \
                 applied once it runs (see `runnel sagas show {id}`)",
                human_duration(wait),
                kind.trim_start_matches(SAGA_KIND_PREFIX)
            );
        }
        tokio::time::sleep(WAIT_POLL.min(deadline - now)).await;
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.is_zero() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// A saga error with the exit code it deserves: a refused action is bad input (nothing
/// changed), a missing instance is not found, the store's errors keep their own codes.
fn saga_error(e: SagaError) -> anyhow::Error {
    match e {
        SagaError::NotApplicable { .. } => BadInput(e.to_string()).into(),
        SagaError::UnknownInstance { .. } => NotFound(e.to_string()).into(),
        SagaError::Store(store) => anyhow::Error::new(store),
        other => anyhow::Error::new(other),
    }
}

/// `runnel sagas purge`.
async fn purge(
    store: &dyn ProcessorStore,
    printer: Printer,
    kind: Option<&str>,
    finished_before: DateTime<Utc>,
) -> anyhow::Result<()> {
    // indicatif hides the counter when stderr is not a terminal.
    let counter = crate::progress::counter("finished instances purged");
    let mut purged = 0u64;
    let outcome = loop {
        match store
            .purge_finished(kind, finished_before, PURGE_BATCH)
            .await
        {
            Ok(n) => {
                debug_assert!(n <= PURGE_BATCH as u64, "the store purged more than asked");
                purged += n;
                counter.set_position(purged);
                if n < PURGE_BATCH as u64 {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    counter.finish_and_clear();
    outcome.with_context(|| format!("purged {purged} finished instances, then"))?;
    printer.value(&serde_json::json!({ "purged": purged }), || {
        format!(
            "purged {purged} finished instances{} (finished before {})",
            kind.map(|k| format!(" of {k}")).unwrap_or_default(),
            human_time(&finished_before)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_saga_names_or_full_kinds() {
        assert_eq!(parse_kind("checkout").unwrap(), "saga:checkout");
        assert_eq!(parse_kind("process:shipping").unwrap(), "process:shipping");
        for bad in [
            "",
            "saga:",
            ":",
            "a\u{7}b",
            &"x".repeat(PROCESSOR_NAME_LEN_MAX),
        ] {
            assert!(parse_kind(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_status_lists_the_valid_ones() {
        assert_eq!(
            parse_status("needs-attention").unwrap(),
            InstanceStatus::NeedsAttention
        );
        let e = parse_status("paused").unwrap_err().0;
        for s in InstanceStatus::ALL {
            assert!(e.contains(s.as_str()), "{e}");
        }
    }

    #[test]
    fn the_summary_counts_per_kind_in_status_order() {
        let c = |kind: &str, status, count| StatusCount {
            kind: kind.into(),
            status,
            count,
        };
        let counts = [
            c("saga:checkout", InstanceStatus::Completed, 1),
            c("process:shipping", InstanceStatus::Running, 1),
            c("saga:checkout", InstanceStatus::Running, 2),
        ];
        assert_eq!(
            summary(&counts),
            "4 instances: process:shipping running 1; saga:checkout running 2, completed 1"
        );
        assert_eq!(summary(&[]), "0 instances");
    }

    #[test]
    fn operator_actions_are_for_sagas_only() {
        let args = SagasActionArgs {
            id: "o-1".into(),
            kind: Some("process:shipping".into()),
            wait: None,
        };
        let e = prepare_action(args, OperatorAction::Retry).unwrap_err();
        assert!(e.to_string().contains("not a saga"), "{e}");
        let args = SagasActionArgs {
            id: "o-1".into(),
            kind: None,
            wait: Some("soon".into()),
        };
        assert!(prepare_action(args, OperatorAction::Retry).is_err());
    }
}

//! `runnel dlq list | show | replay | purge`: a thin shell over `runnel::dead_letter`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use runnel::dead_letter::{
    self, DeadLetterSummary, ReplayProgress, ReplayReport, ReplaySelection, ReplayTarget, Replayer,
};
use runnel_core::bus::Publisher;
use runnel_core::dead_letter::{DeadLetter, DeadLetterFilter, DeadLetterId};
use runnel_core::{GroupName, TopicName};
use serde::Serialize;

use crate::cli::{
    DlqDrainArgs, DlqFilterArgs, DlqListArgs, DlqPurgeArgs, DlqReplayArgs, DlqShowArgs,
};
use crate::exit::BadInput;
use crate::output::{print_line, Printer};
use crate::time_args::{parse_duration, parse_time, time_before};
use runnel::connect::Stores;

/// Dead letters fetched per store call while listing.
const PAGE_ITEMS: usize = 500;
const _: () = assert!(PAGE_ITEMS <= runnel_core::dead_letter::DEAD_LETTER_LIST_LIMIT_MAX);
/// Longest error text on a human list line, in characters.
const HUMAN_ERROR_CHARS_MAX: usize = 100;

/// Builds the store filter from the flags (names and times validated here, so a typo is
/// a one-line exit-code-2 error before the store is touched).
pub fn parse_filter(
    args: &DlqFilterArgs,
    include_replayed: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<DeadLetterFilter> {
    let filter = DeadLetterFilter {
        topic: args
            .topic
            .as_deref()
            .map(|t| TopicName::new(t).map_err(|e| BadInput(format!("--topic: {e}"))))
            .transpose()?,
        group: args
            .group
            .as_deref()
            .map(|g| GroupName::new(g).map_err(|e| BadInput(format!("--group: {e}"))))
            .transpose()?,
        error_contains: args.error.clone(),
        since: args
            .since
            .as_deref()
            .map(|t| parse_time(t, now).map_err(|e| BadInput(format!("--since: {}", e.0))))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time(t, now).map_err(|e| BadInput(format!("--until: {}", e.0))))
            .transpose()?,
        include_replayed,
    };
    filter
        .validate()
        .map_err(|e| BadInput(format!("--error: {e}")))?;
    Ok(filter)
}

fn filter_is_empty(args: &DlqFilterArgs) -> bool {
    args.topic.is_none()
        && args.group.is_none()
        && args.error.is_none()
        && args.since.is_none()
        && args.until.is_none()
}

/// `runnel dlq list`.
pub async fn list(stores: &Stores, printer: Printer, args: DlqListArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return Err(BadInput("--limit must be at least 1".into()).into());
    }
    let filter = parse_filter(&args.filter, args.include_replayed, Utc::now())?;
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut after: Option<DeadLetterId> = None;
    let mut printed = 0u64;
    while remaining > 0 {
        let page_len = remaining.min(PAGE_ITEMS as u64) as usize;
        let page = stores.dead_letters.list(&filter, after, page_len).await?;
        for letter in &page {
            let summary = DeadLetterSummary::from(letter);
            printer.value(&summary, || human_summary(&summary))?;
        }
        printed += page.len() as u64;
        remaining -= page.len() as u64;
        match page.last() {
            Some(last) if page.len() == page_len => after = Some(last.id),
            _ => break,
        }
    }
    if printed == 0 && !printer.json {
        eprintln!("no dead letters match");
    }
    Ok(())
}

fn human_summary(s: &DeadLetterSummary) -> String {
    let replayed = if s.replay_count > 0 {
        format!("  replayed×{}", s.replay_count)
    } else {
        String::new()
    };
    format!(
        "{:>6}  {}  {}/{}  {}  attempts {}{}  {}",
        s.id,
        human_time(&s.dead_lettered_at),
        s.topic,
        s.group,
        s.event_type,
        s.attempts,
        replayed,
        truncate(&s.last_error, HUMAN_ERROR_CHARS_MAX)
    )
}

/// `runnel dlq show`.
pub async fn show(stores: &Stores, printer: Printer, args: DlqShowArgs) -> anyhow::Result<()> {
    let letter = dead_letter::show(&*stores.dead_letters, DeadLetterId(args.id)).await?;
    if printer.json {
        return print_line(&serde_json::to_string(&letter)?);
    }
    for line in human_details(&letter) {
        print_line(&line)?;
    }
    Ok(())
}

fn human_details(d: &DeadLetter) -> Vec<String> {
    let m = &d.message;
    let mut out = vec![
        format!("dead letter {}", d.id),
        format!("  topic           {}", d.topic),
        format!("  group           {}", d.group),
        format!("  dead-lettered   {}", human_time(&d.dead_lettered_at)),
        format!(
            "  failed          {} … {} ({} failures kept)",
            human_time(&d.first_failed_at),
            human_time(&d.last_failed_at),
            d.failures.len()
        ),
        match d.last_replayed_at {
            Some(t) => format!(
                "  replayed        {} times, last {}",
                d.replay_count,
                human_time(&t)
            ),
            None => "  replayed        never".to_string(),
        },
        "message".to_string(),
        format!("  id              {}", m.id),
        format!("  type            {}", m.event_type),
        format!("  source          {}", m.source),
    ];
    let optional = [
        ("time", m.time.map(|t| human_time(&t))),
        ("subject", m.subject.clone()),
        ("key", m.key.clone()),
        ("correlation id", m.correlation_id.clone()),
        ("causation id", m.causation_id.clone()),
        ("traceparent", m.traceparent.clone()),
        ("tracestate", m.tracestate.clone()),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            out.push(format!("  {name:<15} {v}"));
        }
    }
    out.push(format!("  content type    {}", m.content_type));
    for (k, v) in &m.headers {
        out.push(format!("  header          {k}={v}"));
    }
    out.push(format!("  payload         {}", payload_text(m)));
    out.push("failures".to_string());
    for f in &d.failures {
        let kind = if f.permanent {
            "permanent"
        } else {
            "retryable"
        };
        out.push(format!("  #{:<4} {}  {kind}", f.attempt, human_time(&f.at)));
        for line in f.error.lines() {
            out.push(format!("        {line}"));
        }
    }
    out
}

fn payload_text(m: &runnel_core::Message) -> String {
    match m.payload_json() {
        Ok(v) => v.to_string(),
        Err(_) => format!("<{} bytes of {}>", m.payload.len(), m.content_type),
    }
}

/// The counts `dlq replay` prints at the end.
#[derive(Serialize)]
struct ReplayLine<'a> {
    total: u64,
    replayed: u64,
    skipped: u64,
    skipped_details: &'a [dead_letter::SkippedDeadLetter],
}

/// `runnel dlq replay`.
pub async fn replay(
    stores: &Stores,
    publisher: Arc<dyn Publisher>,
    printer: Printer,
    args: DlqReplayArgs,
) -> anyhow::Result<()> {
    let selection = match (args.id, args.all) {
        (Some(id), _) => ReplaySelection::One(DeadLetterId(id)),
        (None, true) => ReplaySelection::all(),
        (None, false) if filter_is_empty(&args.filter) && !args.include_replayed => {
            return Err(BadInput(
                "name what to replay: an ID, --all, or filters (--topic, --group, --error, \
                 --since, --until)"
                    .into(),
            )
            .into())
        }
        (None, false) => ReplaySelection::Matching(parse_filter(
            &args.filter,
            args.include_replayed,
            Utc::now(),
        )?),
    };
    let target = match (&args.to_group, args.to_own_group) {
        (Some(g), _) => ReplayTarget::Group(
            GroupName::new(g.as_str()).map_err(|e| BadInput(format!("--to-group: {e}")))?,
        ),
        (None, true) => ReplayTarget::OwnGroup,
        (None, false) => ReplayTarget::OriginalTopic,
    };
    let replayer = Replayer::new(stores.dead_letters.clone(), publisher);
    // A bar only for bulk replays; indicatif hides it when stderr is not a terminal.
    let bar = match &selection {
        ReplaySelection::One(_) => None,
        ReplaySelection::Matching(_) => Some(crate::progress::bar(
            replayer.count(&selection).await?,
            "dead letters",
        )),
    };
    let mut on_progress = |p: &ReplayProgress| {
        if let Some(bar) = &bar {
            if bar.length() < Some(p.total) {
                bar.set_length(p.total);
            }
            bar.set_position(p.done());
            bar.set_message(format!("{} skipped", p.skipped));
        }
    };
    let outcome = replayer.replay(&selection, &target, &mut on_progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = outcome?;
    print_report(printer, &report)
}

fn print_report(printer: Printer, report: &ReplayReport) -> anyhow::Result<()> {
    let line = ReplayLine {
        total: report.total,
        replayed: report.replayed,
        skipped: report.skipped,
        skipped_details: &report.skipped_details,
    };
    printer.value(&line, || {
        format!("replayed {}, skipped {}", report.replayed, report.skipped)
    })?;
    if !printer.json {
        for s in &report.skipped_details {
            eprintln!("skipped dead letter {}: {}", s.id, s.reason);
        }
    }
    Ok(())
}

/// What `dlq purge` prints.
#[derive(Serialize)]
struct PurgeLine {
    purged: u64,
    dry_run: bool,
    older_than: DateTime<Utc>,
}

/// `runnel dlq purge`.
pub async fn purge(stores: &Stores, printer: Printer, args: DlqPurgeArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let age =
        parse_duration(&args.older_than).map_err(|e| BadInput(format!("--older-than: {}", e.0)))?;
    let older_than = time_before(now, age)?;
    let filter = parse_filter(&args.filter, !args.pending_only, now)?;
    let purged = if args.dry_run {
        let until = Some(filter.until.map_or(older_than, |u| u.min(older_than)));
        stores
            .dead_letters
            .count(&DeadLetterFilter { until, ..filter })
            .await?
    } else {
        dead_letter::purge(&*stores.dead_letters, &filter, older_than).await?
    };
    let line = PurgeLine {
        purged,
        dry_run: args.dry_run,
        older_than,
    };
    printer.value(&line, || {
        let verb = if args.dry_run {
            "would purge"
        } else {
            "purged"
        };
        format!(
            "{verb} {purged} dead letters dead-lettered before {}",
            human_time(&older_than)
        )
    })
}

/// What `dlq drain` prints.
#[derive(Serialize)]
struct DrainLine<'a> {
    drained: usize,
    topic: &'a str,
    group: &'a str,
}

/// `runnel dlq drain`.
pub async fn drain(
    stores: &Stores,
    bus: &runnel::connect::Bus,
    printer: Printer,
    args: DlqDrainArgs,
) -> anyhow::Result<()> {
    let topic = TopicName::new(&args.topic).map_err(|e| BadInput(format!("--topic: {e}")))?;
    let group = GroupName::new(&args.group).map_err(|e| BadInput(format!("--group: {e}")))?;
    if args.max == 0 {
        return Err(BadInput("--max must be at least 1".into()).into());
    }
    let Some(drain) = &bus.dead_letter_drain else {
        return Err(BadInput(format!(
            "the {} bus has no dead-letter queue of its own to drain: its consumers \
             dead-letter into the store directly (see `runnel dlq list`); give a broker with --bus",
            bus.url()
        ))
        .into());
    };
    let drained = drain
        .drain_dead_letters(&topic, &group, &*stores.dead_letters, args.max)
        .await?;
    let line = DrainLine {
        drained,
        topic: topic.as_str(),
        group: group.as_str(),
    };
    printer.value(&line, || {
        format!("moved {drained} dead letters of {topic}/{group} from the broker into the store")
    })
}

fn human_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
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
    fn filters_are_validated_before_the_store_is_touched() {
        let now = Utc::now();
        let ok = DlqFilterArgs {
            topic: Some("orders".into()),
            since: Some("2h".into()),
            ..Default::default()
        };
        let f = parse_filter(&ok, false, now).unwrap();
        assert_eq!(f.topic.unwrap().as_str(), "orders");
        assert_eq!(f.since, Some(now - chrono::TimeDelta::hours(2)));
        for bad in [
            DlqFilterArgs {
                topic: Some("no spaces".into()),
                ..Default::default()
            },
            DlqFilterArgs {
                since: Some("last tuesday".into()),
                ..Default::default()
            },
            DlqFilterArgs {
                error: Some("\u{1e}".into()),
                ..Default::default()
            },
        ] {
            assert!(parse_filter(&bad, false, now).is_err(), "{bad:?}");
        }
    }
}

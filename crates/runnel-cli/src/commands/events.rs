//! `runnel events tail`: `$all` from a position, optionally followed live.

use futures_util::StreamExt as _;
use runnel_core::{EventFilter, Position};

use crate::cli::TailArgs;
use crate::exit::BadInput;
use crate::output::Printer;
use runnel::connect::Stores;

/// Events fetched per store call while reading without `--follow`.
const PAGE_EVENTS: usize = 1000;

/// Where `--from` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailFrom {
    /// At this position (inclusive).
    Position(u64),
    /// After the current head: only events appended from now on.
    End,
}

/// Parses `--from`: a position, `start` or `end`.
pub fn parse_from(text: &str) -> Result<TailFrom, BadInput> {
    match text.trim() {
        "end" => Ok(TailFrom::End),
        "start" => Ok(TailFrom::Position(0)),
        n => n.parse::<u64>().map(TailFrom::Position).map_err(|_| {
            BadInput(format!(
                "--from {text:?} is not a position number, `start` or `end`"
            ))
        }),
    }
}

/// `runnel events tail`.
pub async fn tail(stores: &Stores, printer: Printer, args: TailArgs) -> anyhow::Result<()> {
    let filter = EventFilter {
        categories: args.categories,
        event_types: args.event_types,
    };
    filter.validate()?;
    if args.limit == Some(0) {
        return Err(BadInput("--limit must be at least 1".into()).into());
    }
    // `read_all` and subscriptions take "after"; --from is inclusive.
    let after = match parse_from(&args.from)? {
        TailFrom::Position(p) => Position(p.saturating_sub(1)),
        TailFrom::End => stores.events.head_position().await?,
    };
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    if args.follow {
        follow(stores, printer, after, filter, remaining).await
    } else {
        let mut after = after;
        while remaining > 0 {
            let page_len = remaining.min(PAGE_EVENTS as u64) as usize;
            let page = stores.events.read_all(after, &filter, page_len).await?;
            for event in &page {
                printer.event(event)?;
            }
            remaining -= page.len() as u64;
            match page.last() {
                Some(last) if page.len() == page_len => after = last.position,
                _ => break,
            }
        }
        Ok(())
    }
}

async fn follow(
    stores: &Stores,
    printer: Printer,
    after: Position,
    filter: EventFilter,
    mut remaining: u64,
) -> anyhow::Result<()> {
    tracing::debug!(after = %after, "following $all until Ctrl-C");
    let mut events = stores.events.clone().subscribe_all(after, filter);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while remaining > 0 {
        tokio::select! {
            signal = &mut ctrl_c => {
                signal?;
                tracing::debug!("interrupted; stopping");
                return Ok(());
            }
            next = events.next() => match next {
                Some(event) => {
                    printer.event(&event?)?;
                    remaining -= 1;
                }
                None => return Ok(()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_accepts_positions_start_and_end() {
        assert_eq!(parse_from("12").unwrap(), TailFrom::Position(12));
        assert_eq!(parse_from("start").unwrap(), TailFrom::Position(0));
        assert_eq!(parse_from("end").unwrap(), TailFrom::End);
        assert!(parse_from("-3").is_err());
    }
}

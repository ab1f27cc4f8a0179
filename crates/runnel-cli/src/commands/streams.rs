//! `runnel streams append | read | list`.

use anyhow::Context as _;
use runnel_core::store::READ_LIMIT_MAX;
use runnel_core::{EventId, ExpectedRevision, Metadata, NewEvent, ReadStream, StreamName};
use serde::Serialize;

use crate::cli::{AppendArgs, ListArgs, ReadArgs};
use crate::exit::BadInput;
use crate::json_arg::JsonArgs;
use crate::output::Printer;
use runnel::connect::Stores;

/// Events or streams fetched per store call while listing.
const PAGE_ITEMS: usize = 1000;
const _: () = assert!(PAGE_ITEMS <= READ_LIMIT_MAX);

/// The metadata fields `--metadata` accepts.
const METADATA_FIELDS: [&str; 6] = [
    "correlation_id",
    "causation_id",
    "user_id",
    "traceparent",
    "tracestate",
    "headers",
];

/// Parses a stream name argument (a bad one is a one-line, exit-code-2 error).
pub fn parse_stream(name: &str) -> anyhow::Result<StreamName> {
    Ok(StreamName::new(name)?)
}

/// Parses `--expected`: a revision number, `any`, `no-stream` or `exists`.
pub fn parse_expected(text: &str) -> Result<ExpectedRevision, BadInput> {
    match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "any" => Ok(ExpectedRevision::Any),
        "no-stream" | "nostream" | "none" => Ok(ExpectedRevision::NoStream),
        "exists" | "stream-exists" => Ok(ExpectedRevision::StreamExists),
        other => other
            .parse::<u64>()
            .map(ExpectedRevision::Exact)
            .map_err(|_| {
                BadInput(format!(
                    "--expected {text:?} is not a revision number, `any`, `no-stream` or `exists`"
                ))
            }),
    }
}

/// Checks `--metadata`: a JSON object with only the known fields.
pub fn metadata_from_json(value: serde_json::Value) -> Result<Metadata, BadInput> {
    let Some(object) = value.as_object() else {
        return Err(BadInput("--metadata must be a JSON object".into()));
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !METADATA_FIELDS.contains(&k.as_str()))
    {
        return Err(BadInput(format!(
            "--metadata has an unknown field {unknown:?}; expected {} (put anything else in \"headers\")",
            METADATA_FIELDS.join(", ")
        )));
    }
    serde_json::from_value(value).map_err(|e| BadInput(format!("--metadata: {e}")))
}

#[derive(Serialize)]
struct Appended<'a> {
    stream: &'a str,
    event_id: String,
    revision: u64,
    position: u64,
}

/// One append, read from the flags and checked.
pub struct PreparedAppend {
    stream: StreamName,
    expected: ExpectedRevision,
    event: NewEvent,
}

/// Reads the flags of `runnel streams append` (`--data` and `--metadata` may name a file or
/// standard input) and checks them. Called before the store is opened, so bad input
/// changes nothing, not even by creating an empty store file.
pub fn prepare_append(args: AppendArgs) -> anyhow::Result<PreparedAppend> {
    let stream = parse_stream(&args.stream)?;
    let expected = parse_expected(&args.expected)?;
    let mut json_args = JsonArgs::default();
    let data = json_args.parse("--data", &args.data)?;
    let mut event = NewEvent::json(args.event_type, &data);
    if let Some(metadata) = &args.metadata {
        let metadata = json_args.parse("--metadata", metadata)?;
        event = event.with_metadata(metadata_from_json(metadata)?);
    }
    if let Some(id) = &args.id {
        let id = uuid::Uuid::parse_str(id)
            .map_err(|e| BadInput(format!("--id {id:?} is not a UUID: {e}")))?;
        event = event.with_id(EventId(id));
    }
    Ok(PreparedAppend {
        stream,
        expected,
        event,
    })
}

/// `runnel streams append`.
pub async fn append(
    stores: &Stores,
    printer: Printer,
    prepared: PreparedAppend,
) -> anyhow::Result<()> {
    let PreparedAppend {
        stream,
        expected,
        event,
    } = prepared;
    let event_id = event.id;
    let result = stores.events.append(&stream, expected, vec![event]).await?;
    let appended = Appended {
        stream: stream.as_str(),
        event_id: event_id.to_string(),
        revision: result.next_expected_revision,
        position: result.position.get(),
    };
    printer.value(&appended, || {
        format!(
            "appended to {} at revision {} (position {}, event id {})",
            appended.stream, appended.revision, appended.position, appended.event_id
        )
    })
}

/// `runnel streams read`.
pub async fn read(stores: &Stores, printer: Printer, args: ReadArgs) -> anyhow::Result<()> {
    let stream = parse_stream(&args.stream)?;
    if args.limit == Some(0) {
        return Err(BadInput("--limit must be at least 1".into()).into());
    }
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut next = args.from;
    let mut printed = 0u64;
    while remaining > 0 {
        let page_len = remaining.min(PAGE_ITEMS as u64) as usize;
        let mut options = if args.backward {
            ReadStream::backward(page_len)
        } else {
            ReadStream::forward(page_len)
        };
        options.from_revision = next;
        let page = stores
            .events
            .read_stream(&stream, options)
            .await
            .with_context(|| format!("cannot read stream {stream}"))?;
        for event in &page {
            printer.event(event)?;
        }
        printed += page.len() as u64;
        remaining -= page.len() as u64;
        let Some(last) = page.last() else { break };
        if page.len() < page_len {
            break;
        }
        next = if args.backward {
            match last.revision.checked_sub(1) {
                Some(0) | None => break,
                Some(r) => Some(r),
            }
        } else {
            Some(last.revision + 1)
        };
    }
    if printed == 0 && !printer.json {
        eprintln!("stream {stream} has no events{}", from_note(args.from));
    }
    Ok(())
}

fn from_note(from: Option<u64>) -> String {
    from.map(|r| format!(" from revision {r}"))
        .unwrap_or_default()
}

/// `runnel streams list`.
pub async fn list(stores: &Stores, printer: Printer, args: ListArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return Err(BadInput("--limit must be at least 1".into()).into());
    }
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut after: Option<StreamName> = None;
    let mut printed = 0u64;
    while remaining > 0 {
        let page_len = remaining.min(PAGE_ITEMS as u64) as usize;
        let page = stores
            .events
            .list_streams(args.category.as_deref(), after.as_ref(), page_len)
            .await?;
        for info in &page {
            printer.stream(info)?;
        }
        printed += page.len() as u64;
        remaining -= page.len() as u64;
        match page.last() {
            Some(last) if page.len() == page_len => after = Some(last.stream.clone()),
            _ => break,
        }
    }
    if printed == 0 && !printer.json {
        match &args.category {
            Some(c) => eprintln!("no streams in category {c}"),
            None => eprintln!("no streams"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_revision_spellings() {
        assert_eq!(parse_expected("any").unwrap(), ExpectedRevision::Any);
        assert_eq!(
            parse_expected("no-stream").unwrap(),
            ExpectedRevision::NoStream
        );
        assert_eq!(
            parse_expected("NO_STREAM").unwrap(),
            ExpectedRevision::NoStream
        );
        assert_eq!(
            parse_expected("exists").unwrap(),
            ExpectedRevision::StreamExists
        );
        assert_eq!(parse_expected("7").unwrap(), ExpectedRevision::Exact(7));
        assert!(parse_expected("-1").is_err());
        assert!(parse_expected("seven").is_err());
    }

    #[test]
    fn metadata_accepts_known_fields_only() {
        let m =
            metadata_from_json(serde_json::json!({"correlation_id": "c", "headers": {"k": "v"}}))
                .unwrap();
        assert_eq!(m.correlation_id.as_deref(), Some("c"));
        assert_eq!(m.headers.get("k").map(String::as_str), Some("v"));
        assert!(metadata_from_json(serde_json::json!({"tenant": "x"})).is_err());
        assert!(metadata_from_json(serde_json::json!([1])).is_err());
    }
}

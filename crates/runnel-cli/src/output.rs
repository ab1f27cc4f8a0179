//! How listings are printed: one JSON object per line with `--json`, otherwise one
//! compact human line per item. Every line is flushed at once (followers are read live by
//! other programs), and a closed stdout ends the command quietly.

use std::io::Write as _;

use runnel_core::{RecordedEvent, StreamInfo};
use serde::Serialize;

use crate::exit::BrokenPipe;

/// Longest payload shown on a human line, in characters.
const HUMAN_DATA_CHARS_MAX: usize = 160;

/// Where listings go.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub json: bool,
}

/// An event as the CLI prints it with `--json`.
#[derive(Serialize)]
struct EventLine<'a> {
    stream: &'a str,
    revision: u64,
    position: u64,
    event_type: &'a str,
    recorded_at: String,
    data: serde_json::Value,
    metadata: &'a runnel_core::Metadata,
    id: String,
    schema_version: u32,
    content_type: &'a str,
}

/// A stream summary as the CLI prints it with `--json`.
#[derive(Serialize)]
struct StreamLine<'a> {
    stream: &'a str,
    revision: u64,
    last_position: u64,
    created_at: String,
    updated_at: String,
}

impl Printer {
    /// Prints one event.
    pub fn event(&self, event: &RecordedEvent) -> anyhow::Result<()> {
        let line = if self.json {
            let line = EventLine {
                stream: event.stream.as_str(),
                revision: event.revision,
                position: event.position.get(),
                event_type: &event.event_type,
                recorded_at: rfc3339(&event.recorded_at),
                data: data_as_json(event),
                metadata: &event.metadata,
                id: event.id.to_string(),
                schema_version: event.schema_version,
                content_type: &event.content_type,
            };
            serde_json::to_string(&line)?
        } else {
            human_event(event)
        };
        print_line(&line)
    }

    /// Prints one stream summary.
    pub fn stream(&self, info: &StreamInfo) -> anyhow::Result<()> {
        let line = if self.json {
            serde_json::to_string(&StreamLine {
                stream: info.stream.as_str(),
                revision: info.revision,
                last_position: info.last_position.get(),
                created_at: rfc3339(&info.created_at),
                updated_at: rfc3339(&info.updated_at),
            })?
        } else {
            format!(
                "{:<40} revision {:>6}  last position {:>8}  updated {}",
                info.stream.as_str(),
                info.revision,
                info.last_position.get(),
                human_time(&info.updated_at)
            )
        };
        print_line(&line)
    }

    /// Prints any serializable value as JSON, or the given human text.
    pub fn value<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let line = if self.json {
            serde_json::to_string(value)?
        } else {
            human()
        };
        print_line(&line)
    }
}

/// Writes one line to stdout and flushes it.
pub fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{line}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A time as human lines show it: `2026-05-01 12:00:00.000` (UTC).
pub fn human_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// The payload as JSON: parsed when it is JSON, else `{"base64": …}`-free summary.
fn data_as_json(event: &RecordedEvent) -> serde_json::Value {
    match event.data_json() {
        Ok(v) => v,
        // Non-JSON payloads: the store's own serde form carries them as base64.
        Err(_) => serde_json::to_value(event)
            .ok()
            .and_then(|v| v.get("data").cloned())
            .unwrap_or(serde_json::Value::Null),
    }
}

fn human_event(event: &RecordedEvent) -> String {
    let data = match event.data_json() {
        Ok(v) => truncate(&v.to_string(), HUMAN_DATA_CHARS_MAX),
        Err(_) => format!("<{} bytes of {}>", event.data.len(), event.content_type),
    };
    format!(
        "{:>8}  {}@{}  {}  {}  {}",
        event.position.get(),
        event.stream,
        event.revision,
        event.event_type,
        human_time(&event.recorded_at),
        data
    )
}

/// `s` cut to `chars_max` characters, with `…` when cut.
pub fn truncate(s: &str, chars_max: usize) -> String {
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
    fn long_payloads_are_cut_on_human_lines() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ééééé", 2), "éé…");
    }
}

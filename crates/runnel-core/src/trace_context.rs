//! W3C trace context (`traceparent`, `tracestate`) as Runnel carries it: on event
//! [`Metadata`], on bus [`Message`]s and on outbox rows.
//!
//! This crate does no tracing itself (it has no tracing dependency). The framework crate
//! (`runnel::trace`) installs a [`ContextSource`] once: a plain function that returns the
//! trace context of the current span, or `None` when there is none (no OpenTelemetry layer
//! installed, or the span is disabled). The stamping functions here fill a context only
//! where none is set, so an incoming `traceparent` is never dropped or overwritten, and
//! cost one atomic load when no source is installed.

use std::sync::OnceLock;

use crate::message::Message;
use crate::metadata::Metadata;

/// A W3C trace context: the `traceparent` header and the optional `tracestate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`, e.g.
    /// `00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01`.
    pub traceparent: String,
    /// Vendor-specific entries (`key=value` pairs, comma separated), when any.
    pub tracestate: Option<String>,
}

/// Returns the trace context of the current span, if there is one.
pub type ContextSource = fn() -> Option<TraceContext>;

static SOURCE: OnceLock<ContextSource> = OnceLock::new();

/// Installs the process-wide source of the current trace context. The first call wins
/// (later calls return `false` and change nothing): a process has one tracing setup.
pub fn install_source(source: ContextSource) -> bool {
    SOURCE.set(source).is_ok()
}

/// The current trace context, from the installed source; `None` when no source is
/// installed or the current span has no valid context.
pub fn current() -> Option<TraceContext> {
    SOURCE.get().and_then(|source| source())
}

/// Sets `traceparent` / `tracestate` from the current context unless `traceparent` is
/// already set (an incoming context is kept as it is, with its own `tracestate`).
fn fill(traceparent: &mut Option<String>, tracestate: &mut Option<String>) {
    if traceparent.is_some() {
        return;
    }
    if let Some(cx) = current() {
        *traceparent = Some(cx.traceparent);
        *tracestate = cx.tracestate;
    }
}

/// Gives `metadata` the current trace context unless it carries one already.
pub fn stamp_metadata(metadata: &mut Metadata) {
    fill(&mut metadata.traceparent, &mut metadata.tracestate);
}

/// Gives `message` the current trace context unless it carries one already.
pub fn stamp_message(message: &mut Message) {
    fill(&mut message.traceparent, &mut message.tracestate);
}

/// The parts of a valid `traceparent`: trace id (32 lowercase hex digits, not all zero),
/// parent span id (16, not all zero) and flags. Version `ff` is invalid; a version above
/// `00` may carry more fields after the flags (W3C forward compatibility), `00` may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent<'a> {
    /// 32 lowercase hex digits.
    pub trace_id: &'a str,
    /// 16 lowercase hex digits.
    pub parent_id: &'a str,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a `traceparent` header; `None` if it is not valid W3C trace context.
///
/// ```
/// use runnel_core::trace_context::parse_traceparent;
/// let p = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
/// assert_eq!(p.trace_id, "0af7651916cd43dd8448eb211c80319c");
/// assert_eq!(p.flags, 1);
/// assert!(parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
/// ```
pub fn parse_traceparent(header: &str) -> Option<TraceParent<'_>> {
    let header = header.trim();
    let mut parts = header.splitn(5, '-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if !is_lower_hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(ok).unwrap();
        assert_eq!(p.parent_id, "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn stamping_never_replaces_an_incoming_context() {
        // No source is installed in this test binary: stamping changes nothing.
        let mut m = Metadata::default();
        stamp_metadata(&mut m);
        assert_eq!(m.traceparent, None);
        let mut m = Metadata::default().with_trace_context("00-a-b-01", Some("k=v".into()));
        stamp_metadata(&mut m);
        assert_eq!(m.traceparent.as_deref(), Some("00-a-b-01"));
        assert_eq!(m.tracestate.as_deref(), Some("k=v"));
    }
}

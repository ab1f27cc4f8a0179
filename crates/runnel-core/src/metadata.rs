//! Event metadata: who caused an event, in which conversation, and how to trace it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metadata stored with every event and carried on every message.
///
/// * `correlation_id` ties together everything that happened because of one original
///   request; it is copied unchanged from cause to effect.
/// * `causation_id` is the id of the message (command or event) that directly caused this
///   one.
/// * `traceparent` and `tracestate` are the W3C trace context headers, so traces survive
///   the store and the bus (see [`crate::trace_context`]). Both are optional: metadata
///   stored before `tracestate` existed still decodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Free-form application headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata for an effect of a message with id `cause_id` carrying `cause`: the
    /// correlation id is kept (or started from the cause's id), the causation id becomes
    /// `cause_id`, the user and trace context carry over, headers do not.
    pub fn caused_by(cause: &Metadata, cause_id: impl Into<String>) -> Metadata {
        let cause_id = cause_id.into();
        Metadata {
            correlation_id: Some(
                cause
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| cause_id.clone()),
            ),
            causation_id: Some(cause_id),
            user_id: cause.user_id.clone(),
            traceparent: cause.traceparent.clone(),
            tracestate: cause.tracestate.clone(),
            headers: BTreeMap::new(),
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the user id.
    pub fn with_user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// Sets the W3C trace context (`tracestate` is optional).
    pub fn with_trace_context(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Self {
        self.traceparent = Some(traceparent.into());
        self.tracestate = tracestate;
        self
    }

    /// Adds one header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The size of this metadata once serialized, in bytes (counted against payload limits).
    /// Counts without allocating: it runs for every appended event.
    pub fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        if self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.user_id.is_none()
            && self.traceparent.is_none()
            && self.tracestate.is_none()
            && self.headers.is_empty()
        {
            return 2; // "{}"
        }
        let mut counter = Counter(0);
        match serde_json::to_writer(&mut counter, self) {
            Ok(()) => counter.0,
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caused_by_keeps_correlation_and_sets_causation() {
        let cmd = Metadata::default()
            .with_correlation_id("corr-1")
            .with_user_id("alice")
            .with_header("x", "y");
        let effect = Metadata::caused_by(&cmd, "cmd-9");
        assert_eq!(effect.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(effect.causation_id.as_deref(), Some("cmd-9"));
        assert_eq!(effect.user_id.as_deref(), Some("alice"));
        assert!(effect.headers.is_empty());
    }

    #[test]
    fn caused_by_starts_a_correlation_when_none_exists() {
        let effect = Metadata::caused_by(&Metadata::default(), "cmd-1");
        assert_eq!(effect.correlation_id.as_deref(), Some("cmd-1"));
    }

    #[test]
    fn caused_by_carries_the_trace_context() {
        let cause = Metadata::default().with_trace_context(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            Some("vendor=1".into()),
        );
        let effect = Metadata::caused_by(&cause, "m-1");
        assert_eq!(effect.traceparent, cause.traceparent);
        assert_eq!(effect.tracestate.as_deref(), Some("vendor=1"));
    }

    #[test]
    fn metadata_stored_before_tracestate_still_decodes() {
        let old = r#"{"correlation_id":"c","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let m: Metadata = serde_json::from_str(old).unwrap();
        assert_eq!(m.tracestate, None);
        assert!(m.traceparent.is_some());
        // And an absent tracestate is not written, so old readers see the same shape.
        assert!(!serde_json::to_string(&m).unwrap().contains("tracestate"));
    }

    #[test]
    fn empty_metadata_serializes_compactly() {
        assert_eq!(serde_json::to_string(&Metadata::default()).unwrap(), "{}");
        assert_eq!(Metadata::default().encoded_len(), 2);
    }

    #[test]
    fn encoded_len_is_the_serialized_length() {
        let m = Metadata::default()
            .with_correlation_id("c")
            .with_user_id("ü-user")
            .with_header("k", "v");
        assert_eq!(m.encoded_len(), serde_json::to_vec(&m).unwrap().len());
    }
}

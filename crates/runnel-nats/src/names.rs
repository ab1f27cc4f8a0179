//! How Runnel names map to JetStream names: streams, subjects, durable consumers, lease
//! keys.
//!
//! Topic and group names allow ASCII letters, digits, `.`, `_` and `-`. Stream and
//! consumer names may not contain `.`, so those are escaped reversibly (`_` → `__`,
//! `.` → `_d`); names that would grow past [`JS_NAME_LEN_MAX`] are shortened with a hash
//! of the whole name so distinct names never collide in practice.

use runnel_core::{GroupName, TopicName};

/// Longest stream or consumer name this transport creates (they become file names on the
/// server).
pub const JS_NAME_LEN_MAX: usize = 160;

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Escapes a bus name into `[A-Za-z0-9_-]`.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    if out.len() > JS_NAME_LEN_MAX {
        let hash = fnv1a64(name);
        out.truncate(JS_NAME_LEN_MAX - 18);
        out.push_str(&format!("_h{hash:016x}"));
    }
    out
}

/// The stream holding `topic`.
pub fn stream_name(stream_prefix: &str, topic: &TopicName) -> String {
    format!("{stream_prefix}_{}", escape(topic.as_str()))
}

/// The subject messages of `topic` are published on: `<prefix>.<topic>` when the topic's
/// dots make valid subject tokens (the readable form plain clients use), otherwise
/// `<prefix>._t.<escaped>` (the `_t` token cannot start a valid topic name).
pub fn subject(subject_prefix: &str, topic: &TopicName) -> String {
    let t = topic.as_str();
    if t.split('.').all(|token| !token.is_empty()) {
        format!("{subject_prefix}.{t}")
    } else {
        format!("{subject_prefix}._t.{}", escape(t))
    }
}

/// The durable consumer of `group` on a topic's stream.
pub fn consumer_name(group: &GroupName) -> String {
    escape(group.as_str())
}

/// The lease key of `group` on `topic` in the lease bucket.
pub fn lease_key(stream: &str, consumer: &str) -> String {
    format!("{stream}.{consumer}")
}

/// The dead-letter stream of this transport.
pub fn dead_letter_stream(stream_prefix: &str) -> String {
    format!("{stream_prefix}_DLQ")
}

/// The dead-letter subject of one group of one topic's stream.
pub fn dead_letter_subject(subject_prefix: &str, stream: &str, consumer: &str) -> String {
    format!("{subject_prefix}_dlq.{stream}.{consumer}")
}

/// The subjects of the dead-letter stream.
pub fn dead_letter_subjects(subject_prefix: &str) -> String {
    format!("{subject_prefix}_dlq.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_reversible_in_effect_and_bounded() {
        assert_ne!(escape("a.b"), escape("a_b"));
        assert_ne!(escape("a_d"), escape("a.d"));
        assert!(!escape("conformance.x.y").contains('.'));
        let long = "x.".repeat(99) + "x";
        assert!(escape(&long).len() <= JS_NAME_LEN_MAX);
        assert_ne!(escape(&long), escape(&(long.clone() + "y")));
    }

    #[test]
    fn subjects_are_readable_when_they_can_be() {
        let t = TopicName::new("orders.v1").expect("topic");
        assert_eq!(subject("runnel", &t), "runnel.orders.v1");
        let odd = TopicName::new("a..b").expect("topic");
        assert_eq!(subject("runnel", &odd), "runnel._t.a_d_db");
    }
}

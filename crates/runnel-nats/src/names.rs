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

/// The partition (`0..partitions`) a message goes to: a stable hash (FNV-1a, 64 bit) of its
/// ordering key, or of its id when it has none, modulo the partition count. Every
/// publisher computes the same partition for a key, so a key's messages share one
/// partition and its order.
pub fn partition_of(ordering_key: Option<&str>, message_id: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let h = fnv1a64(ordering_key.unwrap_or(message_id));
    u32::try_from(h % u64::from(partitions)).unwrap_or(0)
}

/// The subject of partition `p` of `topic`: `<prefix>._p.<p>.<topic subject tail>`. The
/// `_p` token cannot start a topic name, so no other topic's subject overlaps it.
pub fn partition_subject(subject_prefix: &str, topic: &TopicName, p: u32) -> String {
    let plain = subject(subject_prefix, topic);
    let tail = &plain[subject_prefix.len() + 1..];
    format!("{subject_prefix}._p.{p}.{tail}")
}

/// The subjects a partitioned topic's stream captures (every partition's).
pub fn partition_subjects(subject_prefix: &str, topic: &TopicName) -> String {
    let plain = subject(subject_prefix, topic);
    let tail = &plain[subject_prefix.len() + 1..];
    format!("{subject_prefix}._p.*.{tail}")
}

/// The durable consumer of `group` on partition `p`: `<escaped group>_p<p>`. An escaped
/// name never holds `_p` (escaping writes `_` only as `__` or `_d`), so it cannot collide
/// with any group's unpartitioned consumer or another partition's.
pub fn partition_consumer_name(group: &GroupName, p: u32) -> String {
    format!("{}_p{p}", escape(group.as_str()))
}

/// The heartbeat key of one member of a partitioned group in the lease bucket:
/// `<stream>.<consumer>.m.<member id>` (four tokens, so never a lease key).
pub fn member_key(stream: &str, consumer: &str, member: &str) -> String {
    format!("{stream}.{consumer}.m.{member}")
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

    #[test]
    fn partitions_are_stable_and_their_names_distinct() {
        let t = TopicName::new("orders.v1").expect("topic");
        assert_eq!(partition_subject("runnel", &t, 3), "runnel._p.3.orders.v1");
        assert_eq!(partition_subjects("runnel", &t), "runnel._p.*.orders.v1");
        let odd = TopicName::new("a..b").expect("topic");
        assert_eq!(
            partition_subject("runnel", &odd, 0),
            "runnel._p.0._t.a_d_db"
        );
        // Stable: the same key, the same partition, whatever the message id.
        let p = partition_of(Some("order-17"), "id-1", 6);
        assert_eq!(partition_of(Some("order-17"), "id-2", 6), p);
        assert!(p < 6);
        assert_eq!(partition_of(Some("order-17"), "id-1", 1), 0);
        // Keys spread over every partition.
        let mut seen = [false; 6];
        for i in 0..200 {
            seen[partition_of(Some(&format!("k{i}")), "x", 6) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        let g = GroupName::new("g_p1").expect("group");
        let h = GroupName::new("g").expect("group");
        assert_ne!(consumer_name(&g), partition_consumer_name(&h, 1));
        assert_eq!(partition_consumer_name(&h, 1), "g_p1");
        assert_eq!(consumer_name(&g), "g__p1");
    }
}

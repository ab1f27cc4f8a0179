//! How Runnel's topic and group names become SNS topic and SQS queue names.
//!
//! SNS and SQS names allow `[A-Za-z0-9_-]`, at most 80 characters including the `.fifo`
//! suffix FIFO resources need; Runnel names allow `.` too and run to 200 characters. Every
//! physical name is therefore
//!
//! ```text
//! {prefix}-{readable}-{hash}{suffix}
//! ```
//!
//! where `readable` is the Runnel name(s) with `.` turned into `_`, joined by `-` and cut
//! to fit, and `hash` is 16 hex digits of a SHA-1 based UUIDv5 over the prefix and the
//! exact Runnel name(s). The readable part is for people browsing the console; the hash
//! makes the mapping collision-free (`a.b` and `a_b`, or two long names sharing their first
//! 40 characters, get different hashes). The mapping is stable: it is part of the wire
//! contract, so changing it orphans existing queues.

use runnel_core::{GroupName, TopicName};

/// SNS/SQS's longest name, suffix included.
pub const PHYSICAL_NAME_LEN_MAX: usize = 80;
/// The suffix FIFO topics and queues must carry.
pub const FIFO_SUFFIX: &str = ".fifo";
/// Marks a group's dead-letter queue.
pub const DLQ_MARK: &str = "-dlq";
const HASH_HEX_LEN: usize = 16;
/// Fixed namespace of the name hashes (a UUIDv5 of "runnel-sqs names").
const NAME_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f0c_2f6a_8c7e_4c1b_9d59_6a3e_2b1d_7e44);

fn hash_hex(prefix: &str, parts: &[&str]) -> String {
    let mut input = String::from(prefix);
    for p in parts {
        input.push('\0');
        input.push_str(p);
    }
    let id = uuid::Uuid::new_v5(&NAME_NAMESPACE, input.as_bytes());
    id.simple().to_string()[..HASH_HEX_LEN].to_string()
}

fn physical(prefix: &str, parts: &[&str], suffix: &str) -> String {
    let hash = hash_hex(prefix, parts);
    let readable: String = parts
        .iter()
        .map(|p| p.replace('.', "_"))
        .collect::<Vec<_>>()
        .join("-");
    let fixed = prefix.len() + 1 + 1 + HASH_HEX_LEN + suffix.len();
    let room = PHYSICAL_NAME_LEN_MAX.saturating_sub(fixed);
    let readable: String = readable.chars().take(room).collect();
    let name = format!("{prefix}-{readable}-{hash}{suffix}");
    debug_assert!(name.len() <= PHYSICAL_NAME_LEN_MAX, "{name}");
    name
}

/// The SNS FIFO topic name of `topic`.
///
/// ```
/// use runnel_core::TopicName;
/// let name = runnel_sqs::names::topic_name("runnel", &TopicName::new("orders.placed")?);
/// assert!(name.starts_with("runnel-orders_placed-") && name.ends_with(".fifo"));
/// # Ok::<(), runnel_core::BusError>(())
/// ```
pub fn topic_name(prefix: &str, topic: &TopicName) -> String {
    physical(prefix, &[topic.as_str()], FIFO_SUFFIX)
}

fn group_base(prefix: &str, topic: &TopicName, group: &GroupName) -> String {
    // Built with room for the DLQ mark, so the queue and its DLQ share one base.
    let with_room = format!("{DLQ_MARK}{FIFO_SUFFIX}");
    let full = physical(prefix, &[topic.as_str(), group.as_str()], &with_room);
    full[..full.len() - with_room.len()].to_string()
}

/// The SQS FIFO queue name of `group` on `topic`.
pub fn queue_name(prefix: &str, topic: &TopicName, group: &GroupName) -> String {
    format!("{}{FIFO_SUFFIX}", group_base(prefix, topic, group))
}

/// The SQS FIFO dead-letter queue name of `group` on `topic`.
pub fn dead_letter_queue_name(prefix: &str, topic: &TopicName, group: &GroupName) -> String {
    format!(
        "{}{DLQ_MARK}{FIFO_SUFFIX}",
        group_base(prefix, topic, group)
    )
}

/// A value usable as `MessageGroupId` / `MessageDeduplicationId` (1..=128 of
/// alphanumerics and punctuation): the value itself when it is one, else `h-` and a hash.
pub fn fifo_id(value: &str) -> String {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_graphic())
        && !value.starts_with("h-");
    if ok {
        value.to_string()
    } else {
        format!(
            "h-{}",
            uuid::Uuid::new_v5(&NAME_NAMESPACE, value.as_bytes()).simple()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        name.len() <= PHYSICAL_NAME_LEN_MAX
            && name.ends_with(FIFO_SUFFIX)
            && name
                .trim_end_matches(FIFO_SUFFIX)
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    }

    #[test]
    fn names_fit_sqs_rules_and_do_not_collide() {
        let long = "x.".repeat(99) + "y";
        let topics = ["a.b", "a_b", "orders", long.as_str(), &(long.clone() + "z")];
        let mut seen = std::collections::HashSet::new();
        for t in topics {
            let t = TopicName::new(t).expect("topic");
            let g = GroupName::new("g.1").expect("group");
            for n in [
                topic_name("runnel", &t),
                queue_name("runnel", &t, &g),
                dead_letter_queue_name("runnel", &t, &g),
            ] {
                assert!(valid(&n), "{n}");
                assert!(seen.insert(n.clone()), "collision on {n}");
            }
        }
        let t = TopicName::new(long.as_str()).expect("topic");
        let g = GroupName::new("g".repeat(200)).expect("group");
        assert!(valid(&dead_letter_queue_name("a-very-long-pre", &t, &g)));
    }

    #[test]
    fn fifo_ids_are_kept_or_hashed() {
        assert_eq!(fifo_id("Order-7"), "Order-7");
        let h = fifo_id("ünïcode key");
        assert!(h.starts_with("h-") && h.len() <= 128);
        assert_eq!(h, fifo_id("ünïcode key"));
        assert_ne!(fifo_id(&"k".repeat(129)), fifo_id(&"k".repeat(130)));
        assert_ne!(fifo_id("h-x"), "h-x");
    }
}

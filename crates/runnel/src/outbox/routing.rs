//! Splitting a batch into publish calls that keep per-key order.

use std::collections::{BTreeMap, HashMap};

use runnel_core::message::{Message, TopicName, PUBLISH_BATCH_MAX};

/// Most payload bytes one publish call carries (the embedded bus takes 16 MiB per call).
pub(crate) const PUBLISH_CALL_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One publish call: a topic and its messages, in order, with the ids of their rows.
pub(crate) struct Call<T> {
    pub topic: TopicName,
    pub items: Vec<(T, Message)>,
}

/// A plan: lanes run concurrently; the calls of one lane run in order, and a failed call
/// fails the rest of its lane (they may hold later messages of the same keys).
pub(crate) type Plan<T> = Vec<Vec<Call<T>>>;

/// Plans publish calls for `items` (in publish order): when no key spans two topics, one
/// lane per topic (topics in parallel); otherwise one lane of consecutive same-topic runs,
/// which keeps every key's order across topics. Calls stay within [`PUBLISH_BATCH_MAX`]
/// messages and [`PUBLISH_CALL_BYTES_MAX`] bytes.
pub(crate) fn plan<T>(items: Vec<(T, TopicName, Message)>) -> Plan<T> {
    let mut key_topic: HashMap<&str, &TopicName> = HashMap::new();
    let mut spans = false;
    for (_, topic, m) in &items {
        if let Some(k) = m.ordering_key() {
            if let Some(t) = key_topic.insert(k, topic) {
                if t != topic {
                    spans = true;
                    break;
                }
            }
        }
    }
    drop(key_topic);
    if spans {
        let mut lane: Vec<Call<T>> = Vec::new();
        for (id, topic, m) in items {
            push(&mut lane, id, topic, m);
        }
        vec![lane]
    } else {
        let mut lanes: BTreeMap<TopicName, Vec<Call<T>>> = BTreeMap::new();
        for (id, topic, m) in items {
            let lane = lanes.entry(topic.clone()).or_default();
            push(lane, id, topic, m);
        }
        lanes.into_values().collect()
    }
}

fn push<T>(lane: &mut Vec<Call<T>>, id: T, topic: TopicName, m: Message) {
    if let Some(last) = lane.last_mut() {
        let bytes: usize = last.items.iter().map(|(_, m)| m.payload.len()).sum();
        if last.topic == topic
            && last.items.len() < PUBLISH_BATCH_MAX
            && bytes + m.payload.len() <= PUBLISH_CALL_BYTES_MAX
        {
            last.items.push((id, m));
            return;
        }
    }
    lane.push(Call {
        topic,
        items: vec![(id, m)],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(key: &str) -> Message {
        Message::json("T", &serde_json::json!({})).with_key(key)
    }

    #[test]
    fn topics_run_in_parallel_unless_a_key_spans_two() {
        let a = TopicName::new("a").unwrap();
        let b = TopicName::new("b").unwrap();
        let p = plan(vec![
            (1, a.clone(), m("k1")),
            (2, b.clone(), m("k2")),
            (3, a.clone(), m("k1")),
        ]);
        assert_eq!(p.len(), 2);
        let p = plan(vec![
            (1, a.clone(), m("k1")),
            (2, b.clone(), m("k1")),
            (3, a.clone(), m("k1")),
        ]);
        assert_eq!(p.len(), 1);
        let ids: Vec<Vec<i32>> = p[0]
            .iter()
            .map(|c| c.items.iter().map(|(i, _)| *i).collect())
            .collect();
        assert_eq!(ids, vec![vec![1], vec![2], vec![3]]);
    }
}

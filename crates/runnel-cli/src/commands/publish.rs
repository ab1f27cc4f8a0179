//! `runnel publish`: one message to a topic of the configured bus.

use std::sync::Arc;

use runnel_core::bus::Publisher;
use runnel_core::{Message, TopicName};
use serde::Serialize;

use crate::cli::PublishArgs;
use crate::exit::BadInput;
use crate::output::Printer;

/// Builds the message from the flags: JSON payload, key, headers (the CloudEvents
/// extensions `correlationid`, `causationid` and `traceparent` set those attributes).
pub fn build_message(args: &PublishArgs) -> Result<Message, BadInput> {
    let data: serde_json::Value = serde_json::from_str(&args.data)
        .map_err(|e| BadInput(format!("--data is not valid JSON: {e}")))?;
    let mut message = Message::json(args.event_type.clone(), &data);
    if let Some(id) = &args.id {
        message = message.with_id(id.clone());
    }
    if let Some(key) = &args.key {
        message = message.with_key(key.clone());
    }
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            return Err(BadInput(format!("--header {header:?} is not NAME=VALUE")));
        };
        let value = value.to_string();
        match name.trim() {
            "correlationid" => message.correlation_id = Some(value),
            "causationid" => message.causation_id = Some(value),
            "traceparent" => message.traceparent = Some(value),
            name => {
                message.headers.insert(name.to_string(), value);
            }
        }
    }
    Ok(message)
}

#[derive(Serialize)]
struct Published<'a> {
    topic: &'a str,
    id: &'a str,
    event_type: &'a str,
}

/// `runnel publish`.
pub async fn publish(
    publisher: Arc<dyn Publisher>,
    printer: Printer,
    args: PublishArgs,
) -> anyhow::Result<()> {
    let topic = TopicName::new(args.topic.as_str())?;
    let message = build_message(&args)?;
    let id = message.id.clone();
    publisher.publish(&topic, vec![message]).await?;
    let line = Published {
        topic: topic.as_str(),
        id: &id,
        event_type: &args.event_type,
    };
    printer.value(&line, || {
        format!("published {} ({}) to {}", id, args.event_type, topic)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(headers: &[&str]) -> PublishArgs {
        PublishArgs {
            topic: "orders".into(),
            event_type: "OrderPlaced".into(),
            data: r#"{"order": 1}"#.into(),
            key: Some("Order-1".into()),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            id: None,
        }
    }

    #[test]
    fn headers_and_cloudevents_extensions_are_set() {
        let m = build_message(&args(&["tenant=acme", "correlationid=c-1", "x=a=b"])).unwrap();
        assert_eq!(m.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(m.headers.get("x").map(String::as_str), Some("a=b"));
        assert_eq!(m.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(m.key.as_deref(), Some("Order-1"));
        assert!(build_message(&args(&["novalue"])).is_err());
        let mut bad = args(&[]);
        bad.data = "{".into();
        assert!(build_message(&bad).is_err());
    }
}

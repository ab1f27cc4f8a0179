//! `runnel publish`: one message to a topic of the configured bus.

use std::sync::Arc;

use runnel_core::bus::Publisher;
use runnel_core::{Message, TopicName};
use serde::Serialize;

use crate::cli::PublishArgs;
use crate::exit::BadInput;
use crate::json_arg::JsonArgs;
use crate::output::Printer;

/// One message and its topic, read from the flags and checked.
pub struct PreparedPublish {
    topic: TopicName,
    message: Message,
}

/// Reads the flags of `runnel publish` (`--data` may name a file or standard input) and
/// checks them. Called before the bus (or the store of the embedded bus) is opened, so bad
/// input changes nothing.
pub fn prepare(args: &PublishArgs) -> anyhow::Result<PreparedPublish> {
    Ok(PreparedPublish {
        topic: TopicName::new(args.topic.as_str())?,
        message: build_message(args)?,
    })
}

/// Builds the message from the flags: JSON payload, key, headers (the CloudEvents
/// extensions `correlationid`, `causationid`, `traceparent` and `tracestate` set those
/// attributes).
pub fn build_message(args: &PublishArgs) -> Result<Message, BadInput> {
    let data = JsonArgs::default().parse("--data", &args.data)?;
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
            "tracestate" => message.tracestate = Some(value),
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
    prepared: PreparedPublish,
) -> anyhow::Result<()> {
    let PreparedPublish { topic, message } = prepared;
    let id = message.id.clone();
    let event_type = message.event_type.clone();
    publisher.publish(&topic, vec![message]).await?;
    let line = Published {
        topic: topic.as_str(),
        id: &id,
        event_type: &event_type,
    };
    printer.value(&line, || {
        format!("published {id} ({event_type}) to {topic}")
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

//! How a message is stored: its ordering key, its envelope (the message without the
//! payload, as JSON) and its payload — the same on both backends (SQLite keeps the
//! envelope as `TEXT`, PostgreSQL as `bytea`). Also the publish checks.

use runnel_core::bus::validate_publish;
use runnel_core::{BusError, Message, StoreError};

use crate::BusOptions;

/// A message ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedMessage {
    /// `Message::ordering_key()` as bytes (`None`: no key, always a head).
    pub ordering_key: Option<Vec<u8>>,
    /// The message as JSON, without its payload.
    pub envelope: String,
    /// The payload, as published.
    pub payload: Vec<u8>,
}

impl EncodedMessage {
    /// Encodes `message`, taking its payload without copying it.
    pub fn encode(mut message: Message) -> Result<Self, BusError> {
        let ordering_key = message.ordering_key().map(|k| k.as_bytes().to_vec());
        let payload = std::mem::take(&mut message.payload);
        let envelope = serde_json::to_string(&message).map_err(|e| BusError::InvalidMessage {
            id: message.id.chars().take(64).collect(),
            reason: format!("cannot encode the envelope: {e}"),
        })?;
        Ok(EncodedMessage {
            ordering_key,
            envelope,
            payload,
        })
    }

    /// What the message occupies in a publish, in bytes.
    pub fn bytes(&self) -> usize {
        self.payload.len() + self.envelope.len()
    }
}

/// Turns the stored envelope and payload of log row `seq` back into the message.
pub fn decode_message(seq: i64, envelope: &[u8], payload: Vec<u8>) -> Result<Message, StoreError> {
    let mut message: Message = serde_json::from_slice(envelope)
        .map_err(|e| StoreError::Corrupt(format!("bus message {seq}: unreadable envelope: {e}")))?;
    debug_assert!(
        message.payload.is_empty(),
        "envelopes are stored without payload"
    );
    message.payload = payload;
    Ok(message)
}

/// Checks a publish call against `options` and encodes its messages.
pub fn encode_publish(
    options: &BusOptions,
    messages: Vec<Message>,
) -> Result<Vec<EncodedMessage>, BusError> {
    validate_publish(&messages, options.max_payload_bytes)?;
    let encoded = messages
        .into_iter()
        .map(EncodedMessage::encode)
        .collect::<Result<Vec<_>, _>>()?;
    let total_bytes: usize = encoded.iter().map(EncodedMessage::bytes).sum();
    if total_bytes > options.max_publish_bytes {
        return Err(BusError::InvalidArgument(format!(
            "the publish carries {total_bytes} bytes, over the {}-byte limit per call; split it",
            options.max_publish_bytes
        )));
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_message_decodes_to_itself() -> Result<(), Box<dyn std::error::Error>> {
        let message = Message::json("OrderPlaced", &serde_json::json!({"order": 1}))
            .with_key("Order-1")
            .with_header("tenant", "a");
        let encoded = EncodedMessage::encode(message.clone())?;
        assert_eq!(encoded.ordering_key.as_deref(), Some(&b"Order-1"[..]));
        assert!(!encoded.envelope.contains("\"order\""), "payload left out");
        let decoded = decode_message(7, encoded.envelope.as_bytes(), encoded.payload)?;
        assert_eq!(decoded, message);
        Ok(())
    }

    #[test]
    fn an_unreadable_envelope_is_corruption() {
        let err = decode_message(7, b"{not json", Vec::new());
        assert!(matches!(err, Err(StoreError::Corrupt(m)) if m.contains("bus message 7")));
    }

    #[test]
    fn a_publish_over_the_byte_limit_is_refused() -> Result<(), BusError> {
        let m = || Message::json("Big", &serde_json::json!("x".repeat(60)));
        let one = EncodedMessage::encode(m())?.bytes();
        let mut options = BusOptions::default().max_payload_bytes(100);
        options.max_publish_bytes = 2 * one;
        assert_eq!(encode_publish(&options, vec![m(), m()])?.len(), 2);
        let err = encode_publish(&options, vec![m(), m(), m()]);
        let limit = format!("{}-byte", 2 * one);
        assert!(matches!(err, Err(BusError::InvalidArgument(e)) if e.contains(&limit)));
        Ok(())
    }
}

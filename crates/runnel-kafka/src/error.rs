//! Kafka client errors as [`BusError`]s: transient ones (broker down, timeouts, leader
//! changes) are `Unavailable` so callers retry; authentication failures are typed.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use runnel_core::BusError;

/// Maps a client error; `what` says which operation failed.
pub fn bus_error(what: &str, err: &KafkaError) -> BusError {
    // A configuration error's Display echoes the value, which may be a credential.
    if let KafkaError::ClientConfig(_, _, key, _) = err {
        return BusError::InvalidArgument(format!("{what}: invalid client setting {key}"));
    }
    let message = format!("{what}: {err}");
    match err.rdkafka_error_code() {
        Some(
            Code::SaslAuthenticationFailed
            | Code::Authentication
            | Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::ClusterAuthorizationFailed,
        ) => BusError::AuthenticationFailed(message),
        Some(Code::InvalidTopic | Code::InvalidConfig | Code::InvalidArgument) => {
            BusError::InvalidArgument(message)
        }
        Some(Code::MessageSizeTooLarge | Code::InvalidRecord) => BusError::Backend(message),
        _ => match err {
            KafkaError::ClientCreation(_) | KafkaError::Subscription(_) => {
                BusError::Backend(message)
            }
            KafkaError::Canceled => BusError::Closed,
            // Everything else the client reports (transport, timeouts, coordinator moves,
            // rebalances, leader changes) passes with time.
            _ => BusError::Unavailable(message),
        },
    }
}

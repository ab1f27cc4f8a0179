//! Mapping Redis client errors onto typed bus errors.

use redis::{ErrorKind, RedisError, ServerErrorKind};
use runnel_core::StoreError;

/// Connection trouble, timeouts and a server that is loading, read-only (a replica after a
/// failover) or busy are `Unavailable` — retrying later is safe: a claim that never reached
/// the server took nothing, and complete/release check the token. Refused credentials are
/// `AuthenticationFailed`, a bad URL `InvalidArgument`; the rest is a backend error.
pub(crate) fn map_redis(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreError::Unavailable(format!("Redis: {e}"));
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => StoreError::AuthenticationFailed(format!("Redis: {e}")),
        ErrorKind::InvalidClientConfig => StoreError::InvalidArgument(format!("Redis: {e}")),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => StoreError::Unavailable(format!("Redis: {e}")),
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            StoreError::AuthenticationFailed(format!("Redis refused a command: {e}"))
        }
        _ => StoreError::Backend(format!("Redis: {e}")),
    }
}

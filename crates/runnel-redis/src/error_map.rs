//! Mapping Redis client errors onto typed bus errors.

use redis::{ErrorKind, RedisError, ServerErrorKind};
use runnel_core::BusError;

/// Connection trouble, timeouts and a server that is loading, read-only (a replica after a
/// failover) or busy are `Unavailable` — retrying later is safe: a claim that never reached
/// the server took nothing, and complete/release check the token. Refused credentials are
/// `AuthenticationFailed`, a bad URL `InvalidArgument`; the rest is a backend error.
pub(crate) fn map_redis(e: RedisError) -> BusError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return BusError::Unavailable(format!("Redis: {e}"));
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => BusError::AuthenticationFailed(format!("Redis: {e}")),
        ErrorKind::InvalidClientConfig => BusError::InvalidArgument(format!("Redis: {e}")),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => BusError::Unavailable(format!("Redis: {e}")),
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            BusError::AuthenticationFailed(format!("Redis refused a command: {e}"))
        }
        _ => BusError::Backend(format!("Redis: {e}")),
    }
}

//! lapin errors as [`BusError`]s.

use lapin::ErrorKind;
use runnel_core::BusError;

/// Maps a client error: lost connections and channels are `Unavailable` (retrying after
/// a reconnect is safe), refused credentials `AuthenticationFailed`, what the broker
/// refused for a reason (a queue declared with other arguments, a missing object)
/// `Backend`.
pub(crate) fn from_lapin(error: lapin::Error) -> BusError {
    let text = error.to_string();
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let what = amqp.to_string();
            if what.contains("ACCESS_REFUSED") || what.contains("NOT_ALLOWED") {
                BusError::AuthenticationFailed(what)
            } else if error.is_amqp_soft_error() {
                BusError::Backend(what)
            } else {
                BusError::Unavailable(what)
            }
        }
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::ChannelsLimitReached => BusError::Unavailable(text),
        _ if text.to_ascii_lowercase().contains("auth") => BusError::AuthenticationFailed(text),
        _ => BusError::Unavailable(text),
    }
}

//! Small pieces every driver task uses.

use std::time::{Duration, Instant};

use runnel_core::bus::NACK_DELAY_MAX;
use runnel_core::BusError;

/// Refuses an extension longer than [`NACK_DELAY_MAX`], the same bound on every broker.
///
/// ```
/// use std::time::Duration;
/// assert!(runnel_transport_kit::check_extension(Duration::from_secs(60)).is_ok());
/// assert!(runnel_transport_kit::check_extension(Duration::from_secs(24 * 3600)).is_err());
/// ```
pub fn check_extension(by: Duration) -> Result<(), BusError> {
    if by > NACK_DELAY_MAX {
        return Err(BusError::InvalidArgument(format!(
            "an extension of {by:?} is over the {NACK_DELAY_MAX:?} maximum"
        )));
    }
    Ok(())
}

/// Sleeps until `when`, or forever for `None` (no timer running): one arm of a driver's
/// `select!`.
pub async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

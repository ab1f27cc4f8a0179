//! Mapping driver errors onto typed store errors.

use runnel_core::StoreError;

/// Maps a sqlx error. Connection trouble is `Unavailable` (retry is safe: appends are
/// idempotent by event id), refused credentials and privileges get their own variants.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                // invalid_authorization_specification, invalid_password
                "28000" | "28P01" => StoreError::AuthenticationFailed(db.message().to_string()),
                // insufficient_privilege
                "42501" => StoreError::PermissionDenied(db.message().to_string()),
                // admin_shutdown, crash_shutdown, cannot_connect_now, query_canceled
                // (statement timeout), connection exceptions, serialization/deadlock
                "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "53300" => {
                    StoreError::Unavailable(db.message().to_string())
                }
                c if c.starts_with("08") => StoreError::Unavailable(db.message().to_string()),
                _ => StoreError::Backend(format!("{} (SQLSTATE {code})", db.message())),
            }
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

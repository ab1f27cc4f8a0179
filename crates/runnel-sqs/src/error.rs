//! Mapping of AWS SDK errors onto [`BusError`].

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use runnel_core::BusError;

/// Error codes meaning the credentials or their permissions are wrong.
const AUTH_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "UnrecognizedClientException",
    "ExpiredToken",
    "InvalidSecurity",
];

/// Error codes meaning "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KMSThrottling",
];

/// The service error code of `err`, if the service answered.
pub(crate) fn code_of<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<String> {
    match err {
        SdkError::ServiceError(se) => se.err().code().map(str::to_string),
        _ => None,
    }
}

/// Maps an SDK error of operation `op`.
pub(crate) fn map_sdk<E, R>(op: &str, err: SdkError<E, R>) -> BusError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BusError::Unavailable(format!("{op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            // Code and message only: the raw response is noise (and never holds secrets).
            let text = format!(
                "{op}: {code}: {}",
                se.err().message().unwrap_or("(no message)")
            );
            if AUTH_CODES.contains(&code) {
                BusError::AuthenticationFailed(text)
            } else if TRANSIENT_CODES.contains(&code) {
                BusError::Unavailable(text)
            } else {
                BusError::Backend(text)
            }
        }
        _ => BusError::Backend(format!("{op}: {}", DisplayErrorContext(&err))),
    }
}

//! Errors as `application/problem+json` (RFC 9457): every refusal the server makes has a
//! status, a stable `type`, a one-line `title` and a `detail` that says what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runnel_core::StoreError;
use serde_json::{Map, Value};

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// One refused request, rendered as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// A short, stable slug; the body's `type` is `urn:runnel:problem:{kind}`.
    pub kind: &'static str,
    pub title: String,
    pub detail: String,
    /// Extra members (for a conflict: the stream's actual revision).
    pub extensions: Map<String, Value>,
    /// Seconds for a `Retry-After` header (a temporary refusal).
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title: title.into(),
            detail: detail.into(),
            extensions: Map::new(),
            retry_after: None,
        }
    }

    /// Sends `Retry-After: seconds` with it.
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed (a header, a query parameter, a name).
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
            detail,
        )
    }

    /// 404.
    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, kind, "Not found", detail)
    }

    /// Adds one member to the body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            format!("urn:runnel:problem:{}", self.kind).into(),
        );
        body.insert("title".into(), self.title.clone().into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.clone().into());
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        let detail = e.to_string();
        match &e {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The stream is not at the expected revision",
                format!("{detail}; read the stream and decide again"),
            )
            .with("stream", stream.clone())
            .with("expected", expected.to_string())
            .with("actual_revision", actual.map_or(Value::Null, Value::from)),
            StoreError::DuplicateEventId { .. } => Problem::new(
                StatusCode::CONFLICT,
                "duplicate-event-id",
                "An event id is already stored by another append",
                detail,
            ),
            StoreError::InvalidStreamName { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-stream-name",
                "Invalid stream name",
                detail,
            ),
            StoreError::InvalidArgument(_) => Problem::bad_request(detail),
            StoreError::PayloadTooLarge { limit_bytes, .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "An event is over the payload limit",
                detail,
            )
            .with("limit_bytes", *limit_bytes as u64),
            StoreError::InvalidEvent { .. }
            | StoreError::EmptyAppend
            | StoreError::TooManyEvents { .. }
            | StoreError::InlineProjectionFailed(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-append",
                "The append was refused; nothing was written",
                detail,
            ),
            StoreError::Unavailable(_) | StoreError::Closed => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "The store is unavailable",
                detail,
            ),
            _ => {
                tracing::error!(error = %e, "store failure");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store-failure",
                    "The store failed",
                    detail,
                )
            }
        }
    }
}

/// A generic title for an HTTP status, for rejections that only carry a status.
pub(crate) fn title_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is over the limit",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "The request body must be application/json",
        StatusCode::UNPROCESSABLE_ENTITY => "The request body does not have the expected shape",
        _ => "The request is malformed",
    }
}

/// The slug for a rejection's status.
pub(crate) fn kind_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
        _ => "bad-request",
    }
}

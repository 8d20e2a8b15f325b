//! [`ApiError`]: every refusal and failure of the HTTP API, answered as
//! `{"error": {"code": "…", "message": "…"}}` with the fitting status.
//!
//! Also the extractors that replace axum's own ([`ApiJson`], [`ApiQuery`], [`ApiPath`]), whose
//! rejections would otherwise be plain text.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use herald_core::bus::BusError;
use herald_core::{
    DataError, InboxError, InvalidId, InvalidTopic, ListenError, NotifyError, StoreError, SubscribeError,
};
use serde::de::DeserializeOwned;

/// Largest request body accepted, in bytes (1 MiB). Larger: 413 `body_too_large`.
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Longest time to receive a whole request body, from when the route starts reading it. Later:
/// 408 `body_timeout` and the connection is closed. Without it a client sending one byte a
/// minute held a connection (and its handler) open for as long as it liked; 10 s carries 1 MiB
/// over a slow mobile link (1 Mbit/s).
pub const REQUEST_BODY_TIMEOUT_SECS: u64 = 10;

/// An API error: HTTP status, a stable snake_case `code`, and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before trying again, sent as `Retry-After` (429 and 503 of the caps).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_secs: None }
    }

    /// This error with `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }

    /// This error as a complete HTTP/1.1 response that closes the connection, for the code that
    /// answers on a socket before hyper has it (the accept loop, the front door).
    pub fn to_http1(&self) -> Vec<u8> {
        self.to_http1_with(&[])
    }

    /// [`Self::to_http1`] with `extra` headers (CORS, `nosniff`) after Herald's own.
    pub fn to_http1_with(&self, extra: &[(http::HeaderName, http::HeaderValue)]) -> Vec<u8> {
        let body = self.body().to_string();
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            body.len()
        );
        if self.status == StatusCode::UNAUTHORIZED {
            head.push_str("www-authenticate: Bearer\r\n");
        }
        if let Some(secs) = self.retry_after_secs {
            head.push_str(&format!("retry-after: {secs}\r\n"));
        }
        for (name, value) in extra {
            // Visible ASCII here (our constants and listed origins); anything else is left out
            // rather than written raw.
            let Ok(value) = value.to_str() else { continue };
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        // For the access line: the code, never the message (which may quote the request).
        response.extensions_mut().insert(crate::access::ErrorCode(self.code));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<InvalidId> for ApiError {
    fn from(error: InvalidId) -> Self {
        Self::bad_request("invalid_id", error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store failure");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", error.to_string())
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        tracing::error!(%error, "bus failure");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", error.to_string())
    }
}

/// Each refusal of a publish is one rule of the notifier's, checked there only; here it gets its
/// status and code (docs/PROTOCOL.md's error table). The matches are exhaustive on purpose (core's
/// error enums are not `#[non_exhaustive]`): a new rule does not compile until it has its code,
/// rather than answering 500.
impl From<NotifyError> for ApiError {
    fn from(error: NotifyError) -> Self {
        let message = error.to_string();
        match error {
            NotifyError::DataTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "data_too_large", message)
            }
            NotifyError::InvalidData(data) => {
                let code = match data {
                    DataError::TooDeep { .. } => "data_too_deep",
                    DataError::InvalidNumber { .. } => "invalid_number",
                    DataError::InvalidString { .. } => "invalid_string",
                };
                Self::bad_request(code, message)
            }
            NotifyError::InvalidKind { .. } | NotifyError::InvalidIdempotencyKey { .. } => {
                Self::bad_request("invalid_request", message)
            }
            NotifyError::PushPayloadTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "push_payload_too_large", message)
            }
            NotifyError::InvalidPushTopic => Self::bad_request("invalid_request", message),
            NotifyError::NoUsers => Self::bad_request("invalid_target", message),
            NotifyError::TooManyUsers { .. } => Self::bad_request("too_many_users", message),
            NotifyError::PublishTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "publish_too_large", message)
            }
            NotifyError::ClientNotFound(_) => Self::new(StatusCode::NOT_FOUND, "client_not_found", message),
            NotifyError::ExceptUserWithoutTopic => Self::bad_request("invalid_target", message),
            NotifyError::NoTopics => Self::bad_request("invalid_request", message),
            NotifyError::EphemeralInbox => Self::bad_request("invalid_request", message),
            NotifyError::TooManyJobs { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_jobs", message)
            }
            NotifyError::Listen(error) => error.into(),
            NotifyError::Store(error) => error.into(),
            NotifyError::Bus(error) => error.into(),
        }
    }
}

impl From<ListenError> for ApiError {
    fn from(error: ListenError) -> Self {
        let message = error.to_string();
        match error {
            ListenError::TooManyTopics { .. } => Self::new(StatusCode::CONFLICT, "too_many_topics", message),
            ListenError::ClientNotFound(_) => Self::new(StatusCode::NOT_FOUND, "client_not_found", message),
        }
    }
}

impl From<InvalidTopic> for ApiError {
    fn from(error: InvalidTopic) -> Self {
        Self::bad_request("invalid_topic", error.to_string())
    }
}

/// Each refusal of an inbox read or change is one rule of the inbox service's, checked there
/// only; here it gets its status and code (docs/PROTOCOL.md's error table).
impl From<InboxError> for ApiError {
    fn from(error: InboxError) -> Self {
        let message = error.to_string();
        match error {
            InboxError::LimitOutOfRange { .. } => Self::bad_request("invalid_limit", message),
            InboxError::InvalidKind { .. } => Self::bad_request("invalid_type", message),
            InboxError::NoSeqs | InboxError::MarkOnlyBySeqs { .. } => {
                Self::bad_request("invalid_request", message)
            }
            InboxError::TooManySeqs { .. } => Self::bad_request("too_many_seqs", message),
            InboxError::Store(error) => error.into(),
            InboxError::Bus(error) => error.into(),
        }
    }
}

impl From<SubscribeError> for ApiError {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::ResumeAhead { .. } => {
                Self::bad_request("invalid_last_event_id", error.to_string())
            }
            SubscribeError::Listen(error) => error.into(),
            SubscribeError::Store(error) => error.into(),
        }
    }
}

/// A JSON body, at most [`REQUEST_BODY_BYTES_MAX`] bytes, decoded with serde (types deny
/// unknown fields); refusals are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = read_body(request.into_body()).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
    }
}

/// The whole body, at most [`REQUEST_BODY_BYTES_MAX`] bytes, received within
/// [`REQUEST_BODY_TIMEOUT_SECS`].
async fn read_body(body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    let timeout = std::time::Duration::from_secs(REQUEST_BODY_TIMEOUT_SECS);
    let read = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        // The limit and a broken body (bad chunked framing, a connection closed early) are
        // both errors of the body stream; only the limit is the client's size problem.
        Ok(Err(error)) if is_length_limit(&error) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {REQUEST_BODY_BYTES_MAX} bytes"),
        )),
        Ok(Err(_)) => Err(ApiError::bad_request(
            "invalid_body",
            "the request body could not be read: its chunked framing is invalid or it ended early",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {REQUEST_BODY_TIMEOUT_SECS} seconds"),
        )),
    }
}

/// Whether `error` (or one of its causes) is the body limit of [`axum::body::to_bytes`].
fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Query parameters decoded with serde; refusals are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters decoded with serde; refusals are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e: PathRejection| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store failure reaches the client saying once, plainly, what failed (issue 10: a full
    /// disk read `store unavailable: store unavailable: …`).
    #[test]
    fn a_store_error_says_what_failed_once() {
        let error = ApiError::from(StoreError::Unavailable("database or disk is full".into()));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error.body(),
            serde_json::json!({"error": {
                "code": "store_unavailable",
                "message": "store unavailable: database or disk is full",
            }})
        );
    }
}

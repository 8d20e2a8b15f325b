//! JSON answers, built in one place: the API, the long-poll transport and the demo all answer
//! with them, so none of them borrows a helper from another layer.
//!
//! A leaf module: it uses no other module of the server. (Query parameters are read by
//! [`crate::query`]; refusals are [`crate::ApiError`]s.)

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

/// A 200 answer with `body` serialized as JSON.
pub(crate) fn json_response(body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("answers always serialize");
    json_bytes(Bytes::from(bytes))
}

/// A 200 answer whose body is JSON serialized already (a notification's or an `inbox` event's
/// bytes, built once for every client and the caller alike).
pub(crate) fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

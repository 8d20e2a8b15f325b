//! The inbox: `/v1/inbox…` for a subscriber's own inbox (subscriber token), and
//! `/v1/users/{user}/inbox…` for any user's (API key). Both do the same through
//! [`herald_core::Inbox`]; every change is also sent to the user's clients as an `inbox` event,
//! whose JSON is the answer to the change.
//!
//! - `GET …/inbox?status=&type=&before=&limit=`: a page, newest first, with `next_before` and
//!   the counts;
//! - `GET …/inbox/counts`;
//! - `POST …/inbox/mark` `{"seqs": […], "as": …}` or `{"all_up_to": N, "as": …}`;
//! - `DELETE …/inbox/{seq}` and `DELETE …/inbox?all_up_to=N`.
//!
//! `X-Herald-Client: <client id>` on a change leaves that client out of the event (it made the
//! change and knows).
//!
//! Changes through a subscriber token count against the user's inbox write rate
//! ([`crate::caps::Limiter::admit_inbox_write`]); the publisher's do not.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use herald_core::inbox::INBOX_PAGE_LEN_DEFAULT;
use herald_core::notification::format_timestamp_ms;
use herald_core::{
    ClientId, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxStatus, InboxUpdate, Mark, Selection, Seq,
    UserId,
};
use serde::Deserialize;

use crate::app::App;
use crate::auth::{Publisher, Subscriber};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::query::whole_number;
use crate::response::{json_bytes, json_response};

/// The header that names the client making a change, so that its `inbox` event leaves it out.
pub const CLIENT_HEADER: &str = "x-herald-client";

/// `GET …/inbox` query parameters. Unknown ones are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    /// The subscriber token; read by the auth extractor.
    #[allow(dead_code)]
    token: Option<String>,
}

/// Query parameters of routes that take none but the token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {
    #[allow(dead_code)]
    token: Option<String>,
}

/// `DELETE …/inbox?all_up_to=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteAllQuery {
    all_up_to: Option<String>,
    #[allow(dead_code)]
    token: Option<String>,
}

/// The body of `POST …/inbox/mark`: `seqs` or `all_up_to`, and `as`. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkBody {
    seqs: Option<Vec<Seq>>,
    all_up_to: Option<Seq>,
    #[serde(rename = "as")]
    mark: Mark,
}

/// Refuses a change whose body is not declared `application/json`. A subscriber may be
/// authenticated by a cookie; a page of another site can only send a JSON content type (or a
/// DELETE) after a CORS preflight, which Herald does not grant, so it cannot change a user's
/// inbox with that cookie.
#[derive(Debug, Clone, Copy)]
pub struct DeclaredJson;

impl<S: Send + Sync> FromRequestParts<S> for DeclaredJson {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let declared = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if declared {
            Ok(DeclaredJson)
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body with `Content-Type: application/json`",
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber routes: the caller's own inbox

/// `GET /v1/inbox`.
pub async fn list(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    list_for(&app, &subscriber.user, query).await
}

/// `GET /v1/inbox/counts`.
pub async fn counts(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    counts_for(&app, &subscriber.user).await
}

/// `POST /v1/inbox/mark`.
pub async fn mark(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<MarkBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    mark_for(&app, &subscriber.user, &headers, body).await
}

/// `DELETE /v1/inbox/{seq}`.
pub async fn delete_one(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    ApiPath(seq): ApiPath<String>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    delete_one_for(&app, &subscriber.user, &headers, &seq).await
}

/// `DELETE /v1/inbox?all_up_to=N`.
pub async fn delete_all(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DeleteAllQuery>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    delete_all_for(&app, &subscriber.user, &headers, query).await
}

// ---------------------------------------------------------------------------------------------
// Publisher routes: any user's inbox

/// `GET /v1/users/{user}/inbox`.
pub async fn user_list(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    list_for(&app, &UserId::new(user)?, query).await
}

/// `GET /v1/users/{user}/inbox/counts`.
pub async fn user_counts(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    counts_for(&app, &UserId::new(user)?).await
}

/// `POST /v1/users/{user}/inbox/mark`.
pub async fn user_mark(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<MarkBody>,
) -> Result<Response, ApiError> {
    mark_for(&app, &UserId::new(user)?, &headers, body).await
}

/// `DELETE /v1/users/{user}/inbox/{seq}`.
pub async fn user_delete_one(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    headers: HeaderMap,
    ApiPath((user, seq)): ApiPath<(String, String)>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    delete_one_for(&app, &UserId::new(user)?, &headers, &seq).await
}

/// `DELETE /v1/users/{user}/inbox?all_up_to=N`.
pub async fn user_delete_all(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DeleteAllQuery>,
) -> Result<Response, ApiError> {
    delete_all_for(&app, &UserId::new(user)?, &headers, query).await
}

// ---------------------------------------------------------------------------------------------
// Both

async fn list_for(app: &App, user: &UserId, query: ListQuery) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => InboxStatus::All,
        Some(s) => InboxStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_status",
                format!("`status` must be unread, unseen, read, archived or all, not {s:?}"),
            )
        })?,
    };
    let before = whole_number(query.before.as_deref(), "before", "invalid_before")?;
    // The range (1 to `INBOX_PAGE_LEN_MAX`) is the inbox service's rule; a number too large for
    // usize is out of it too.
    let limit = match whole_number(query.limit.as_deref(), "limit", "invalid_limit")? {
        None => INBOX_PAGE_LEN_DEFAULT,
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let query = InboxQuery { status, kind: query.kind, before, limit };
    let page = app.notifier.inbox().list(user, &query).await?;
    Ok(json_bytes(page_json(&page)))
}

async fn counts_for(app: &App, user: &UserId) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct CountsBody {
        counts: InboxCounts,
    }
    let counts = app.notifier.inbox().counts(user).await?;
    Ok(json_response(&CountsBody { counts }))
}

async fn mark_for(
    app: &App,
    user: &UserId,
    headers: &HeaderMap,
    body: MarkBody,
) -> Result<Response, ApiError> {
    let except = client_header(headers)?;
    let selection = selection(body.seqs, body.all_up_to)?;
    let update = app.notifier.inbox().mark(user, selection, body.mark, except).await?;
    Ok(change_response(&update))
}

async fn delete_one_for(
    app: &App,
    user: &UserId,
    headers: &HeaderMap,
    seq: &str,
) -> Result<Response, ApiError> {
    let except = client_header(headers)?;
    let seq = seq.trim().parse::<Seq>().map_err(|_| {
        ApiError::bad_request("invalid_seq", format!("{seq:?} is not a seq (a whole number)"))
    })?;
    let update = app.notifier.inbox().delete(user, Selection::Seqs(vec![seq]), except).await?;
    Ok(change_response(&update))
}

async fn delete_all_for(
    app: &App,
    user: &UserId,
    headers: &HeaderMap,
    query: DeleteAllQuery,
) -> Result<Response, ApiError> {
    let except = client_header(headers)?;
    let all_up_to =
        whole_number(query.all_up_to.as_deref(), "all_up_to", "invalid_all_up_to")?.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_all_up_to",
                "give `?all_up_to=N` to delete every notification up to N (or DELETE …/inbox/{seq})",
            )
        })?;
    let update = app.notifier.inbox().delete(user, Selection::AllUpTo(all_up_to), except).await?;
    Ok(change_response(&update))
}

/// `seqs` or `all_up_to`, exactly one. How many seqs (1 to `MARK_SEQS_MAX`) is the inbox
/// service's rule.
fn selection(seqs: Option<Vec<Seq>>, all_up_to: Option<Seq>) -> Result<Selection, ApiError> {
    match (seqs, all_up_to) {
        (Some(seqs), None) => Ok(Selection::Seqs(seqs)),
        (None, Some(n)) => Ok(Selection::AllUpTo(n)),
        _ => Err(ApiError::bad_request(
            "invalid_request",
            "give exactly one of `seqs` (a list of seqs) and `all_up_to` (a seq)",
        )),
    }
}

/// The `X-Herald-Client` header: the client to leave out of the change's event. Present, it
/// must name a client: an empty one is refused (400 `invalid_id`) like any other bad id, rather
/// than read as "no client", which would send the event back to the tab that sent it.
pub(crate) fn client_header(headers: &HeaderMap) -> Result<Option<ClientId>, ApiError> {
    let Some(value) = headers.get(CLIENT_HEADER) else { return Ok(None) };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_id", "X-Herald-Client is not a client id"))?
        .trim();
    Ok(Some(ClientId::new(value)?))
}

/// The answer to a change: the `inbox` event's JSON, serialized once for the clients and the
/// caller alike.
fn change_response(update: &InboxUpdate) -> Response {
    json_bytes(update.event.json().clone())
}

/// `{"notifications": [item, …], "next_before": N | null, "counts": {…}}`, where an item is the
/// notification's own JSON (as streamed) with `seen_at`, `read_at`, `archived_at` added.
fn page_json(page: &InboxPage) -> Bytes {
    let mut out =
        Vec::with_capacity(128 + page.items.iter().map(|i| i.notification.json().len() + 96).sum::<usize>());
    out.extend_from_slice(br#"{"notifications":["#);
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item_json(item, &mut out);
    }
    out.extend_from_slice(br#"],"next_before":"#);
    match page.next_before {
        Some(seq) => out.extend_from_slice(seq.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","counts":"#);
    serde_json::to_writer(&mut out, &page.counts).expect("counts serialize");
    out.push(b'}');
    Bytes::from(out)
}

fn item_json(item: &InboxItem, out: &mut Vec<u8>) {
    // The notification's JSON was serialized once, when it was read: reuse it, without its `}`.
    let json = item.notification.json();
    out.extend_from_slice(&json[..json.len() - 1]);
    let state = &item.state;
    for (name, at) in
        [("seen_at", state.seen_at_ms), ("read_at", state.read_at_ms), ("archived_at", state.archived_at_ms)]
    {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match at {
            Some(ms) => {
                out.push(b'"');
                out.extend_from_slice(format_timestamp_ms(ms).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

//! Transports: how events reach clients. Only these modules know the wire format of events.
//!
//! - [`sse`]: `GET /v1/stream`, Server-Sent Events.
//! - [`poll`]: `GET /v1/poll`, long-polling.
//! - [`ws`]: `GET /v1/ws`, WebSocket.
//!
//! All of them drive a [`herald_core::Subscription`] and only encode what it yields.

pub mod poll;
pub mod sse;
pub mod ws;

use axum::http::HeaderMap;
use herald_core::notification::KIND_BYTES_MAX;
use herald_core::subscription::SubscribeRequest;
use herald_core::subscription::TYPE_PREFIXES_MAX;
use herald_core::{ResumePoint, Subscription, Topic, Transport};
use serde::Deserialize;

use crate::app::App;
use crate::auth::Subscriber;
use crate::error::ApiError;

/// Opens the subscription of a streaming transport (SSE, WebSocket): checks the resume point and
/// the `inbox` flag, attaches the client, and makes the hub close it when its token expires.
pub(crate) async fn open_subscription(
    app: &App,
    subscriber: &Subscriber,
    query: &StreamQuery,
    headers: &HeaderMap,
    transport: Transport,
) -> Result<Subscription, ApiError> {
    let resume = resume_point(query.last_event_id.as_deref(), headers)?;
    let follow_inbox = follows_inbox(query.inbox.as_deref())?;
    let topics = requested_topics(query.topics.as_deref(), subscriber)?;
    let types = type_prefixes(query.types.as_deref())?;
    let subscription = Subscription::open(
        &app.hub,
        &app.store,
        SubscribeRequest {
            user: &subscriber.user,
            session: &subscriber.session,
            client: query.client.as_deref(),
            transport,
            resume_after: resume.as_ref().map(|r| r.seq),
            epoch: epoch_of(query.epoch.as_deref()),
            topics: &topics,
            topic_positions: resume.as_ref().map_or(&[], |r| &r.topics),
            types: &types,
        },
    )
    .await?;
    // Checked again now that the client is attached: a sign-out that came after the first
    // check and before the attach found no client to close, but is seen here.
    subscriber.check_not_revoked(app).await?;
    subscription.expire_at(subscriber.expires_at);
    if follow_inbox {
        subscription.follow_inbox();
    }
    Ok(subscription)
}

/// Query parameters shared by the streaming transports. Unknown ones are refused (400
/// `invalid_query`), as on every route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume from here: a seq, or a seq with topic positions (see [`ResumePoint`]); wins over
    /// the `Last-Event-ID` header.
    pub last_event_id: Option<String>,
    /// The epoch of the resume point (the one `hello` named). See [`epoch_of`].
    pub epoch: Option<String>,
    /// The client id this tab had before (kept if it belongs to the same user and session).
    pub client: Option<String>,
    /// `1`: the client follows its user's inbox counts (an `inbox` event after each new
    /// notification too). See [`follows_inbox`].
    pub inbox: Option<String>,
    /// Topics to listen to (client scope), comma-separated. See [`requested_topics`].
    pub topics: Option<String>,
    /// Prefixes of `type` the tab's topic events are filtered by. See [`type_prefixes`].
    pub types: Option<String>,
    /// The subscriber token; read by the auth extractor.
    #[allow(dead_code)]
    token: Option<String>,
}

/// The topics of `?topics=a,b` (empty items ignored), each one the token's `topics` claim
/// allows: 400 `invalid_topic` for one that is not a topic, 403 `topic_forbidden` for one the
/// claim does not allow. How many a tab may listen to is the hub's bound (409).
pub fn requested_topics(raw: Option<&str>, subscriber: &Subscriber) -> Result<Vec<Topic>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let topics = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Topic::new)
        .collect::<Result<Vec<_>, _>>()?;
    subscriber.check_may_listen(&topics)?;
    Ok(topics)
}

/// `?types=comment.,reaction`: prefixes of `type`; the tab then gets only the topic events whose
/// type starts with one of them. Empty items are ignored; each 1–128 bytes, at most
/// [`TYPE_PREFIXES_MAX`]: else 400 `invalid_types`.
pub fn type_prefixes(raw: Option<&str>) -> Result<Vec<Box<str>>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let prefixes: Vec<Box<str>> =
        raw.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Box::from).collect();
    if prefixes.len() > TYPE_PREFIXES_MAX {
        return Err(ApiError::bad_request(
            "invalid_types",
            format!("at most {TYPE_PREFIXES_MAX} type prefixes, not {}", prefixes.len()),
        ));
    }
    if let Some(long) = prefixes.iter().find(|p| p.len() > KIND_BYTES_MAX) {
        return Err(ApiError::bad_request(
            "invalid_types",
            format!("a type prefix is at most {KIND_BYTES_MAX} bytes, not {}", long.len()),
        ));
    }
    Ok(prefixes)
}

/// Whether `?inbox=` asks to follow the inbox counts: `1` or `true` yes; `0`, `false`, empty
/// or absent no; anything else is refused (400 `invalid_query`).
pub fn follows_inbox(raw: Option<&str>) -> Result<bool, ApiError> {
    match raw.map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => {
            Err(ApiError::bad_request("invalid_query", format!("`inbox` must be 1 or 0, not {other:?}")))
        }
    }
}

/// The epoch a resume point is of, from `?epoch=`: any text (one that is not the store's epoch
/// is another epoch: the stream starts with a `reset`); empty or absent, none (the resume point
/// is taken as one of the current epoch, as before epochs).
pub fn epoch_of(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|epoch| !epoch.is_empty())
}

/// The resume point: `?last_event_id=` or else the `Last-Event-ID` header; `None` if neither.
pub fn resume_point(query: Option<&str>, headers: &HeaderMap) -> Result<Option<ResumePoint>, ApiError> {
    let raw = match query {
        Some(q) => Some(q.to_owned()),
        None => headers
            .get("last-event-id")
            .map(|v| v.to_str().map(str::to_owned))
            .transpose()
            .map_err(|_| ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not text"))?,
    };
    raw.map(|raw| {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        ResumePoint::parse(raw).map(Some).map_err(|error| {
            ApiError::bad_request("invalid_last_event_id", format!("last event id {raw:?}: {error}"))
        })
    })
    .transpose()
    .map(Option::flatten)
}

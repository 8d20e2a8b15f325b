//! `GET /v1/poll`: long-polling, for networks that break streaming (Eliom's comet).
//!
//! Each poll is a short-lived subscription: it answers at once with what is retained after
//! `after`, else waits for the first live notification or the timeout. Between polls the client
//! stays in presence for [`herald_core::Limits::client_linger`], parked with its queue: a poll
//! that resumes where the last one ended takes the queue back and answers from it, with the
//! ephemeral notifications and `inbox` events that came in between (see
//! [`herald_core::subscription::poll`]).
//!
//! Every answer names the epoch of its `last_seq`; a poll gives it back as `epoch=` with `after`,
//! and one of another epoch is answered `reset` at once (see `herald_core::subscription`).
//!
//! `inbox` events are in the answer (`"inbox": […]`); with `inbox=1` every answer also carries
//! the user's counts, read after the events were collected. With `inbox_version=V` too, a poll
//! that starts afresh (it did not see the events before it) answers at once when the user's
//! counts are newer than `V`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use herald_core::subscription::{SubscribeRequest, poll as poll_once};
use herald_core::{InboxCounts, Seq, SubscribeError, Topic, Transport};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Subscriber;
use crate::error::{ApiError, ApiQuery};
use crate::query::whole_number;
use crate::response::json_response;
use crate::transport::{epoch_of, follows_inbox, requested_topics, type_prefixes};

/// Poll wait when `timeout` is not given, in seconds (Eliom's comet waits 20 s too).
pub const POLL_TIMEOUT_SECS_DEFAULT: u64 = 20;
/// Longest poll wait a client may ask for, in seconds. Above: 400.
pub const POLL_TIMEOUT_SECS_MAX: u64 = 60;

/// `GET /v1/poll` query parameters. Unknown ones are refused (400 `invalid_query`), as on
/// every route, so that a typo (`?afer=`) is not silently a poll from the newest seq.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    after: Option<String>,
    /// The epoch of `after` (the previous answer's). See [`epoch_of`].
    epoch: Option<String>,
    timeout: Option<String>,
    client: Option<String>,
    inbox: Option<String>,
    inbox_version: Option<String>,
    /// Topics to listen to (client scope), comma-separated: see [`requested_topics`].
    topics: Option<String>,
    /// The client's position in each durable topic, `topic=tseq` comma-separated (the
    /// previous answer's `positions`). See [`topic_positions`].
    positions: Option<String>,
    /// Prefixes of `type` the tab's topic events are filtered by: see [`type_prefixes`].
    types: Option<String>,
    /// The subscriber token; read by the auth extractor.
    #[allow(dead_code)]
    token: Option<String>,
}

/// One long-poll answer: `{"client", "notifications", "last_seq", "epoch"}` (+ `reset`, `closed`).
pub async fn poll(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> Result<Response, ApiError> {
    let after: Option<Seq> = whole_number(query.after.as_deref(), "after", "invalid_after")?;
    let timeout_secs = whole_number(query.timeout.as_deref(), "timeout", "invalid_timeout")?
        .unwrap_or(POLL_TIMEOUT_SECS_DEFAULT);
    let with_counts = follows_inbox(query.inbox.as_deref())?;
    let topics = requested_topics(query.topics.as_deref(), &subscriber)?;
    let positions = topic_positions(query.positions.as_deref())?;
    let types = type_prefixes(query.types.as_deref())?;
    let known_inbox_version =
        whole_number(query.inbox_version.as_deref(), "inbox_version", "invalid_inbox_version")?;
    if known_inbox_version.is_some() && !with_counts {
        return Err(ApiError::bad_request(
            "invalid_inbox_version",
            "`inbox_version` is only meaningful with `inbox=1`, which answers with the counts",
        ));
    }
    if timeout_secs > POLL_TIMEOUT_SECS_MAX {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!("`timeout` is at most {POLL_TIMEOUT_SECS_MAX} seconds, not {timeout_secs}"),
        ));
    }
    // Never hold a poll past the token's expiry: the next poll must show the token again.
    let timeout = Duration::from_secs(timeout_secs).min(subscriber.time_left());
    let answer = poll_once(
        &app.hub,
        &app.store,
        SubscribeRequest {
            user: &subscriber.user,
            session: &subscriber.session,
            client: query.client.as_deref(),
            transport: Transport::Poll,
            resume_after: after,
            epoch: epoch_of(query.epoch.as_deref()),
            topics: &topics,
            topic_positions: &positions,
            types: &types,
        },
        timeout,
        known_inbox_version,
    )
    .await
    .map_err(|error| match error {
        SubscribeError::ResumeAhead { .. } => ApiError::bad_request("invalid_after", error.to_string()),
        other => other.into(),
    })?;
    // A poll that attached after a sign-out (between the check and the attach) was not closed
    // by it: refuse its answer. (One the sign-out closed answers `closed: session_closed`.)
    if answer.closed.is_none() {
        subscriber.check_not_revoked(&app).await?;
    }
    let counts = if with_counts { Some(app.notifier.inbox().counts(&subscriber.user).await?) } else { None };
    let body = PollBody {
        client: answer.client.as_str(),
        notifications: answer
            .notifications
            .iter()
            .map(|n| serde_json::from_slice::<&RawValue>(n.json()).expect("a notification's JSON is valid"))
            .collect(),
        inbox: answer
            .inbox
            .iter()
            .map(|e| serde_json::from_slice::<&RawValue>(e.json()).expect("an inbox event's JSON is valid"))
            .collect(),
        topic: answer
            .topic
            .iter()
            .map(|e| serde_json::from_slice::<&RawValue>(e.json()).expect("a topic event's JSON is valid"))
            .collect(),
        topics: &answer.topics,
        positions: answer.positions.iter().map(|(topic, tseq)| (topic.as_str(), *tseq)).collect(),
        topic_resets: answer
            .topic_resets
            .iter()
            .map(|(topic, last_tseq)| TopicResetBody { topic: topic.as_str(), last_tseq: *last_tseq })
            .collect(),
        counts,
        last_seq: answer.last_seq,
        epoch: &answer.epoch,
        reset: answer.reset,
        closed: answer.closed.map(|reason| reason.as_str()),
    };
    Ok(json_response(&body))
}

#[derive(Serialize)]
struct PollBody<'a> {
    client: &'a str,
    /// Borrowed from each notification's JSON, serialized once at publish.
    notifications: Vec<&'a RawValue>,
    /// The `inbox` events that arrived while the poll was open (each as the `data` of an SSE
    /// `inbox` event).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbox: Vec<&'a RawValue>,
    /// The `topic` events that arrived while the poll was open (or, parked, since the last).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    topic: Vec<&'a RawValue>,
    /// The topics the tab listens to.
    #[serde(skip_serializing_if = "<[Topic]>::is_empty")]
    topics: &'a [Topic],
    /// The tab's position in each durable topic after this answer.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    positions: std::collections::BTreeMap<&'a str, Seq>,
    /// Topics whose position given was lost (retention, another epoch).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    topic_resets: Vec<TopicResetBody<'a>>,
    /// The user's counts (with `inbox=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<InboxCounts>,
    last_seq: Seq,
    /// The epoch of `last_seq`: poll next with it.
    epoch: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed: Option<&'static str>,
}

#[derive(Serialize)]
struct TopicResetBody<'a> {
    topic: &'a str,
    last_tseq: Seq,
}

/// `?positions=post:42=5,room:1=0`: the client's position in each durable topic (at most
/// [`herald_core::RESUME_TOPICS_MAX`]); absent or empty, none. One that cannot be read: 400
/// `invalid_positions`.
fn topic_positions(raw: Option<&str>) -> Result<Vec<(Topic, Seq)>, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else { return Ok(Vec::new()) };
    // The same grammar as a resume id's topic part, whose separator is `;`.
    herald_core::ResumePoint::parse(&format!("0;{}", raw.replace(',', ";")))
        .map(|point| point.topics)
        .map_err(|error| ApiError::bad_request("invalid_positions", format!("positions {raw:?}: {error}")))
}

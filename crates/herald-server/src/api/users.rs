//! `/v1/users/{user}/…`: presence, stored notifications, and closing sessions.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_core::notification::format_timestamp_ms;
use herald_core::{Seq, SessionId, Topic, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Publisher;
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::query::whole_number;
use crate::response::json_response;

/// Most stored notifications in one answer of `GET /v1/users/{user}/notifications`.
pub const NOTIFICATIONS_LIMIT_MAX: usize = 100;

#[derive(Serialize)]
struct PresenceBody<'a> {
    user: &'a str,
    sessions: Vec<SessionBody<'a>>,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    session: &'a str,
    clients: Vec<ClientBody<'a>>,
}

#[derive(Serialize)]
struct ClientBody<'a> {
    client: &'a str,
    transport: &'static str,
    connected_at: String,
    last_seq: Seq,
    /// The node it is connected to (`--node-id`).
    node: &'a str,
    /// The topics it listens to.
    topics: &'a [Topic],
}

/// `GET /v1/users/{user}/presence`: the user's sessions and their connected clients.
pub async fn presence(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
) -> Result<Response, ApiError> {
    let user = UserId::new(user)?;
    // Every node's clients, each with its node (this one's have none: they get this node's id).
    let presence = app.notifier.presence(&user).await?;
    let local = app.settings.node_id.as_str();
    let body = PresenceBody {
        user: presence.user.as_str(),
        sessions: presence
            .sessions
            .iter()
            .map(|s| SessionBody {
                session: s.session.as_str(),
                clients: s
                    .clients
                    .iter()
                    .map(|c| ClientBody {
                        client: c.client.as_str(),
                        transport: c.transport.as_str(),
                        connected_at: format_timestamp_ms(c.connected_at_ms),
                        last_seq: c.last_seq,
                        node: c.node.as_deref().unwrap_or(local),
                        topics: &c.topics,
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(json_response(&body))
}

/// Read as text and parsed by [`whole_number`], so that a bad number is `invalid_after` or
/// `invalid_limit`, as on `/v1/poll` and `/v1/inbox`, not serde's `invalid_query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    after: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct NotificationsBody<'a> {
    notifications: Vec<&'a RawValue>,
}

/// `GET /v1/users/{user}/notifications?after=N&limit=L`: stored notifications, oldest first.
pub async fn notifications(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
    ApiQuery(query): ApiQuery<NotificationsQuery>,
) -> Result<Response, ApiError> {
    let user = UserId::new(user)?;
    let after: Seq = whole_number(query.after.as_deref(), "after", "invalid_after")?.unwrap_or(0);
    let limit = whole_number(query.limit.as_deref(), "limit", "invalid_limit")?
        .unwrap_or(NOTIFICATIONS_LIMIT_MAX as u64);
    if limit == 0 || limit > NOTIFICATIONS_LIMIT_MAX as u64 {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("`limit` must be 1 to {NOTIFICATIONS_LIMIT_MAX}, not {limit}"),
        ));
    }
    let page = app.store.read_after(&user, after, limit as usize).await?;
    let body = NotificationsBody {
        notifications: page
            .notifications
            .iter()
            .map(|n| serde_json::from_slice::<&RawValue>(n.json()).expect("a notification's JSON is valid"))
            .collect(),
    };
    Ok(json_response(&body))
}

#[derive(Serialize)]
struct ClosedBody {
    closed: u64,
}

/// `DELETE /v1/users/{user}/sessions/{session}`: closes that session's clients
/// (`session_closed`).
pub async fn close_session(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath((user, session)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let (user, session) = (UserId::new(user)?, SessionId::new(session)?);
    let closed = app.notifier.close_sessions(&user, Some(&session)).await?;
    Ok(json_response(&ClosedBody { closed }))
}

/// `DELETE /v1/users/{user}/sessions`: closes all the user's clients (sign out everywhere).
pub async fn close_all_sessions(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
) -> Result<Response, ApiError> {
    let user = UserId::new(user)?;
    let closed = app.notifier.close_sessions(&user, None).await?;
    Ok(json_response(&ClosedBody { closed }))
}

//! Listening to topics (Eliom_notif's `listen` / `unlisten`) at the three scopes of Eliom's
//! hierarchy: one tab (client scope, until it unlistens or is forgotten), one session (session
//! scope, kept in the store until the session is closed) and the user (user scope, every tab on
//! every device, kept in the store until unlistened: the "follow" case).
//! - `POST /v1/listen`, `POST /v1/unlisten` with the subscriber token: `scope` `client` (the
//!   default; the tab named by `X-Herald-Client`), `session` (the token's) or `user` (the
//!   token's); a listen needs the token's `topics` claim to allow each topic;
//! - `POST /v1/topics/listen`, `POST /v1/topics/unlisten` with the API key, for `{"client": C}`,
//!   `{"user": U, "session": S}` or `{"user": U}`: the app's backend decides.
//!
//! A tab may be connected to another node: the bus finds it; listens kept in the store reach
//! the user's tabs on every node. Each answers the scope's topics after the change:
//! `{"client": C, "topics": [...]}`, `{"user": U, "session": S, "topics": [...]}` or
//! `{"user": U, "topics": [...]}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use herald_core::{ClientId, NotifyError, SessionId, Topic, UserId};
use serde::{Deserialize, Serialize};

use crate::api::inbox::{DeclaredJson, client_header};
use crate::app::App;
use crate::auth::{Publisher, Subscriber};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::response::json_response;

/// The body of `POST /v1/listen` and `/v1/unlisten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabListenBody {
    topics: Vec<String>,
    /// `client` (the default), `session` or `user`.
    scope: Option<String>,
}

/// The body of `POST /v1/topics/listen` and `/v1/topics/unlisten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenBody {
    topics: Vec<String>,
    client: Option<String>,
    user: Option<String>,
    session: Option<String>,
}

/// Who listens: one of the three scopes.
enum Scope {
    Client(ClientId),
    Session(UserId, SessionId),
    User(UserId),
}

/// The answer: the scope and its topics now.
#[derive(Debug, Serialize)]
struct Listening<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a ClientId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a SessionId>,
    topics: Vec<Topic>,
    /// A listen's topics' last tseqs, read just before the listen took effect: where a client
    /// that resumes these topics later starts (see PROTOCOL.md, durable topics).
    #[serde(skip_serializing_if = "Option::is_none")]
    positions: Option<std::collections::BTreeMap<&'a str, u64>>,
}

/// Users, sessions and tabs listed at most in a `GET /v1/topics/{topic}` answer, each.
pub const TOPIC_LISTENERS_LISTED_MAX: usize = 1_000;

#[derive(Serialize)]
struct TopicAnswer<'a> {
    topic: &'a Topic,
    users: &'a [UserId],
    sessions: Vec<SessionBody<'a>>,
    clients: Vec<TabBody<'a>>,
    truncated: bool,
    last_tseq: u64,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    user: &'a UserId,
    session: &'a SessionId,
}

#[derive(Serialize)]
struct TabBody<'a> {
    client: &'a ClientId,
    user: &'a UserId,
    session: &'a SessionId,
    node: &'a str,
}

/// `GET /v1/topics/{topic}`: who listens — users at user scope, sessions at session scope (from
/// the store) and tabs at any scope (on every node), at most [`TOPIC_LISTENERS_LISTED_MAX`]
/// of each (`truncated` when there were more).
pub async fn topic(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(topic): ApiPath<String>,
) -> Result<Response, ApiError> {
    let topic = Topic::new(topic)?;
    let listeners = app.notifier.topic_listeners(&topic, TOPIC_LISTENERS_LISTED_MAX).await?;
    let local = app.settings.node_id.as_str();
    let answer = TopicAnswer {
        topic: &topic,
        users: &listeners.users,
        sessions: listeners.sessions.iter().map(|(user, session)| SessionBody { user, session }).collect(),
        clients: listeners
            .tabs
            .iter()
            .map(|t| TabBody {
                client: &t.client,
                user: &t.user,
                session: &t.session,
                node: t.node.as_deref().unwrap_or(local),
            })
            .collect(),
        truncated: listeners.truncated,
        last_tseq: listeners.last_tseq,
    };
    Ok(json_response(&answer))
}

/// The body's topic names as topics: 400 `invalid_topic` for one that is not.
fn topics_of(names: &[String]) -> Result<Vec<Topic>, ApiError> {
    Ok(names.iter().map(Topic::new).collect::<Result<_, _>>()?)
}

/// The scope a subscriber names: its tab (`X-Herald-Client`, required), its token's session or
/// its token's user.
fn subscriber_scope(
    subscriber: &Subscriber,
    scope: Option<&str>,
    headers: &HeaderMap,
) -> Result<Scope, ApiError> {
    match scope {
        None | Some("client") => {
            let client = client_header(headers)?.ok_or_else(|| {
                ApiError::bad_request(
                    "missing_client",
                    "name the tab with X-Herald-Client (its client id, from `hello`)",
                )
            })?;
            Ok(Scope::Client(client))
        }
        Some("session") => Ok(Scope::Session(subscriber.user.clone(), subscriber.session.clone())),
        Some("user") => Ok(Scope::User(subscriber.user.clone())),
        Some(other) => Err(ApiError::bad_request(
            "invalid_request",
            format!("`scope` is one of client, session, user; not {other:?}"),
        )),
    }
}

/// The scope a publisher names.
fn publisher_scope(body: &ListenBody) -> Result<Scope, ApiError> {
    match (&body.client, &body.user, &body.session) {
        (Some(client), None, None) => Ok(Scope::Client(ClientId::new(client)?)),
        (None, Some(user), Some(session)) => Ok(Scope::Session(UserId::new(user)?, SessionId::new(session)?)),
        (None, Some(user), None) => Ok(Scope::User(UserId::new(user)?)),
        _ => Err(ApiError::bad_request(
            "invalid_target",
            r#"name who listens: {"client": C}, {"user": U, "session": S} or {"user": U}"#,
        )),
    }
}

/// Listens (or unlistens) `topics` at `scope`. A subscriber's client scope is a tab of its own
/// user and session only; a publisher's any tab, found by the bus.
async fn change(
    app: &App,
    scope: &Scope,
    subscriber: Option<&Subscriber>,
    topics: &[Topic],
    listen: bool,
) -> Result<Response, ApiError> {
    let notifier = &app.notifier;
    // Read before the listen takes effect: an event stored after this read reaches the tab live
    // or, should it be away, on its resume from these positions (an event stored between the
    // read and the listen comes too, on a resume: earlier rather than lost).
    let positions = if listen {
        let (heads, _) = app.store.topic_heads(topics).await?;
        Some(topics.iter().zip(heads).map(|(topic, head)| (topic.as_str(), head.last_tseq)).collect())
    } else {
        None
    };
    let now = match scope {
        Scope::Client(client) => {
            let (user, session) = match subscriber {
                Some(subscriber) => (subscriber.user.clone(), subscriber.session.clone()),
                None => notifier
                    .bus()
                    .locate(client)
                    .await
                    .map_err(NotifyError::from)?
                    .ok_or_else(|| NotifyError::ClientNotFound(client.clone()))?,
            };
            if listen {
                notifier.listen(&user, &session, client, topics).await?
            } else {
                notifier.unlisten(&user, &session, client, topics).await?
            }
        }
        Scope::Session(user, session) if listen => notifier.listen_scope(user, Some(session), topics).await?,
        Scope::Session(user, session) => notifier.unlisten_scope(user, Some(session), topics).await?,
        Scope::User(user) if listen => notifier.listen_scope(user, None, topics).await?,
        Scope::User(user) => notifier.unlisten_scope(user, None, topics).await?,
    };
    let answer = match scope {
        Scope::Client(client) => {
            Listening { client: Some(client), user: None, session: None, topics: now, positions }
        }
        Scope::Session(user, session) => {
            Listening { client: None, user: Some(user), session: Some(session), topics: now, positions }
        }
        Scope::User(user) => {
            Listening { client: None, user: Some(user), session: None, topics: now, positions }
        }
    };
    Ok(json_response(&answer))
}

/// `POST /v1/listen`: the tab, the session or the user listens to `topics` too (each allowed by
/// the token's claim).
pub async fn listen(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<TabListenBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    let scope = subscriber_scope(&subscriber, body.scope.as_deref(), &headers)?;
    let topics = topics_of(&body.topics)?;
    subscriber.check_may_listen(&topics)?;
    change(&app, &scope, Some(&subscriber), &topics, true).await
}

/// `POST /v1/unlisten`: stops listening to `topics` at that scope (any of them, claim or not).
pub async fn unlisten(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<TabListenBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    let scope = subscriber_scope(&subscriber, body.scope.as_deref(), &headers)?;
    let topics = topics_of(&body.topics)?;
    change(&app, &scope, Some(&subscriber), &topics, false).await
}

/// `POST /v1/topics/listen`: the app's backend makes a tab, a session or a user listen.
pub async fn publisher_listen(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<ListenBody>,
) -> Result<Response, ApiError> {
    let topics = topics_of(&body.topics)?;
    change(&app, &publisher_scope(&body)?, None, &topics, true).await
}

/// `POST /v1/topics/unlisten`: the app's backend makes them stop.
pub async fn publisher_unlisten(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<ListenBody>,
) -> Result<Response, ApiError> {
    let topics = topics_of(&body.topics)?;
    change(&app, &publisher_scope(&body)?, None, &topics, false).await
}

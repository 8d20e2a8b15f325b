//! Listening to topics (Eliom_notif's `listen` / `unlisten`), at client scope (one tab, until it
//! unlistens or is forgotten):
//! - `POST /v1/listen`, `POST /v1/unlisten` with the subscriber token, for the tab named by
//!   `X-Herald-Client`; a listen needs the token's `topics` claim to allow each topic;
//! - `POST /v1/topics/listen`, `POST /v1/topics/unlisten` with the API key, for `{"client": C}`:
//!   the app's backend decides.
//!
//! The tab may be connected to another node: the bus finds it. Both answer the tab's topics
//! after the change: `{"client": C, "topics": [...]}`. Session and user scopes (kept in the
//! store) are not built yet: they are refused with 400 `unsupported_scope`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use herald_core::{ClientId, NotifyError, SessionId, Topic, UserId};
use serde::{Deserialize, Serialize};

use crate::api::inbox::{DeclaredJson, client_header};
use crate::app::App;
use crate::auth::{Publisher, Subscriber};
use crate::error::{ApiError, ApiJson};
use crate::response::json_response;

/// The body of `POST /v1/listen` and `/v1/unlisten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabListenBody {
    topics: Vec<String>,
    /// `client` (the default). `session` and `user` are refused for now.
    scope: Option<String>,
}

/// The body of `POST /v1/topics/listen` and `/v1/topics/unlisten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenBody {
    topics: Vec<String>,
    client: Option<ClientId>,
    user: Option<String>,
    session: Option<String>,
}

#[derive(Debug, Serialize)]
struct Listening<'a> {
    client: &'a ClientId,
    topics: Vec<Topic>,
}

/// The body's topic names as topics: 400 `invalid_topic` for one that is not.
fn topics_of(names: &[String]) -> Result<Vec<Topic>, ApiError> {
    Ok(names.iter().map(Topic::new).collect::<Result<_, _>>()?)
}

fn unsupported_scope(scope: &str) -> ApiError {
    ApiError::bad_request(
        "unsupported_scope",
        format!("listening at {scope} scope is not built yet: listen at client scope (one tab)"),
    )
}

fn check_tab_scope(scope: Option<&str>) -> Result<(), ApiError> {
    match scope {
        None | Some("client") => Ok(()),
        Some(scope @ ("session" | "user")) => Err(unsupported_scope(scope)),
        Some(other) => Err(ApiError::bad_request(
            "invalid_request",
            format!("`scope` is one of client, session, user; not {other:?}"),
        )),
    }
}

/// The tab a subscriber's listen is for: `X-Herald-Client`, required.
fn tab_of(headers: &HeaderMap) -> Result<ClientId, ApiError> {
    client_header(headers)?.ok_or_else(|| {
        ApiError::bad_request(
            "missing_client",
            "name the tab with X-Herald-Client (its client id, from `hello`)",
        )
    })
}

/// `POST /v1/listen`: the tab listens to `topics` too (each allowed by the token's claim).
pub async fn listen(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<TabListenBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    check_tab_scope(body.scope.as_deref())?;
    let client = tab_of(&headers)?;
    let wanted = topics_of(&body.topics)?;
    subscriber.check_may_listen(&wanted)?;
    let topics = app.notifier.listen(&subscriber.user, &subscriber.session, &client, &wanted).await?;
    Ok(json_response(&Listening { client: &client, topics }))
}

/// `POST /v1/unlisten`: the tab stops listening to `topics` (any of them, claim or not).
pub async fn unlisten(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    headers: HeaderMap,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<TabListenBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    check_tab_scope(body.scope.as_deref())?;
    let client = tab_of(&headers)?;
    let unwanted = topics_of(&body.topics)?;
    let topics = app.notifier.unlisten(&subscriber.user, &subscriber.session, &client, &unwanted).await?;
    Ok(json_response(&Listening { client: &client, topics }))
}

/// The tab of a publisher's listen: `{"client": C}` (user and session scopes are refused).
async fn publisher_tab(app: &App, body: &ListenBody) -> Result<(UserId, SessionId, ClientId), ApiError> {
    match (&body.client, &body.user, &body.session) {
        (Some(client), None, None) => {
            let (user, session) = app
                .notifier
                .bus()
                .locate(client)
                .await
                .map_err(NotifyError::from)?
                .ok_or_else(|| ApiError::from(NotifyError::ClientNotFound(client.clone())))?;
            Ok((user, session, client.clone()))
        }
        (None, Some(_), Some(_)) => Err(unsupported_scope("session")),
        (None, Some(_), None) => Err(unsupported_scope("user")),
        _ => Err(ApiError::bad_request(
            "invalid_target",
            r#"name who listens: {"client": C}, {"user": U, "session": S} or {"user": U}"#,
        )),
    }
}

/// `POST /v1/topics/listen`: the app's backend makes a tab listen to `topics`.
pub async fn publisher_listen(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<ListenBody>,
) -> Result<Response, ApiError> {
    let wanted = topics_of(&body.topics)?;
    let (user, session, client) = publisher_tab(&app, &body).await?;
    let topics = app.notifier.listen(&user, &session, &client, &wanted).await?;
    Ok(json_response(&Listening { client: &client, topics }))
}

/// `POST /v1/topics/unlisten`: the app's backend makes a tab stop listening to `topics`.
pub async fn publisher_unlisten(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<ListenBody>,
) -> Result<Response, ApiError> {
    let unwanted = topics_of(&body.topics)?;
    let (user, session, client) = publisher_tab(&app, &body).await?;
    let topics = app.notifier.unlisten(&user, &session, &client, &unwanted).await?;
    Ok(json_response(&Listening { client: &client, topics }))
}

//! Web Push subscriptions: a browser registers the `PushSubscription` its service worker got
//! (`POST /v1/push/subscriptions`, subscriber token: kept for the token's user and session) and
//! removes it (`DELETE /v1/push/subscriptions`); the app's backend lists and removes a user's
//! (`/v1/users/{user}/push-subscriptions`, API key). `GET /v1/push/vapid-public-key` gives the
//! key `pushManager.subscribe` needs. The checks are `crate::push`'s; what is kept, the store's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::notification::{format_timestamp_ms, now_ms};
use herald_core::{PushSubscription, UserId, push_subscription_id};
use serde::{Deserialize, Serialize};

use crate::api::inbox::DeclaredJson;
use crate::app::App;
use crate::auth::{Publisher, Subscriber};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::push::{VapidKey, check_keys};
use crate::response::json_response;

/// The browser's `PushSubscription.toJSON()`; `expirationTime` and anything else it adds are
/// ignored.
#[derive(Deserialize)]
pub struct SubscriptionBody {
    endpoint: String,
    keys: KeysBody,
}

#[derive(Deserialize)]
struct KeysBody {
    p256dh: String,
    auth: String,
}

/// The body of `DELETE /v1/push/subscriptions`.
#[derive(Deserialize)]
pub struct EndpointBody {
    endpoint: String,
}

#[derive(Serialize)]
struct SubscribedBody<'a> {
    id: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct SubscriptionsBody<'a> {
    user: &'a str,
    subscriptions: Vec<ListedBody<'a>>,
}

/// A subscription as the publisher API shows it: its endpoint's origin only (the whole URL is a
/// capability to push to that browser).
#[derive(Serialize)]
struct ListedBody<'a> {
    id: &'a str,
    session: &'a str,
    push_service: String,
    created_at: String,
}

/// The key, or 404 `push_not_configured`.
fn vapid(app: &App) -> Result<&VapidKey, ApiError> {
    app.settings.push.vapid.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "push_not_configured",
            "Web Push is not configured on this server (no VAPID key: --vapid-private-key)",
        )
    })
}

/// `GET /v1/push/vapid-public-key`: `{"public_key": "B…"}`, the application server key.
pub async fn vapid_public_key(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(json_response(&serde_json::json!({ "public_key": vapid(&app)?.public_key() })))
}

/// `POST /v1/push/subscriptions`: keeps the browser's subscription for the token's user and
/// session (201), replacing the one with its endpoint; beyond the bounds the oldest go.
pub async fn subscribe(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<SubscriptionBody>,
) -> Result<Response, ApiError> {
    vapid(&app)?;
    app.limiter.admit_inbox_write(&subscriber.user)?;
    let push = &app.settings.push;
    push.endpoints
        .check(&body.endpoint)
        .map_err(|e| ApiError::bad_request("invalid_push_endpoint", e.to_string()))?;
    check_keys(&body.keys.p256dh, &body.keys.auth)
        .map_err(|e| ApiError::bad_request("invalid_push_keys", e.to_string()))?;
    let subscription = PushSubscription {
        id: push_subscription_id(&body.endpoint),
        user: subscriber.user.clone(),
        session: subscriber.session.clone(),
        endpoint: body.endpoint,
        p256dh: body.keys.p256dh.trim_end_matches('=').to_owned(),
        auth: body.keys.auth.trim_end_matches('=').to_owned(),
        created_at_ms: now_ms(),
    };
    let forgotten = app.store.push_subscribe(&subscription, push.bounds).await?;
    if !forgotten.is_empty() {
        tracing::info!(user = %subscription.user, forgotten = forgotten.len(), "push subscriptions over the bound: the oldest forgotten");
    }
    let answer =
        SubscribedBody { id: &subscription.id, created_at: format_timestamp_ms(subscription.created_at_ms) };
    Ok((StatusCode::CREATED, json_response(&answer)).into_response())
}

/// `DELETE /v1/push/subscriptions` with `{"endpoint": …}`: forgets the token's user's
/// subscription with that endpoint: 204, or 404 `no_such_subscription`.
pub async fn unsubscribe(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    _json: DeclaredJson,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<Response, ApiError> {
    app.limiter.admit_inbox_write(&subscriber.user)?;
    remove(&app, &subscriber.user, &push_subscription_id(&body.endpoint)).await
}

/// `GET /v1/users/{user}/push-subscriptions`: the user's subscriptions, oldest first.
pub async fn user_list(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath(user): ApiPath<String>,
) -> Result<Response, ApiError> {
    let user = UserId::new(user)?;
    let kept = app.store.push_subscriptions(&user).await?;
    let subscriptions = kept
        .iter()
        .map(|s| ListedBody {
            id: &s.id,
            session: s.session.as_str(),
            push_service: url::Url::parse(&s.endpoint)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default(),
            created_at: format_timestamp_ms(s.created_at_ms),
        })
        .collect();
    Ok(json_response(&SubscriptionsBody { user: user.as_str(), subscriptions }))
}

/// `DELETE /v1/users/{user}/push-subscriptions/{id}`: 204, or 404 `no_such_subscription`.
pub async fn user_remove(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiPath((user, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    remove(&app, &UserId::new(user)?, &id).await
}

async fn remove(app: &App, user: &UserId, id: &str) -> Result<Response, ApiError> {
    if app.store.push_unsubscribe(user, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_subscription",
            "the user has no such push subscription",
        ))
    }
}

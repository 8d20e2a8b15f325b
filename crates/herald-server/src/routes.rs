//! The route table: every path Herald answers, its method, its handler, and the layers around
//! them (the per-address caps on subscriber routes, the web headers on every answer, the access
//! log around everything).
//!
//! **API Boundary:** what [`router`] returns is all of Herald's HTTP surface; an embedding app
//! gets it from [`crate::Herald::router`], which also runs the upkeep the routes rely on.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};

use crate::app::App;
use crate::error::ApiError;
use crate::{access, api, assets, caps, demo, health, origin, transport};

/// The HTTP routes of Herald.
pub fn router(app: Arc<App>) -> Router {
    let demo = app.settings.dev_mode && app.settings.demo;
    // Subscriber routes, under the per-address caps (see `caps`): the long ones hold one of the
    // address's connections, the short ones only count against its rate.
    let subscriber_connections = Router::new()
        .route("/v1/stream", get(transport::sse::stream))
        .route("/v1/ws", get(transport::ws::ws))
        .route("/v1/poll", get(transport::poll::poll))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), caps::limit_connections));
    let subscriber_requests = Router::new()
        .route("/v1/inbox", get(api::inbox::list).delete(api::inbox::delete_all))
        .route("/v1/inbox/counts", get(api::inbox::counts))
        .route("/v1/inbox/mark", post(api::inbox::mark))
        .route("/v1/inbox/{seq}", delete(api::inbox::delete_one))
        .route("/v1/listen", post(api::topics::listen))
        .route("/v1/unlisten", post(api::topics::unlisten))
        .route("/v1/push/subscriptions", post(api::push::subscribe).delete(api::push::unsubscribe))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), caps::limit_requests));
    let router = Router::new()
        .merge(subscriber_connections)
        .merge(subscriber_requests)
        .route("/healthz", get(health::healthz))
        .route("/v1/cluster", get(health::cluster))
        .route("/v1/notify", post(api::publish::notify))
        .route("/v1/notify/batch", post(api::publish::notify_batch))
        .route("/v1/topics/listen", post(api::topics::publisher_listen))
        .route("/v1/topics/unlisten", post(api::topics::publisher_unlisten))
        .route("/v1/topics/{topic}", get(api::topics::topic))
        .route("/v1/users/{user}/presence", get(api::users::presence))
        .route("/v1/users/{user}/notifications", get(api::users::notifications))
        .route("/v1/users/{user}/sessions", delete(api::users::close_all_sessions))
        .route("/v1/users/{user}/sessions/{session}", delete(api::users::close_session))
        .route("/v1/jobs/{id}", get(api::publish::job))
        .route("/v1/users/{user}/inbox", get(api::inbox::user_list).delete(api::inbox::user_delete_all))
        .route("/v1/users/{user}/inbox/counts", get(api::inbox::user_counts))
        .route("/v1/users/{user}/inbox/mark", post(api::inbox::user_mark))
        .route("/v1/users/{user}/inbox/{seq}", delete(api::inbox::user_delete_one))
        .route("/v1/push/vapid-public-key", get(api::push::vapid_public_key))
        .route("/v1/users/{user}/push-subscriptions", get(api::push::user_list))
        .route("/v1/users/{user}/push-subscriptions/{id}", delete(api::push::user_remove))
        .route("/herald.js", get(assets::herald_js))
        .route("/herald.d.ts", get(assets::herald_d_ts))
        .route("/herald-sw.js", get(assets::herald_sw_js))
        .route("/v1/openapi.json", get(assets::openapi_json));
    let router = if demo { router.merge(demo::routes()) } else { router };
    let router = router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(caps::slow_refusals))
        .layer(axum::middleware::from_fn_with_state(app.clone(), origin::web_headers));
    // Outermost: the line's duration and status are what the client got (a refusal's delay
    // included), and every answer carries the request id.
    let router = if app.settings.access_log {
        router.layer(axum::middleware::from_fn_with_state(app.clone(), access::log_requests))
    } else {
        router
    };
    router.with_state(app)
}

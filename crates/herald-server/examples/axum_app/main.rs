//! An axum app with Herald inside it (docs/guides/axum.md): a toy sign-in, a Herald token for the
//! signed-in page, the page (`index.html`) loading herald.js from the Herald mounted under
//! `/herald`, a background job that notifies through Herald's notifier, and sign-out closing the
//! session. One process, one port, one origin.
//!
//! ```sh
//! HERALD_SECRET=$(openssl rand -base64 32) cargo run -p herald-server --example axum_app
//! ```
//!
//! then open <http://127.0.0.1:3000/>. Settings, from the environment: `HERALD_SECRET` (required,
//! 32 bytes or more), `HERALD_API_KEY` (for other services that publish over HTTP; a random one
//! when not set), `AXUM_APP_LISTEN` (`127.0.0.1:3000`; port 0 picks a free one), `AXUM_APP_DB`
//! (the SQLite file, `axum-app.db`), `EXPORT_DELAY_MS` (2000: how long the job "works"). It
//! prints `listening on http://ADDR` once it serves. tests/browser/guide-axum.test.mjs runs it.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::{Notifier, Publish, Retention, SessionId, UserId};
use herald_server::Herald;
use herald_store::SqliteStore;
use serde_json::json;
use tokio::sync::mpsc;

/// Exports waiting at most; one more is refused (503).
const EXPORTS_QUEUED_MAX: usize = 100;
/// Sign-ins the toy sign-in keeps at most; one more is refused (503).
const SIGN_INS_MAX: usize = 10_000;
/// Lifetime of a page's Herald token: herald.js asks for a new one whenever it expires.
const TOKEN_TTL: Duration = Duration::from_secs(900);

/// What the routes share.
struct AppState {
    /// Signs the pages' Herald tokens (the same secret Herald checks them with).
    herald_secret: String,
    /// Publishes into the Herald of this process, from any task.
    notifier: Notifier,
    /// The toy sign-in: cookie value -> who signed in.
    sign_ins: Mutex<HashMap<String, SignIn>>,
    /// The background job's queue.
    exports: mpsc::Sender<Export>,
}

#[derive(Clone)]
struct SignIn {
    user: String,
    /// The public session id of this sign-in: the token's `sid`, which the page can see (never
    /// the cookie's value).
    session: String,
}

struct Export {
    id: String,
    user: UserId,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let secret = std::env::var("HERALD_SECRET").map_err(|_| "set HERALD_SECRET (32 bytes or more)")?;
    let api_key = std::env::var("HERALD_API_KEY").unwrap_or_else(|_| random_hex());
    let listen = std::env::var("AXUM_APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let db = std::env::var("AXUM_APP_DB").unwrap_or_else(|_| "axum-app.db".to_owned());
    let export_delay =
        Duration::from_millis(std::env::var("EXPORT_DELAY_MS").map_or(Ok(2_000), |v| v.parse())?);

    // Herald, in this process: its store, its routes, its notifier, its upkeep.
    let store = Arc::new(SqliteStore::open(db.as_ref(), Retention::default())?);
    let herald = Herald::builder(store, &secret, api_key).build();

    let (exports, queue) = mpsc::channel(EXPORTS_QUEUED_MAX);
    tokio::spawn(export_worker(queue, herald.notifier(), export_delay));
    let state = Arc::new(AppState {
        herald_secret: secret,
        notifier: herald.notifier(),
        sign_ins: Mutex::new(HashMap::new()),
        exports,
    });

    let app = Router::new()
        .route("/", get(|| async { Html(include_str!("index.html")) }))
        .route("/sign-in", post(sign_in))
        .route("/me", get(me))
        .route("/herald-token", get(herald_token))
        .route("/exports", post(start_export))
        .route("/sign-out", post(sign_out))
        .with_state(state)
        .nest("/herald", herald.router());

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // With the peer's address, Herald's per-address caps apply to its subscriber routes.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            stop_signal().await;
            // Before the server waits for its connections: every stream ends (`closed:
            // shutdown`; herald.js reconnects to the next process), so the wait is short.
            herald.shutdown().await;
        })
        .await?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct SignInForm {
    user: String,
}

/// The toy sign-in: whoever gives a name is that user.
async fn sign_in(State(state): State<Arc<AppState>>, Json(form): Json<SignInForm>) -> Response {
    let user = form.user.trim().to_owned();
    if UserId::new(&user).is_err() {
        return (StatusCode::BAD_REQUEST, "a name of 1 to 128 bytes").into_response();
    }
    let cookie = random_hex();
    let session = random_hex()[..16].to_owned();
    {
        let mut sign_ins = state.sign_ins.lock().expect("no sign-in handler panics holding the lock");
        if sign_ins.len() >= SIGN_INS_MAX {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many sign-ins").into_response();
        }
        sign_ins.insert(cookie.clone(), SignIn { user, session });
    }
    // In production: `Secure` too (HTTPS only).
    let set_cookie = format!("app_session={cookie}; HttpOnly; SameSite=Lax; Path=/");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, set_cookie)]).into_response()
}

/// Who is signed in, from the `app_session` cookie.
fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<(String, SignIn)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let cookie = cookies.split(';').find_map(|c| c.trim().strip_prefix("app_session="))?;
    let sign_ins = state.sign_ins.lock().expect("no sign-in handler panics holding the lock");
    sign_ins.get(cookie).map(|sign_in| (cookie.to_owned(), sign_in.clone()))
}

fn sign_in_first() -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": "sign in first" }))).into_response()
}

async fn me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers) {
        Some((_, sign_in)) => Json(json!({ "user": sign_in.user })).into_response(),
        None => sign_in_first(),
    }
}

/// The page's Herald token, for the signed-in user only.
async fn herald_token(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((_, SignIn { user, session })) = signed_in(&state, &headers) else {
        return sign_in_first();
    };
    match herald_client::mint_token(state.herald_secret.as_bytes(), &user, Some(&session), TOKEN_TTL) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Something slow the user asks for: the answer comes at once, the notification when it is done.
async fn start_export(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((_, sign_in)) = signed_in(&state, &headers) else {
        return sign_in_first();
    };
    let user = UserId::new(&sign_in.user).expect("checked at sign-in");
    let id = random_hex()[..16].to_owned();
    match state.exports.try_send(Export { id: id.clone(), user }) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "export": id }))).into_response(),
        Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "too many exports waiting: try again later").into_response()
        }
    }
}

/// The background job: works the exports one at a time and tells each user when theirs is ready.
async fn export_worker(mut queue: mpsc::Receiver<Export>, notifier: Notifier, delay: Duration) {
    while let Some(Export { id, user }) = queue.recv().await {
        tokio::time::sleep(delay).await; // "building" the export
        let data = serde_json::value::to_raw_value(
            &json!({ "text": "Your export is ready", "url": format!("/exports/{id}") }),
        )
        .expect("a JSON value serializes");
        let mut publish = Publish::to_user(user.clone(), "export.ready", data.into());
        // A retry of this job (after a crash, say) stores it once.
        publish.idempotency_key = Some(format!("export-{id}"));
        if let Err(error) = notifier.publish(publish).await {
            eprintln!("export {id}: cannot notify {user}: {error}");
        }
    }
}

/// Sign-out: closes the session's streams in every tab and refuses its tokens from now on.
async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((cookie, SignIn { user, session })) = signed_in(&state, &headers) else {
        return sign_in_first();
    };
    state.sign_ins.lock().expect("no sign-in handler panics holding the lock").remove(&cookie);
    let (user, session) =
        (UserId::new(user).expect("checked at sign-in"), SessionId::new(session).expect("ours"));
    if let Err(error) = state.notifier.close_sessions(&user, Some(&session)).await {
        return (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response();
    }
    let clear = "app_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0";
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response()
}

/// 32 random bytes, in hex.
fn random_hex() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

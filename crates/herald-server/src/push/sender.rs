//! The push sender: takes the pushes that are due from the store's outbox and sends each to its
//! browser's push service (RFC 8030), encrypted (RFC 8291, aes128gcm, by `web-push-native`) and
//! signed (RFC 8292, [`super::VapidKey::authorization`]).
//!
//! One loop in the upkeep's task ([`run`]): every [`PUSH_OUTBOX_POLL_INTERVAL`] it reads up to
//! [`PUSH_DUE_BATCH_MAX`] due deliveries and sends at most [`PUSH_SENDS_CONCURRENT_MAX`] at once,
//! each within [`PUSH_SEND_TIMEOUT`]; what is being sent is not taken again. A delivery leaves
//! the outbox only once its send is settled ([`herald_core::Store::push_settle`]): a crash in
//! between sends it again at the next start (at least once); nothing else sends it twice.
//!
//! What each answer does: 2xx sent; 404 or 410 the subscription is gone (removed from the
//! store); 413 too large (logged, dropped); 429 and 5xx, a timeout or a connection failure are
//! retried after `Retry-After` (seconds, at most [`PUSH_RETRY_AFTER_MAX`]) or an exponential
//! back-off ([`PUSH_BACKOFF_BASE`] doubling up to [`PUSH_BACKOFF_MAX`]), [`PUSH_ATTEMPTS_MAX`]
//! times in all; any other answer is logged and dropped. A delivery whose subscription was
//! removed or now belongs to another user, or (policy `offline`) whose session has a live tab
//! now, is dropped unsent.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use herald_core::notification::now_ms;
use herald_core::{PushDelivery, PushSettle};

use super::VapidKey;
use crate::app::App;

/// How often the outbox is read for due pushes: a push goes out at most this late after it is
/// due (after the publish under `always`, after the grace period under `offline`).
pub const PUSH_OUTBOX_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Most due deliveries read from the outbox at once.
pub const PUSH_DUE_BATCH_MAX: usize = 64;
/// Most pushes being sent at once; the others wait in the outbox for the next read.
pub const PUSH_SENDS_CONCURRENT_MAX: usize = 16;
/// Longest a push service may take to answer one push (connection included); then the send
/// counts as failed and is retried.
pub const PUSH_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends tried per delivery (the first included); after the last failure it is dropped, logged.
pub const PUSH_ATTEMPTS_MAX: u32 = 8;
/// First wait before a retry without `Retry-After`; it doubles with every attempt.
pub const PUSH_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two attempts without `Retry-After`.
pub const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Longest `Retry-After` honoured; a longer one waits this long.
pub const PUSH_RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What came of one send.
#[derive(Debug)]
enum Outcome {
    Sent,
    /// Not sent, on purpose (unsubscribed, a live tab, an endpoint no longer allowed).
    Dropped(&'static str),
    /// 404 / 410: the browser's subscription is gone.
    Gone,
    /// Worth another try, after this long if the push service said.
    Retry {
        status: Option<u16>,
        after: Option<Duration>,
    },
    /// Refused for good (413, other 4xx, a key that does not decode).
    Failed {
        status: Option<u16>,
        why: String,
    },
}

/// Sends due pushes forever; returns at once (pending forever) when push is not configured.
pub(crate) async fn run(app: &App) {
    let Some(vapid) = app.settings.push.vapid.clone() else {
        return std::future::pending().await;
    };
    let http = match client() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "Web Push: cannot build the HTTP client; no push will be sent");
            return std::future::pending().await;
        }
    };
    let mut sending: HashSet<String> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(PUSH_OUTBOX_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick(), if in_flight.len() < PUSH_SENDS_CONCURRENT_MAX => {
                let room = PUSH_SENDS_CONCURRENT_MAX - in_flight.len();
                match app.store.push_due(now_ms(), PUSH_DUE_BATCH_MAX).await {
                    Ok(due) => {
                        let fresh: Vec<PushDelivery> =
                            due.into_iter().filter(|d| !sending.contains(&d.id)).take(room).collect();
                        for delivery in fresh {
                            sending.insert(delivery.id.clone());
                            in_flight.push(send(app, &http, &vapid, delivery));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Web Push: cannot read the outbox"),
                }
            }
            Some(id) = in_flight.next(), if !in_flight.is_empty() => {
                sending.remove(&id);
            }
        }
    }
}

/// The client pushes go out with: the system's root certificates (rustls), HTTP/1.1 or 2.
fn client() -> Result<reqwest::Client, reqwest::Error> {
    let mut builder =
        reqwest::Client::builder().timeout(PUSH_SEND_TIMEOUT).connect_timeout(PUSH_SEND_TIMEOUT);
    for certificate in rustls_native_certs::load_native_certs().certs {
        if let Ok(certificate) = reqwest::Certificate::from_der(&certificate) {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build()
}

/// Sends one delivery and settles it in the store; returns its id.
async fn send(app: &App, http: &reqwest::Client, vapid: &VapidKey, delivery: PushDelivery) -> String {
    let outcome = attempt(app, http, vapid, &delivery).await;
    let attempts = delivery.attempts + 1;
    let settle = match &outcome {
        Outcome::Sent => {
            tracing::debug!(user = %delivery.user, id = %delivery.id, "push sent");
            PushSettle::Done
        }
        Outcome::Dropped(why) => {
            tracing::debug!(user = %delivery.user, id = %delivery.id, why, "push dropped");
            PushSettle::Done
        }
        Outcome::Gone => {
            tracing::info!(user = %delivery.user, subscription = %delivery.subscription, "push subscription gone (404/410): removed");
            if let Err(error) = app.store.push_unsubscribe(&delivery.user, &delivery.subscription).await {
                tracing::warn!(%error, "Web Push: cannot remove a gone subscription");
            }
            PushSettle::Done
        }
        Outcome::Failed { status, why } => {
            tracing::warn!(user = %delivery.user, id = %delivery.id, status, why, "push refused by the push service: dropped");
            PushSettle::Done
        }
        Outcome::Retry { status, .. } if attempts >= PUSH_ATTEMPTS_MAX => {
            tracing::warn!(user = %delivery.user, id = %delivery.id, status, attempts, "push failed every attempt: dropped");
            PushSettle::Done
        }
        Outcome::Retry { status, after } => {
            let wait = after.map_or_else(|| backoff(attempts), |after| after.min(PUSH_RETRY_AFTER_MAX));
            tracing::info!(user = %delivery.user, id = %delivery.id, status, attempts, wait_ms = wait.as_millis() as u64, "push to retry");
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            PushSettle::Retry { due_at_ms: now_ms().saturating_add(wait_ms), attempts }
        }
    };
    if let Err(error) = app.store.push_settle(&delivery.id, settle).await {
        // Still in the outbox: sent again at its next read (at least once).
        tracing::warn!(%error, id = %delivery.id, "Web Push: cannot settle a push in the outbox");
    }
    delivery.id
}

/// [`PUSH_BACKOFF_BASE`] doubled for each attempt made, at most [`PUSH_BACKOFF_MAX`].
fn backoff(attempts: u32) -> Duration {
    PUSH_BACKOFF_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(PUSH_BACKOFF_MAX)
}

/// `Retry-After` in seconds (an HTTP date is not read: the back-off applies then).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

async fn attempt(app: &App, http: &reqwest::Client, vapid: &VapidKey, delivery: &PushDelivery) -> Outcome {
    let subscription = match app.store.push_subscription(&delivery.subscription).await {
        Ok(Some(subscription)) if subscription.user == delivery.user => subscription,
        Ok(_) => return Outcome::Dropped("unsubscribed"),
        Err(_) => return Outcome::Retry { status: None, after: None },
    };
    if let Some(session) = &delivery.unless_live {
        match app.notifier.presence(&delivery.user).await {
            Ok(presence) if presence.sessions.iter().any(|s| &s.session == session) => {
                return Outcome::Dropped("a tab of the session is live");
            }
            Ok(_) => {}
            Err(_) => return Outcome::Retry { status: None, after: None },
        }
    }
    let Ok(endpoint) = app.settings.push.endpoints.check(&subscription.endpoint) else {
        return Outcome::Dropped("endpoint no longer allowed");
    };
    let keys = URL_SAFE_NO_PAD
        .decode(&subscription.p256dh)
        .ok()
        .and_then(|point| web_push_native::p256::PublicKey::from_sec1_bytes(&point).ok())
        .zip(URL_SAFE_NO_PAD.decode(&subscription.auth).ok().filter(|a| a.len() == 16));
    let Some((public_key, auth)) = keys else {
        return Outcome::Failed { status: None, why: "the subscription's keys do not decode".into() };
    };
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    let body = match web_push_native::encrypt(delivery.payload.clone().into_bytes(), &public_key, &auth) {
        Ok(body) => body,
        Err(error) => return Outcome::Failed { status: None, why: error.to_string() },
    };
    let now_secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let mut request = http
        .post(endpoint.as_str())
        .header("TTL", delivery.ttl_secs.to_string())
        .header("Urgency", delivery.urgency.as_str())
        .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::AUTHORIZATION, vapid.authorization(&endpoint, now_secs))
        .body(body);
    if let Some(topic) = &delivery.topic {
        request = request.header("Topic", topic);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(_) => return Outcome::Retry { status: None, after: None },
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Gone,
        429 | 500..=599 => Outcome::Retry { status: Some(status), after: retry_after(&response) },
        413 => {
            Outcome::Failed { status: Some(status), why: "the push is too large for the push service".into() }
        }
        _ => Outcome::Failed { status: Some(status), why: "refused".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff(1), PUSH_BACKOFF_BASE);
        assert_eq!(backoff(2), PUSH_BACKOFF_BASE * 2);
        assert_eq!(backoff(4), PUSH_BACKOFF_BASE * 8);
        assert_eq!(backoff(40), PUSH_BACKOFF_MAX);
    }
}

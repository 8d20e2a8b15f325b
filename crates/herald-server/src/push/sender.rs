//! The push sender: takes the pushes that are due from the store's outbox and sends each to its
//! browser's push service (RFC 8030), encrypted (RFC 8291, aes128gcm, by `web-push-native`) and
//! signed (RFC 8292, [`super::VapidKey::authorization`]).
//!
//! One loop in the upkeep's task ([`run`]). It sleeps until the next delivery is due or the next
//! push marker is to be expanded ([`herald_core::Store::push_next_due`]), at most
//! [`PUSH_IDLE_WAIT_MAX`] (another node's rows, and markers, come without a wake-up), and is
//! woken at once when this node adds deliveries ([`herald_core::PushOutbox`]). Then it expands
//! up to [`PUSH_PENDING_BATCH_MAX`] markers their publish left
//! ([`herald_core::Notifier::expand_pending_pushes`]) and *claims* up to [`PUSH_DUE_BATCH_MAX`]
//! due deliveries for [`PUSH_CLAIM_LEASE`] ([`herald_core::Store::push_claim`]): another node's
//! sender on the same store does not take them meanwhile, and a node that dies mid-send leaves
//! them to be claimed again once the lease ends (at least once). At most
//! [`PUSH_SENDS_CONCURRENT_MAX`] are sent at once, each within [`PUSH_SEND_TIMEOUT`]. A delivery
//! leaves the outbox only once its send is settled ([`herald_core::Store::push_settle`]): a
//! crash in between sends it again (at least once); nothing else sends it twice. Every
//! [`PUSH_OUTBOX_DEPTH_REFRESH`] it counts the outbox, for its bound
//! ([`herald_core::PUSH_OUTBOX_DELIVERIES_MAX`]) and `/metrics`.
//!
//! What each answer does: 2xx sent; 404 or 410 the subscription is gone (removed from the
//! store); 413 too large (logged, dropped); 429 and 5xx, a timeout or a connection failure are
//! retried after `Retry-After` (seconds or an HTTP date, at most [`PUSH_RETRY_AFTER_MAX`]) or an
//! exponential back-off ([`PUSH_BACKOFF_BASE`] doubling up to [`PUSH_BACKOFF_MAX`]),
//! [`PUSH_ATTEMPTS_MAX`] times in all; any other answer is logged and dropped. A delivery whose
//! subscription was removed or now belongs to another user, or (policy `offline`) whose session
//! has a live tab now, is dropped unsent. Each is counted ([`herald_core::PushCounters`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::notification::now_ms;
use herald_core::{PushCounters, PushDelivery, PushSettle};
use tokio::task::JoinSet;

use super::VapidKey;
use crate::app::App;

/// Longest the sender sleeps between two looks at the outbox: what this node adds wakes it at
/// once, but other nodes' deliveries (and markers left by a node that died) only show in the
/// store, so a push due there goes out at most this late.
pub const PUSH_IDLE_WAIT_MAX: Duration = Duration::from_secs(1);
/// Most due deliveries claimed from the outbox at once.
pub const PUSH_DUE_BATCH_MAX: usize = 64;
/// Most markers expanded by the sender at once (see [`herald_core::Notifier::expand_pending_pushes`]).
pub const PUSH_PENDING_BATCH_MAX: usize = 64;
/// Most pushes being sent at once; the others wait in the outbox for the next claim.
pub const PUSH_SENDS_CONCURRENT_MAX: usize = 16;
/// Longest a push service may take to answer one push (connection included); then the send
/// counts as failed and is retried.
pub const PUSH_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery (or marker) is this node's: six times [`PUSH_SEND_TIMEOUT`], so
/// that a send that takes all of it, and its settling on a slow store, end long before another
/// node may take the row. A node that dies mid-send holds its rows this long.
pub const PUSH_CLAIM_LEASE: Duration = Duration::from_secs(60);
const _: () =
    assert!(PUSH_CLAIM_LEASE.as_secs() >= 3 * PUSH_SEND_TIMEOUT.as_secs(), "the lease outlasts a send");
/// How often the outbox is counted (its depth, checked against
/// [`herald_core::PUSH_OUTBOX_DELIVERIES_MAX`] and shown as `herald_push_outbox_deliveries`).
pub const PUSH_OUTBOX_DEPTH_REFRESH: Duration = Duration::from_secs(5);
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
    /// Not sent, on purpose (unsubscribed, a live tab, an endpoint no longer allowed): the
    /// reason, one of [`herald_core::PUSH_DROP_REASONS`].
    Dropped(&'static str),
    /// 404 / 410: the browser's subscription is gone.
    Gone(u16),
    /// Worth another try, after this long if the push service said. `failure`: why the send
    /// failed (one of [`herald_core::PUSH_FAILURE_REASONS`]); `None` when it was not tried (the
    /// store or presence could not be read).
    Retry {
        failure: Option<&'static str>,
        status: Option<u16>,
        after: Option<Duration>,
    },
    /// Refused for good (413, other 4xx, a key that does not decode).
    Failed {
        status: Option<u16>,
        why: String,
    },
}

/// The failure reason of an answer with `status` (see [`herald_core::PUSH_FAILURE_REASONS`]).
fn status_class(status: u16) -> &'static str {
    if status >= 500 { "5xx" } else { "4xx" }
}

/// Sends due pushes forever; returns at once (pending forever) when push is not configured.
pub(crate) async fn run(app: &Arc<App>) {
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
    let outbox = Arc::clone(app.notifier.push_outbox());
    let mut sending: HashSet<String> = HashSet::new();
    let mut in_flight: JoinSet<String> = JoinSet::new();
    let mut counted_at: Option<Instant> = None;
    loop {
        if counted_at.is_none_or(|at| at.elapsed() >= PUSH_OUTBOX_DEPTH_REFRESH) {
            match app.store.push_outbox_depth().await {
                Ok(depth) => outbox.set_depth(depth),
                Err(error) => tracing::warn!(%error, "Web Push: cannot count the outbox"),
            }
            counted_at = Some(Instant::now());
        }
        let now = now_ms();
        let next_due = match app.store.push_next_due().await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "Web Push: cannot read the outbox");
                None
            }
        };
        let mut wait = next_due.map_or(PUSH_IDLE_WAIT_MAX, |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)).min(PUSH_IDLE_WAIT_MAX)
        });
        if wait.is_zero() {
            // Something is due: take it, then look again at once if anything was taken.
            let mut took = 0;
            match app.notifier.expand_pending_pushes(PUSH_PENDING_BATCH_MAX, PUSH_CLAIM_LEASE).await {
                Ok(markers) => took += markers,
                Err(error) => tracing::warn!(%error, "Web Push: cannot expand the pushes publishes left"),
            }
            let room = PUSH_SENDS_CONCURRENT_MAX.saturating_sub(in_flight.len()).min(PUSH_DUE_BATCH_MAX);
            if room > 0 {
                match app.store.push_claim(now_ms(), room, PUSH_CLAIM_LEASE).await {
                    Ok(claimed) => {
                        took += claimed.len();
                        for delivery in claimed {
                            // A lease that ran out while this node still sends it: not twice here.
                            if sending.insert(delivery.id.clone()) {
                                in_flight.spawn(send(
                                    Arc::clone(app),
                                    http.clone(),
                                    Arc::clone(&vapid),
                                    delivery,
                                ));
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Web Push: cannot claim from the outbox"),
                }
            }
            // Nothing taken although due (another node's claim, a store error, no room):
            // wait, rather than spin.
            wait = if took > 0 && in_flight.len() < PUSH_SENDS_CONCURRENT_MAX {
                Duration::ZERO
            } else {
                PUSH_IDLE_WAIT_MAX
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = outbox.added_since() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                match done {
                    Ok(id) => {
                        sending.remove(&id);
                    }
                    // A send that panicked: its id stays in `sending`, and its row is claimed
                    // again by another node after the lease (not here).
                    Err(error) => tracing::error!(%error, "Web Push: a send task failed"),
                }
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
async fn send(app: Arc<App>, http: reqwest::Client, vapid: Arc<VapidKey>, delivery: PushDelivery) -> String {
    let outcome = attempt(&app, &http, &vapid, &delivery).await;
    let counters: &PushCounters = &app.notifier.push_outbox().counters;
    let attempts = delivery.attempts + 1;
    let settle = match &outcome {
        Outcome::Sent => {
            tracing::debug!(user = %delivery.user, id = %delivery.id, "push sent");
            counters.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            PushSettle::Done
        }
        Outcome::Dropped(why) => {
            tracing::debug!(user = %delivery.user, id = %delivery.id, why, "push dropped");
            counters.drop_pushes(why, 1);
            PushSettle::Done
        }
        Outcome::Gone(status) => {
            tracing::info!(user = %delivery.user, subscription = %delivery.subscription, status, "push subscription gone (404/410): removed");
            counters.fail(status_class(*status));
            match app.store.push_unsubscribe(&delivery.user, &delivery.subscription).await {
                Ok(true) => {
                    counters.subscriptions_removed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "Web Push: cannot remove a gone subscription"),
            }
            PushSettle::Done
        }
        Outcome::Failed { status, why } => {
            tracing::warn!(user = %delivery.user, id = %delivery.id, status, why, "push refused by the push service: dropped");
            if let Some(status) = status {
                counters.fail(status_class(*status));
            }
            counters.drop_pushes("rejected", 1);
            PushSettle::Done
        }
        Outcome::Retry { failure, status, .. } if attempts >= PUSH_ATTEMPTS_MAX => {
            tracing::warn!(user = %delivery.user, id = %delivery.id, status, attempts, "push failed every attempt: dropped");
            if let Some(failure) = failure {
                counters.fail(failure);
            }
            counters.drop_pushes("attempts_exhausted", 1);
            PushSettle::Done
        }
        Outcome::Retry { failure, status, after } => {
            if let Some(failure) = failure {
                counters.fail(failure);
            }
            let wait = after.map_or_else(|| backoff(attempts), |after| after.min(PUSH_RETRY_AFTER_MAX));
            tracing::info!(user = %delivery.user, id = %delivery.id, status, attempts, wait_ms = wait.as_millis() as u64, "push to retry");
            let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            PushSettle::Retry { due_at_ms: now_ms().saturating_add(wait_ms), attempts }
        }
    };
    let done = settle == PushSettle::Done;
    match app.store.push_settle(&delivery.id, settle).await {
        Ok(()) if done => app.notifier.push_outbox().removed(),
        Ok(()) => {}
        // Still in the outbox: claimed and sent again once its lease ends (at least once).
        Err(error) => {
            tracing::warn!(%error, id = %delivery.id, "Web Push: cannot settle a push in the outbox")
        }
    }
    delivery.id
}

/// [`PUSH_BACKOFF_BASE`] doubled for each attempt made, at most [`PUSH_BACKOFF_MAX`].
fn backoff(attempts: u32) -> Duration {
    PUSH_BACKOFF_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(PUSH_BACKOFF_MAX)
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110), as a wait from `now` (a date past is no
/// wait). Anything else is ignored: the back-off applies.
fn retry_after(response: &reqwest::Response, now: std::time::SystemTime) -> Option<Duration> {
    parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?, now)
}

fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

async fn attempt(app: &App, http: &reqwest::Client, vapid: &VapidKey, delivery: &PushDelivery) -> Outcome {
    let subscription = match app.store.push_subscription(&delivery.subscription).await {
        Ok(Some(subscription)) if subscription.user == delivery.user => subscription,
        Ok(_) => return Outcome::Dropped("unsubscribed"),
        Err(_) => return Outcome::Retry { failure: None, status: None, after: None },
    };
    if let Some(session) = &delivery.unless_live {
        match app.notifier.presence(&delivery.user).await {
            Ok(presence) if presence.sessions.iter().any(|s| &s.session == session) => {
                return Outcome::Dropped("tab_live");
            }
            Ok(_) => {}
            Err(_) => return Outcome::Retry { failure: None, status: None, after: None },
        }
    }
    let Ok(endpoint) = app.settings.push.endpoints.check(&subscription.endpoint) else {
        return Outcome::Dropped("endpoint_not_allowed");
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
        Err(error) => {
            let failure = if error.is_timeout() { "timeout" } else { "refused" };
            return Outcome::Retry { failure: Some(failure), status: None, after: None };
        }
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Gone(status),
        429 | 500..=599 => Outcome::Retry {
            failure: Some(status_class(status)),
            status: Some(status),
            after: retry_after(&response, std::time::SystemTime::now()),
        },
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

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:48:37 GMT", now),
            Some(Duration::ZERO),
            "a date past"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}

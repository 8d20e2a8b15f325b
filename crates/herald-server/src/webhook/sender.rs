//! The webhook sender: a bounded queue of presence events, sent in order as signed batches,
//! retried with exponential back-off and jitter for a bounded time.
//!
//! One task sends one batch at a time, in the order the events were queued: the tracker queues
//! each user's events in order, so a receiver gets them in order per user (and a batch that
//! fails is sent again before anything after it). An event leaves the queue only once a POST
//! that held it was answered 2xx (at-least-once: a receiver that answered too late, or whose
//! answer was lost, gets the batch again; `id` and `user_seq` tell a repeat).
//!
//! What is lost is counted and told: an event that does not fit in the queue
//! ([`WEBHOOK_QUEUE_EVENTS_MAX`]), or still unsent [`WebhookConfig::retry_for`] after it was
//! queued, is dropped, and the first batch that is answered 2xx afterwards starts with one
//! `dropped` event: how many, and which users (at most [`WEBHOOK_DROPPED_USERS_MAX`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_core::notification::now_ms;
use herald_core::{PresenceEvent, PresenceSink, UserId};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::json;
use tokio::sync::Notify;

use super::signature::{SIGNATURE_HEADER, sign};
use super::{WebhookConfig, WebhookCounters};

/// Events waiting to be sent. At the bound a new event is dropped (counted, and reported by a
/// `dropped` event): about 300 bytes each, so 3 MB at most.
pub const WEBHOOK_QUEUE_EVENTS_MAX: usize = 10_000;

/// Most events in one POST.
pub const WEBHOOK_BATCH_EVENTS_MAX: usize = 100;

/// How long the first event of a batch waits for others before the batch is sent.
pub const WEBHOOK_BATCH_WAIT: Duration = Duration::from_millis(250);

/// How long an event is tried before it is dropped (counted, reported by `dropped`), by default:
/// a receiver down for less gets everything once it is back.
pub const WEBHOOK_RETRY_FOR_DEFAULT: Duration = Duration::from_secs(600);

/// The first wait after a failed POST; each failure doubles it, up to [`WEBHOOK_BACKOFF_MAX`],
/// and each wait is drawn between half and all of it (jitter: nodes that lost one receiver do
/// not all come back at once).
pub const WEBHOOK_BACKOFF_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two tries.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Longest time one POST may take (connecting, sending, and the receiver's answer).
pub const WEBHOOK_POST_TIMEOUT: Duration = Duration::from_secs(10);

/// At a graceful shutdown, how long the node keeps sending what is queued (the back-off is cut
/// short) before it stops; what is left then is lost, as at a `kill -9`.
pub const WEBHOOK_SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Users a `dropped` event names at most; past it, `users_truncated` is true.
pub const WEBHOOK_DROPPED_USERS_MAX: usize = 100;

/// One queued event, its JSON made once (its `id` stays the same on every try).
struct Queued {
    json: serde_json::Value,
    user: UserId,
    queued_at: Instant,
}

/// What was lost since the last `dropped` event the receiver got.
#[derive(Default)]
struct Dropped {
    /// The `dropped` event's id, made with its first drop: the same on every try.
    id: String,
    count: u64,
    users: BTreeSet<UserId>,
    users_truncated: bool,
    since_ms: i64,
}

impl Dropped {
    fn add(&mut self, user: &UserId) {
        if self.count == 0 {
            self.since_ms = now_ms();
            self.id = event_id();
        }
        self.count += 1;
        if self.users.len() < WEBHOOK_DROPPED_USERS_MAX {
            self.users.insert(user.clone());
        } else if !self.users.contains(user) {
            self.users_truncated = true;
        }
    }

    fn merge(&mut self, other: Dropped) {
        if other.count == 0 {
            return;
        }
        let since_ms = if self.count == 0 { other.since_ms } else { self.since_ms.min(other.since_ms) };
        // The older record's id: the one the receiver may have seen already.
        self.id = other.id;
        self.count += other.count;
        self.since_ms = since_ms;
        self.users_truncated |= other.users_truncated;
        for user in other.users {
            if self.users.len() < WEBHOOK_DROPPED_USERS_MAX {
                self.users.insert(user);
            } else {
                self.users_truncated = true;
            }
        }
    }

    fn to_json(&self, node: &str) -> serde_json::Value {
        json!({
            "id": self.id,
            "type": "dropped",
            "count": self.count,
            "users": self.users.iter().map(UserId::as_str).collect::<Vec<_>>(),
            "users_truncated": self.users_truncated,
            "since_ms": self.since_ms,
            "node": node,
            "at_ms": now_ms(),
        })
    }
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Queued>,
    dropped: Dropped,
}

/// The sink the tracker hands events to, and the task that sends them.
pub(super) struct Sender {
    config: WebhookConfig,
    counters: Arc<WebhookCounters>,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Cuts a back-off short (a shutdown draining the queue).
    hurry: Notify,
    client: reqwest::Client,
}

impl PresenceSink for Sender {
    fn send(&self, events: Vec<PresenceEvent>) {
        let now = Instant::now();
        let mut queue = self.queue.lock();
        for event in events {
            if queue.events.len() >= self.config.queue_events_max {
                queue.dropped.add(&event.user);
                self.counters.dropped_events.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            queue.events.push_back(Queued { json: event_json(&event), user: event.user, queued_at: now });
        }
        self.counters.queued_events.store(queue.events.len() as u64, Ordering::Relaxed);
        drop(queue);
        self.wake.notify_one();
    }
}

/// A batch on its way: the events' count (they stay at the queue's front until it succeeds) and
/// the `dropped` record it carries (put back if it fails).
struct Batch {
    body: Vec<u8>,
    events: usize,
    dropped: Dropped,
}

impl Sender {
    pub(super) fn new(
        config: WebhookConfig,
        counters: Arc<WebhookCounters>,
        client: reqwest::Client,
    ) -> Self {
        Self { config, counters, queue: Mutex::default(), wake: Notify::new(), hurry: Notify::new(), client }
    }

    /// Sends until the task is dropped.
    pub(super) async fn run(&self) {
        let mut backoff = WEBHOOK_BACKOFF_FIRST;
        let mut failing = false;
        loop {
            if !self.wait_for_a_batch().await {
                continue;
            }
            let Some(batch) = self.take_batch() else { continue };
            match self.post(&batch.body).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("webhook: the receiver takes events again");
                    }
                    failing = false;
                    backoff = WEBHOOK_BACKOFF_FIRST;
                    self.sent(&batch);
                }
                Err(reason) => {
                    if !failing {
                        tracing::warn!(%reason, "webhook: POST failed; retrying with back-off");
                    }
                    failing = true;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    self.queue.lock().dropped.merge(batch.dropped);
                    let wait = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.hurry.notified() => {}
                    }
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// Waits until everything queued was delivered, at most `within`, trying again at once
    /// after each failure meanwhile. `false` if something is left.
    pub(super) async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            {
                let queue = self.queue.lock();
                if queue.events.is_empty() && queue.dropped.count == 0 {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.hurry.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a batch is due: [`WEBHOOK_BATCH_EVENTS_MAX`] events, or the oldest has waited
    /// [`WEBHOOK_BATCH_WAIT`], or something dropped is to be told. `false`: woken, look again.
    async fn wait_for_a_batch(&self) -> bool {
        let oldest = {
            let queue = self.queue.lock();
            if queue.events.len() >= WEBHOOK_BATCH_EVENTS_MAX {
                return true;
            }
            match queue.events.front() {
                Some(first) => Some(first.queued_at),
                None if queue.dropped.count > 0 => return true,
                None => None,
            }
        };
        match oldest {
            Some(queued_at) => {
                let due = queued_at + WEBHOOK_BATCH_WAIT;
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => true,
                    () = self.wake.notified() => Instant::now() >= due,
                }
            }
            None => {
                self.wake.notified().await;
                false
            }
        }
    }

    /// Drops what waited past the retry bound, then builds the next batch from the queue's front.
    fn take_batch(&self) -> Option<Batch> {
        let mut queue = self.queue.lock();
        let Queue { events, dropped } = &mut *queue;
        while events.front().is_some_and(|e| e.queued_at.elapsed() >= self.config.retry_for) {
            let expired = events.pop_front().expect("checked");
            dropped.add(&expired.user);
            self.counters.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
        let dropped = std::mem::take(dropped);
        let room = WEBHOOK_BATCH_EVENTS_MAX - usize::from(dropped.count > 0);
        let count = events.len().min(room);
        if count == 0 && dropped.count == 0 {
            return None;
        }
        let mut list: Vec<&serde_json::Value> = Vec::with_capacity(count + 1);
        let dropped_json = (dropped.count > 0).then(|| dropped.to_json(&self.config.node));
        list.extend(dropped_json.as_ref());
        list.extend(events.iter().take(count).map(|e| &e.json));
        let body = serde_json::to_vec(&json!({ "events": list })).expect("JSON values serialize");
        Some(Batch { body, events: count, dropped })
    }

    fn sent(&self, batch: &Batch) {
        let mut queue = self.queue.lock();
        queue.events.drain(..batch.events);
        self.counters.queued_events.store(queue.events.len() as u64, Ordering::Relaxed);
        drop(queue);
        self.counters.delivered_events.fetch_add(batch.events as u64, Ordering::Relaxed);
        self.counters.delivered_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// One signed POST; `Err` with why it failed (no answer in time, or not 2xx).
    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let t = (now_ms() / 1000) as u64;
        let request = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(self.config.secret.as_bytes(), t, body))
            .body(body.to_vec())
            .timeout(WEBHOOK_POST_TIMEOUT);
        let response = request.send().await.map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    }
}

/// An event's JSON, as documented in docs/OPERATIONS.md ("Presence webhooks").
fn event_json(event: &PresenceEvent) -> serde_json::Value {
    let mut json = json!({
        "id": event_id(),
        "type": event.kind.as_str(),
        "user": event.user.as_str(),
        "user_seq": event.user_seq,
        "node": &*event.node,
        "at_ms": event.at_ms,
    });
    if let Some(session) = &event.session {
        json["session"] = session.as_str().into();
    }
    if let Some(client) = &event.client {
        json["client"] = client.as_str().into();
    }
    json
}

/// A random event id (`evt_` and 32 hex digits), made once per event: a retry sends the same.
fn event_id() -> String {
    format!("evt_{:032x}", rand::rng().random::<u128>())
}

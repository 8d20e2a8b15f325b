//! `POST /v1/notify`: publish a notification to a user, several users, a session or a client, or
//! a `topic` event to every tab listening to a topic;
//! `POST /v1/notify/batch`: several such publishes in one request.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_core::notification::DEFAULT_KIND;
use herald_core::{
    ClientId, Publish, PushOptions, PushPolicy, PushUrgency, Receipt, SessionId, Target, Topic, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Publisher;
use crate::error::{ApiError, ApiJson};
use crate::response::json_response;

/// The body of `POST /v1/notify`. Unknown fields are refused, so a typo never goes unnoticed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    to: TargetBody,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<Box<RawValue>>,
    durable: Option<bool>,
    except_client: Option<String>,
    /// No tab of this user gets it; topic targets only.
    except_user: Option<String>,
    /// With a topic target: a durable notification in the inbox of every user who follows the
    /// topic, instead of a `topic` event.
    inbox: Option<bool>,
    idempotency_key: Option<String>,
    /// Web Push: `"offline"` (the default), `"always"` or `"never"`.
    push: Option<PushPolicy>,
    /// What the push carries instead of `data`.
    push_payload: Option<Box<RawValue>>,
    /// The push's `TTL`, seconds (default one day).
    push_ttl: Option<u32>,
    /// The push's `Urgency`: `very-low`, `low`, `normal` (default), `high`.
    push_urgency: Option<PushUrgency>,
    /// The push's `Topic` (collapse key); default: made from `type`.
    push_topic: Option<String>,
}

/// `to`: exactly one of `{"user"}`, `{"users"}`, `{"user", "session"}`, `{"client"}`. Only the
/// shape is checked here; how many users (one to `users_per_publish_max`) is the notifier's rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    user: Option<String>,
    users: Option<Vec<String>>,
    session: Option<String>,
    client: Option<String>,
    topic: Option<String>,
}

impl TargetBody {
    fn into_target(self) -> Result<Target, ApiError> {
        match (self.user, self.users, self.session, self.client, self.topic) {
            (Some(user), None, None, None, None) => Ok(Target::User(UserId::new(user)?)),
            (None, Some(users), None, None, None) => {
                Ok(Target::Users(users.into_iter().map(UserId::new).collect::<Result<_, _>>()?))
            }
            (Some(user), None, Some(session), None, None) => {
                Ok(Target::Session(UserId::new(user)?, SessionId::new(session)?))
            }
            (None, None, None, Some(client), None) => Ok(Target::Client(ClientId::new(client)?)),
            (None, None, None, None, Some(topic)) => Ok(Target::Topic(Topic::new(topic)?)),
            _ => Err(ApiError::bad_request(
                "invalid_target",
                r#"`to` must be one of {"user": U}, {"users": [U, …]}, {"user": U, "session": S}, {"client": C}, {"topic": T}"#,
            )),
        }
    }
}

impl NotifyBody {
    fn into_publish(self) -> Result<Publish, ApiError> {
        let target = match (self.to.into_target()?, self.inbox) {
            (Target::Topic(topic), Some(true)) => Target::Followers(topic),
            (target, None | Some(false)) => target,
            (_, Some(true)) => {
                return Err(ApiError::bad_request(
                    "invalid_target",
                    "`inbox: true` goes with a topic target",
                ));
            }
        };
        let data: Arc<RawValue> = match self.data {
            Some(data) => Arc::from(data),
            None => Arc::from(RawValue::from_string("null".to_owned()).expect("null is JSON")),
        };
        Ok(Publish {
            target,
            kind: Arc::from(self.kind.as_deref().unwrap_or(DEFAULT_KIND)),
            data,
            durable: self.durable.unwrap_or(true),
            except_client: self.except_client.map(ClientId::new).transpose()?,
            except_user: self.except_user.map(UserId::new).transpose()?,
            idempotency_key: self.idempotency_key,
            push: PushOptions {
                policy: self.push.unwrap_or_default(),
                payload: self.push_payload.map(Arc::from),
                ttl_secs: self.push_ttl,
                urgency: self.push_urgency.unwrap_or_default(),
                topic: self.push_topic,
            },
        })
    }
}

/// Publishes; answers `{"notifications": [{"user", "seq"}], "delivered": n}`.
pub async fn notify(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<NotifyBody>,
) -> Result<Response, ApiError> {
    let receipt = app.notifier.publish(body.into_publish()?).await?;
    if let Some(job) = &receipt.job {
        // Into more followers' inboxes than one publish takes: a job does it, in the background.
        let mut response = json_response(&JobStarted { job });
        *response.status_mut() = axum::http::StatusCode::ACCEPTED;
        return Ok(response);
    }
    Ok(json_response(&receipt))
}

#[derive(Serialize)]
struct JobStarted<'a> {
    job: &'a str,
}

/// `GET /v1/jobs/{id}`: a fan-out job's progress: `{"job", "topic", "stored", "done",
/// "created_at", "finished_at"}`; 404 `job_not_found` for an id the store does not have (never
/// started, or finished more than a day ago).
pub async fn job(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    crate::error::ApiPath(id): crate::error::ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(job) = app.notifier.job(&id).await? else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id:?}"),
        ));
    };
    Ok(json_response(&serde_json::json!({
        "job": job.id,
        "topic": job.topic,
        "stored": job.stored,
        "done": job.is_finished(),
        "created_at": herald_core::notification::format_timestamp_ms(job.created_at_ms),
        "finished_at": job.finished_at_ms.map(herald_core::notification::format_timestamp_ms),
    })))
}

/// Entries of one `POST /v1/notify/batch` at most (and at least one). The body's bound
/// (`REQUEST_BODY_BYTES_MAX`, 1 MiB) applies too, whichever is reached first.
pub const BATCH_ENTRIES_MAX: usize = 1_000;

/// The body of `POST /v1/notify/batch`: each entry is read on its own, so that one that does
/// not decode fails alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    notifications: Vec<Box<RawValue>>,
}

/// One entry's outcome: its receipt, or its error (with the status `POST /v1/notify` would
/// have answered).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EntryOutcome {
    Published(Receipt),
    Failed { error: EntryError },
}

#[derive(Debug, Serialize)]
struct EntryError {
    status: u16,
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct BatchAnswer {
    results: Vec<EntryOutcome>,
    failed: usize,
}

/// Publishes every entry of the batch as `POST /v1/notify` would, all at once: their appends
/// reach the store's writer together, so its group commit stores them in one transaction (a few
/// when the batch is larger than the writer's batch bound, 512 for PostgreSQL), and entries to
/// the same user get their seqs in the order of the batch (they are handed to the writer in
/// that order). Answers 200 with one result per entry, in order, and how many failed; an entry
/// that fails (does not decode, names a bad target, meets an unavailable store…) fails alone.
/// The batch itself is refused (400 `invalid_batch`) when it has no entry or more than
/// [`BATCH_ENTRIES_MAX`].
pub async fn notify_batch(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Response, ApiError> {
    let count = body.notifications.len();
    if count == 0 || count > BATCH_ENTRIES_MAX {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch has 1 to {BATCH_ENTRIES_MAX} notifications, not {count}"),
        ));
    }
    let publishes = body.notifications.iter().map(|entry| {
        let publish = serde_json::from_str::<NotifyBody>(entry.get())
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
            .and_then(NotifyBody::into_publish);
        let app = &app;
        async move { app.notifier.publish(publish?).await.map_err(ApiError::from) }
    });
    // Polled in the order of the batch: each entry's append is queued before the next one's.
    let outcomes = futures::future::join_all(publishes).await;
    let mut failed = 0;
    let results = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(receipt) => EntryOutcome::Published(receipt),
            Err(error) => {
                failed += 1;
                EntryOutcome::Failed {
                    error: EntryError {
                        status: error.status.as_u16(),
                        code: error.code,
                        message: error.message,
                    },
                }
            }
        })
        .collect();
    Ok(json_response(&BatchAnswer { results, failed }))
}

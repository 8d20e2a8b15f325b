//! `POST /v1/notify`: publish a notification to a user, several users, a session or a client.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use herald_core::notification::DEFAULT_KIND;
use herald_core::{ClientId, Publish, SessionId, Target, UserId};
use serde::Deserialize;
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
    idempotency_key: Option<String>,
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
}

impl TargetBody {
    fn into_target(self) -> Result<Target, ApiError> {
        match (self.user, self.users, self.session, self.client) {
            (Some(user), None, None, None) => Ok(Target::User(UserId::new(user)?)),
            (None, Some(users), None, None) => {
                Ok(Target::Users(users.into_iter().map(UserId::new).collect::<Result<_, _>>()?))
            }
            (Some(user), None, Some(session), None) => {
                Ok(Target::Session(UserId::new(user)?, SessionId::new(session)?))
            }
            (None, None, None, Some(client)) => Ok(Target::Client(ClientId::new(client)?)),
            _ => Err(ApiError::bad_request(
                "invalid_target",
                r#"`to` must be one of {"user": U}, {"users": [U, …]}, {"user": U, "session": S}, {"client": C}"#,
            )),
        }
    }
}

/// Publishes; answers `{"notifications": [{"user", "seq"}], "delivered": n}`.
pub async fn notify(
    State(app): State<Arc<App>>,
    _publisher: Publisher,
    ApiJson(body): ApiJson<NotifyBody>,
) -> Result<Response, ApiError> {
    let target = body.to.into_target()?;
    let data: Arc<RawValue> = match body.data {
        Some(data) => Arc::from(data),
        None => Arc::from(RawValue::from_string("null".to_owned()).expect("null is JSON")),
    };
    let publish = Publish {
        target,
        kind: Arc::from(body.kind.as_deref().unwrap_or(DEFAULT_KIND)),
        data,
        durable: body.durable.unwrap_or(true),
        except_client: body.except_client.map(ClientId::new).transpose()?,
        idempotency_key: body.idempotency_key,
    };
    let receipt = app.notifier.publish(publish).await?;
    Ok(json_response(&receipt))
}

//! Fan-out jobs: a publish into the inboxes of a topic's followers (`"to": {"topic"}, "inbox":
//! true`) with more followers than one publish takes ([`crate::FOLLOWERS_PER_PUBLISH_MAX`]) is
//! done in the background, chunk by chunk, and survives a crash or a restart without storing a
//! notification twice.
//!
//! **Why it is exactly once.** Followers are read in the store's order (by user), a chunk at a
//! time after the job's `cursor` (the last follower done). Each chunk is one `append` under the
//! idempotency key `job:{id}:{cursor}`, so the chunk and its key commit together; the new cursor
//! is saved after. A runner that dies between the two is replaced (at the next start, by
//! [`crate::Notifier::resume_jobs`]) by one that reads the same chunk again and gets the first
//! append's receipt back instead of storing it twice: it moves the cursor to the last user of
//! that receipt, so even a follower list that changed meanwhile is not done twice. Two runners
//! of one job (two nodes restarting at once) are safe the same way.
//!
//! A follower who follows the topic after the job started is included if the job has not passed
//! them yet (the users are read in order as the job goes), and one who unfollows is left out
//! likewise: the job is the topic's followers as it walks them, like a live fan-out would be.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ClientId, Topic, UserId};

/// Most jobs not finished at once; one more publish that needs a job is refused (503
/// `too_many_jobs`) until one finishes. Each runs one chunk at a time.
pub const JOBS_UNFINISHED_MAX: usize = 16;

/// Followers one chunk of a job stores at most (one append, one transaction), less when the
/// data is large: a chunk's data stays within [`crate::Limits::publish_bytes_max`].
pub const JOB_CHUNK_USERS_MAX: usize = 1_000;

/// Chunk failures in a row after which a runner gives up (the job stays unfinished, resumed at
/// the next start).
pub const JOB_CHUNK_TRIES_MAX: u32 = 10;

/// A job's id from a publish's idempotency key: the same key names the same job (22 characters,
/// the first 128 bits of its SHA-256 in URL-safe base64).
pub fn job_id_of_key(key: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// A new random job id (22 characters of URL-safe base64).
pub fn random_job_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<u128>().to_le_bytes())
}

/// A fan-out into the inboxes of a topic's followers, as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutJob {
    /// 1–128 bytes of `[A-Za-z0-9_-]`: random, or made from the publish's idempotency key.
    pub id: String,
    pub topic: Topic,
    /// The notification's `type`.
    #[serde(rename = "type")]
    pub kind: Arc<str>,
    pub data: Arc<RawValue>,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_user: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_client: Option<ClientId>,
    /// The last follower done, in the store's order of users: the job goes on after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<UserId>,
    /// Notifications stored so far (one per follower).
    pub stored: u64,
    /// When the last chunk was stored; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
}

impl FanoutJob {
    pub fn is_finished(&self) -> bool {
        self.finished_at_ms.is_some()
    }

    /// The idempotency key of the chunk that starts after the job's cursor.
    pub fn chunk_key(&self) -> String {
        format!("job:{}:{}", self.id, self.cursor.as_ref().map_or("", UserId::as_str))
    }
}

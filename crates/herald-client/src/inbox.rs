//! [`Inbox`]: one user's inbox (`docs/PROTOCOL.md`, "Inbox"): its counts, pages of its stored
//! notifications with their read, seen and archived state, marks and deletions. Either a
//! subscriber's own, with its token ([`crate::Subscriber::inbox`]), or any user's, with the API
//! key ([`crate::Publisher::inbox`]): the routes and answers are the same.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::http::{Endpoint, REQUEST_TIMEOUT, read_json};
use crate::types::Notification;

/// A user's inbox counts. Of two, the one with the higher `version` is newer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCounts {
    /// Not archived and not read: the badge.
    pub unread: u64,
    /// Not archived and not seen (`unseen` ≤ `unread` ≤ `total`).
    pub unseen: u64,
    /// Stored and not archived.
    pub total: u64,
    /// Stored and archived.
    pub archived: u64,
    /// Grows with every change of the user's inbox.
    pub version: u64,
}

/// Which notifications a page lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    /// Every one that is not archived.
    #[default]
    All,
    Unread,
    Unseen,
    Read,
    /// Only archived ones.
    Archived,
}

impl InboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::All => "all",
            InboxStatus::Unread => "unread",
            InboxStatus::Unseen => "unseen",
            InboxStatus::Read => "read",
            InboxStatus::Archived => "archived",
        }
    }
}

/// What to mark notifications as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Sets `read_at` (and `seen_at` if unset).
    Read,
    /// Clears `read_at`; `seen_at` stays. Seqs only.
    Unread,
    Seen,
    /// Takes them out of the inbox (out of every count but `archived`).
    Archived,
    /// Back in the inbox with their read state. Seqs only.
    Unarchived,
}

/// Which notifications a mark is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxSelection {
    /// These seqs (at most 1,000; seqs not stored are left alone).
    Seqs(Vec<u64>),
    /// Every stored one up to this seq ("mark all read").
    AllUpTo(u64),
}

/// One page of `GET …/inbox`: which notifications, from where, how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxQuery {
    pub status: InboxStatus,
    /// Only this type.
    pub kind: Option<String>,
    /// Only seqs below this one: the previous page's `next_before`.
    pub before: Option<u64>,
    /// 1–100; the server's default (20) when `None`.
    pub limit: Option<u32>,
}

/// A stored notification with its inbox state (timestamps RFC 3339, `None` until set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxItem {
    #[serde(flatten)]
    pub notification: Notification,
    pub seen_at: Option<String>,
    pub read_at: Option<String>,
    pub archived_at: Option<String>,
}

/// A page of a user's inbox, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxPage {
    pub notifications: Vec<InboxItem>,
    /// Give it as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
    pub counts: InboxCounts,
}

/// What kind of change an [`InboxChange`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxOp {
    Mark,
    Delete,
    Append,
    Prune,
}

/// A change of a user's inbox: the answer to a mark or a deletion, which is also the `inbox`
/// event the user's other clients get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxChange {
    pub op: InboxOp,
    /// `mark`: the mark.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
    /// `mark`: when, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// `mark`, `delete` by seqs, `append`: the seqs changed, deleted or new, ascending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<Vec<u64>>,
    /// `mark`, `delete` "all up to": every stored notification up to it now has that state (or
    /// is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_up_to: Option<u64>,
    /// `prune`: every notification up to this seq is gone (retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<u64>,
    /// How many notifications changed (all but `prune`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<u64>,
    /// The counts right after the change.
    pub counts: InboxCounts,
}

/// One user's inbox on the server. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Inbox {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// The bearer credential: a subscriber token or the API key.
    credential: String,
    /// The path of the inbox route: `["v1", "inbox"]` or `["v1", "users", user, "inbox"]`.
    path: Vec<String>,
}

// Not derived: the credential must not end up in logs.
impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("endpoint", &self.endpoint)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    pub(crate) fn new(
        http: reqwest::Client,
        endpoint: Endpoint,
        credential: String,
        path: Vec<String>,
    ) -> Self {
        Self { http, endpoint, credential, path }
    }

    fn request(&self, method: Method, more: &[&str]) -> reqwest::RequestBuilder {
        let segments: Vec<&str> = self.path.iter().map(String::as_str).chain(more.iter().copied()).collect();
        self.http
            .request(method, self.endpoint.url(&segments))
            .bearer_auth(&self.credential)
            .timeout(REQUEST_TIMEOUT)
    }

    /// `GET …/inbox/counts`.
    pub async fn counts(&self) -> Result<InboxCounts> {
        #[derive(Deserialize)]
        struct Counts {
            counts: InboxCounts,
        }
        let response = self.request(Method::GET, &["counts"]).send().await?;
        Ok(read_json::<Counts>(response, "inbox counts").await?.counts)
    }

    /// `GET …/inbox`: a page, newest first, with the counts.
    pub async fn list(&self, query: &InboxQuery) -> Result<InboxPage> {
        let mut request = self.request(Method::GET, &[]).query(&[("status", query.status.as_str())]);
        if let Some(kind) = &query.kind {
            request = request.query(&[("type", kind)]);
        }
        if let Some(before) = query.before {
            request = request.query(&[("before", before)]);
        }
        if let Some(limit) = query.limit {
            request = request.query(&[("limit", limit)]);
        }
        read_json(request.send().await?, "inbox page").await
    }

    /// `POST …/inbox/mark`: marks the selected notifications; answers the change (with the
    /// counts after it), which the user's other clients get as an `inbox` event.
    pub async fn mark(&self, selection: &InboxSelection, mark: Mark) -> Result<InboxChange> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            seqs: Option<&'a [u64]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            all_up_to: Option<u64>,
            #[serde(rename = "as")]
            mark: Mark,
        }
        let body = match selection {
            InboxSelection::Seqs(seqs) => Body { seqs: Some(seqs), all_up_to: None, mark },
            InboxSelection::AllUpTo(through) => Body { seqs: None, all_up_to: Some(*through), mark },
        };
        let response = self.request(Method::POST, &["mark"]).json(&body).send().await?;
        read_json(response, "inbox change").await
    }

    /// `DELETE …/inbox/{seq}`: deletes one stored notification (a seq not stored: `changed` 0).
    pub async fn delete(&self, seq: u64) -> Result<InboxChange> {
        let seq = seq.to_string();
        let response = self.request(Method::DELETE, &[&seq]).send().await?;
        read_json(response, "inbox change").await
    }

    /// `DELETE …/inbox?all_up_to=N`: deletes every stored notification up to `through`.
    pub async fn delete_all_up_to(&self, through: u64) -> Result<InboxChange> {
        let response = self.request(Method::DELETE, &[]).query(&[("all_up_to", through)]).send().await?;
        read_json(response, "inbox change").await
    }
}

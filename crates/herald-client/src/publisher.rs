//! [`Publisher`]: the publishers' side of the API, authenticated with the API key: publishing
//! (to users, sessions, clients, topics, a topic's followers), presence, stored notifications,
//! closing sessions, making a tab, a session or a user listen to topics and asking who listens,
//! any user's inbox.

use reqwest::Method;

use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};
use crate::http::{
    Endpoint, REQUEST_TIMEOUT, as_strs, check_status, http_client, path_id, path_topic, read_json,
};
use crate::inbox::Inbox;
use crate::token::{check_id, check_topics};
use crate::types::{Listens, Notification, Presence, PublishRequest, PublishResponse, Scope, TopicListeners};

/// Publishes notifications and manages users' sessions. Cheap to clone: clones share one
/// connection pool.
#[derive(Clone)]
pub struct Publisher {
    http: reqwest::Client,
    endpoint: Endpoint,
    api_key: String,
}

// Not derived: the API key must not end up in logs.
impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for the server at `base_url` (e.g. `http://127.0.0.1:7300`), with the
    /// publishers' API key. Fails only on a URL it cannot use.
    pub fn new(base_url: &str, api_key: impl Into<String>) -> Result<Self> {
        Ok(Self { http: http_client()?, endpoint: Endpoint::parse(base_url)?, api_key: api_key.into() })
    }

    fn request(&self, method: Method, segments: &[&str]) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.endpoint.url(segments))
            .bearer_auth(&self.api_key)
            .timeout(REQUEST_TIMEOUT)
    }

    /// `POST /v1/notify`: stores (when durable) and delivers a notification.
    pub async fn publish(&self, request: &PublishRequest) -> Result<PublishResponse> {
        let response = self.request(Method::POST, &["v1", "notify"]).json(request).send().await?;
        read_json(response, "publish answer").await
    }

    /// `POST /v1/notify/batch`: publishes up to 1,000 notifications in one request (their
    /// appends share the server's commits; a user's get their seqs in the order given). One
    /// result per request, in order: an entry the server refused is its
    /// [`ClientError::Http`] (status, code, message as `publish` would have got), without failing
    /// the others. The call itself fails on a batch of no or over 1,000 entries
    /// (`invalid_batch`), and as any request does.
    pub async fn publish_batch(&self, requests: &[PublishRequest]) -> Result<Vec<Result<PublishResponse>>> {
        let body = BatchRequest { notifications: requests };
        let response = self.request(Method::POST, &["v1", "notify", "batch"]).json(&body).send().await?;
        let answer: BatchAnswer = read_json(response, "batch answer").await?;
        if answer.results.len() != requests.len() {
            return Err(ClientError::Protocol(format!(
                "the batch answer has {} results for {} notifications",
                answer.results.len(),
                requests.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .map(|result| match result {
                BatchResult::Published(published) => Ok(published),
                BatchResult::Failed { error } => {
                    Err(ClientError::Http { status: error.status, code: error.code, message: error.message })
                }
            })
            .collect())
    }

    /// `GET /v1/users/{user}/presence`: the user's sessions and connected clients.
    pub async fn presence(&self, user: &str) -> Result<Presence> {
        let user = path_id("user id", user)?;
        let response = self.request(Method::GET, &["v1", "users", user, "presence"]).send().await?;
        read_json(response, "presence").await
    }

    /// `GET /v1/users/{user}/notifications`: the stored notifications after seq `after`
    /// (from the oldest retained when `None`), oldest first, at most `limit` (at most
    /// 100, the server's default, when `None`).
    pub async fn notifications(
        &self,
        user: &str,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<Notification>> {
        #[derive(serde::Deserialize)]
        struct List {
            notifications: Vec<Notification>,
        }
        let user = path_id("user id", user)?;
        let mut request = self.request(Method::GET, &["v1", "users", user, "notifications"]);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit)]);
        }
        let list: List = read_json(request.send().await?, "notification list").await?;
        Ok(list.notifications)
    }

    /// `DELETE /v1/users/{user}/sessions/{session}`: closes that session's clients with reason
    /// `session_closed`. Returns how many connections were closed.
    pub async fn close_session(&self, user: &str, session: &str) -> Result<u64> {
        let (user, session) = (path_id("user id", user)?, path_id("session id", session)?);
        let response =
            self.request(Method::DELETE, &["v1", "users", user, "sessions", session]).send().await?;
        Ok(read_json::<Closed>(response, "close answer").await?.closed)
    }

    /// `DELETE /v1/users/{user}/sessions`: closes every session of the user (sign out
    /// everywhere). Returns how many connections were closed.
    pub async fn close_all_sessions(&self, user: &str) -> Result<u64> {
        let user = path_id("user id", user)?;
        let response = self.request(Method::DELETE, &["v1", "users", user, "sessions"]).send().await?;
        Ok(read_json::<Closed>(response, "close answer").await?.closed)
    }

    /// `POST /v1/topics/listen`: makes the client `client` (any user's, wherever it is
    /// connected) listen to `topics` too, 1 to 100, whatever its token's `topics` claim says.
    /// Returns every topic it listens to now. 404 `client_not_found` when no node has the
    /// client. The server keeps the listens with the client id until it forgets the client.
    /// [`Publisher::listen_at`] with [`Scope::client`], for the topics only.
    pub async fn listen(&self, client: &str, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        Ok(self.listen_at(&Scope::client(client), topics).await?.topics)
    }

    /// `POST /v1/topics/unlisten`: the client stops listening to `topics`. Returns every topic it
    /// listens to now.
    pub async fn unlisten(&self, client: &str, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        Ok(self.unlisten_at(&Scope::client(client), topics).await?.topics)
    }

    /// `POST /v1/topics/listen`: makes a tab ([`Scope::client`]), every tab of a session
    /// ([`Scope::session`]) or every tab of a user ([`Scope::user`]: the user follows them)
    /// listen to `topics` too, 1 to 100, whatever the tokens' `topics` claims say. Session and
    /// user scope reach the tabs open now and those opened later, on every node (kept in the
    /// store: a session's until it is closed, a user's until unlistened); no tab needs to be
    /// connected. Returns the scope's topics now (a session's or user's sorted). Refusals keep
    /// the server's code: 409 `too_many_topics` (the scope would go over its bound: 100 topics
    /// for a tab or a session, 1,000 for a user; nothing changed), 404 `client_not_found` (no
    /// node has the tab), 400 `invalid_topic`.
    pub async fn listen_at(&self, scope: &Scope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        self.change_listens("listen", scope, topics).await
    }

    /// `POST /v1/topics/unlisten`: the scope stops listening to `topics` (those it does not
    /// listen to are ignored; the other scopes' listens stay). Returns the scope's topics now.
    pub async fn unlisten_at(&self, scope: &Scope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        self.change_listens("unlisten", scope, topics).await
    }

    async fn change_listens(
        &self,
        route: &'static str,
        scope: &Scope,
        topics: &[impl AsRef<str>],
    ) -> Result<Listens> {
        #[derive(Serialize)]
        struct Body<'a, T: AsRef<str>> {
            #[serde(serialize_with = "as_strs")]
            topics: &'a [T],
            #[serde(flatten)]
            scope: &'a Scope,
        }
        match scope {
            Scope::Client { client } => check_id("client id", client)?,
            Scope::Session { user, session } => {
                check_id("user id", user)?;
                check_id("session id", session)?;
            }
            Scope::User { user } => check_id("user id", user)?,
        }
        check_topics(topics)?;
        let response =
            self.request(Method::POST, &["v1", "topics", route]).json(&Body { topics, scope }).send().await?;
        read_json(response, "listen answer").await
    }

    /// `GET /v1/topics/{topic}`: who listens to `topic` — its followers (user scope), the
    /// sessions listening at session scope, and the tabs listening at any scope on every node
    /// (in a cluster the node asked waits at most 1 s for the others). At most 1,000 of each;
    /// [`TopicListeners::truncated`] when there were more.
    pub async fn topic_listeners(&self, topic: &str) -> Result<TopicListeners> {
        let topic = path_topic(topic)?;
        let response = self.request(Method::GET, &["v1", "topics", topic]).send().await?;
        read_json(response, "topic listeners").await
    }

    /// `…/v1/users/{user}/inbox…`: any user's inbox (counts, pages, marks, deletions). Their
    /// `inbox` events reach every client of the user.
    pub fn inbox(&self, user: &str) -> Result<Inbox> {
        let user = path_id("user id", user)?;
        let path = ["v1", "users", user, "inbox"].map(str::to_owned).to_vec();
        Ok(Inbox::new(self.http.clone(), self.endpoint.clone(), self.api_key.clone(), path))
    }

    /// `GET /healthz`: whether the server answers.
    pub async fn health(&self) -> Result<()> {
        let response = self.http.get(self.endpoint.url(&["healthz"])).timeout(REQUEST_TIMEOUT).send().await?;
        check_status(response).await.map(drop)
    }
}

#[derive(serde::Deserialize)]
struct Closed {
    #[serde(default)]
    closed: u64,
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    notifications: &'a [PublishRequest],
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchResult {
    Failed { error: BatchError },
    Published(PublishResponse),
}

#[derive(Deserialize)]
struct BatchError {
    status: u16,
    code: String,
    message: String,
}

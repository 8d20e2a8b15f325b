//! [`Subscriber`]: one client's side of the API, authenticated with a subscriber token: an SSE
//! [`EventStream`], or long-polls, and the topics its tab, its session or its user listens to.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};
use crate::http::{Endpoint, REQUEST_TIMEOUT, as_strs, check_status, http_client, read_json};
use crate::inbox::Inbox;
use crate::resume::ResumePoint;
use crate::sse::{SseEvent, SseItem, SseParser};
use crate::token::{check_id, check_topic, check_topics};
use crate::types::{Event, Listens, PollResponse, StoredScope, Undecodable};

/// How long a stream may send nothing before it is taken for dead (a half-open connection
/// sends no error): three of the server's 15 s keep-alive intervals.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Longest long-poll wait the server accepts, in seconds; when no timeout is given, the HTTP
/// request is allowed this long (plus [`POLL_GRACE`]) since the server's default is shorter.
pub const POLL_TIMEOUT_MAX_S: u64 = 60;

/// Time allowed on top of a long-poll's own wait for the answer to arrive.
pub const POLL_GRACE: Duration = Duration::from_secs(10);

/// Where a stream starts and which client it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The last seq this client saw: the stream replays every retained notification after it.
    /// `None` starts at the user's current last seq.
    pub resume_after: Option<u64>,
    /// The epoch of `resume_after` (the `hello`'s, [`Event::Hello`]): a server whose log is
    /// another history now answers `hello` and `reset` instead of replaying after a seq that
    /// means something else there. `None`: the seq is taken as one of the server's epoch.
    pub epoch: Option<String>,
    /// The client's position in each durable topic (the last tseq handled), sent with
    /// `resume_after` as one resume point (`17;room:1=5`, see [`ResumePoint`]): the stream
    /// replays each topic's retained events after its position. A topic the client listens to
    /// that is not named starts at its last tseq. Ignored without `resume_after`.
    pub positions: BTreeMap<String, u64>,
    /// The client id to keep (a reloaded tab's). Honoured for the same user and session only.
    pub client: Option<String>,
    /// Send the resume point as the `Last-Event-ID` header (as a browser's EventSource does)
    /// rather than as `?last_event_id=`.
    pub via_header: bool,
    /// Topics to listen to (`?topics=`), besides those the client listens to already (a
    /// reconnecting client keeps its listens while the server remembers its id). Each one must
    /// be allowed by the token's `topics` claim: else the stream is refused, 403
    /// `topic_forbidden`.
    pub topics: Vec<String>,
}

/// What a long-poll asks for ([`Subscriber::poll_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollOptions {
    /// The notifications after this seq (the previous answer's `last_seq`); `None`: after the
    /// user's current last seq.
    pub after: Option<u64>,
    /// The epoch of `after` (the previous answer's).
    pub epoch: Option<String>,
    /// The client's position in each durable topic (the previous answer's `positions`): the
    /// answer holds each topic's events after it.
    pub positions: BTreeMap<String, u64>,
    /// How long to wait when there is nothing yet, in seconds (server default 20, at most
    /// [`POLL_TIMEOUT_MAX_S`]).
    pub timeout_s: Option<u64>,
    /// The client id (the previous answer's `client`).
    pub client: Option<String>,
    /// Topics to listen to, as for [`StreamOptions::topics`]: naming them on every poll costs
    /// nothing (those listened to already are not counted twice).
    pub topics: Vec<String>,
}

/// The `?topics=` value: the topics, each checked (a `,` in one would split it).
fn topics_query(topics: &[String]) -> Result<Option<String>> {
    if topics.is_empty() {
        return Ok(None);
    }
    topics.iter().try_for_each(|topic| check_topic(topic))?;
    Ok(Some(topics.join(",")))
}

/// The body of `POST /v1/listen` and `/v1/unlisten`.
#[derive(Serialize)]
struct ListenBody<'a, T: AsRef<str>> {
    #[serde(serialize_with = "as_strs")]
    topics: &'a [T],
    /// `None`: client scope (the server's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<StoredScope>,
}

/// A subscriber: opens streams and long-polls with one token. Cheap to clone.
#[derive(Clone)]
pub struct Subscriber {
    http: reqwest::Client,
    endpoint: Endpoint,
    token: String,
    idle_timeout: Duration,
}

// Not derived: the token must not end up in logs.
impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl StreamOptions {
    /// Options that resume from `point` (its seq, epoch and topic positions).
    pub fn resume_from(point: &ResumePoint) -> Self {
        Self {
            resume_after: Some(point.seq),
            epoch: point.epoch.clone(),
            positions: point.positions.clone(),
            ..Self::default()
        }
    }
}

impl Subscriber {
    /// A subscriber of the server at `base_url` with a token from [`crate::mint_token`] (or the
    /// app's backend). Fails only on a URL it cannot use.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self> {
        Ok(Self {
            http: http_client()?,
            endpoint: Endpoint::parse(base_url)?,
            token: token.into(),
            idle_timeout: STREAM_IDLE_TIMEOUT,
        })
    }

    /// Sets how long a stream may be silent before [`EventStream::next_event`] fails with
    /// [`ClientError::Timeout`] (default [`STREAM_IDLE_TIMEOUT`]); for a server configured with
    /// a longer keep-alive interval.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// `…/v1/inbox…`: the inbox of this token's user (counts, pages, marks, deletions). Its
    /// changes reach the user's other clients as `inbox` events.
    pub fn inbox(&self) -> Inbox {
        let path = ["v1", "inbox"].map(str::to_owned).to_vec();
        Inbox::new(self.http.clone(), self.endpoint.clone(), self.token.clone(), path)
    }

    /// `GET /v1/stream`: opens an SSE stream. Fails with [`ClientError::Http`] when the server
    /// refuses it (401 for a bad token, 400 for a resume point ahead of the user's last seq).
    pub async fn stream(&self, options: StreamOptions) -> Result<EventStream> {
        let mut request = self
            .http
            .get(self.endpoint.url(&["v1", "stream"]))
            .bearer_auth(&self.token)
            .header(ACCEPT, "text/event-stream");
        let resume = options
            .resume_after
            .map(|seq| ResumePoint { seq, epoch: None, positions: options.positions.clone() }.id());
        match resume {
            Some(id) if options.via_header => request = request.header("Last-Event-ID", id),
            Some(id) => request = request.query(&[("last_event_id", id)]),
            None => {}
        }
        if let (Some(_), Some(epoch)) = (options.resume_after, &options.epoch) {
            request = request.query(&[("epoch", epoch)]);
        }
        if let Some(client) = &options.client {
            request = request.query(&[("client", client)]);
        }
        if let Some(topics) = topics_query(&options.topics)? {
            request = request.query(&[("topics", topics)]);
        }
        // Not `RequestBuilder::timeout`: that would bound the whole, endless body too.
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| ClientError::Timeout { what: "opening the stream", after: REQUEST_TIMEOUT })??;
        let response = check_status(response).await?;
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.to_ascii_lowercase().starts_with("text/event-stream") {
            return Err(ClientError::Protocol(format!("the stream's content type is {content_type:?}")));
        }
        Ok(EventStream::new(response, self.idle_timeout))
    }

    /// `GET /v1/poll`: the notifications after seq `after` of `epoch` (after the user's current
    /// last seq when `None`), waiting up to `timeout_s` seconds (server default 20, at most
    /// [`POLL_TIMEOUT_MAX_S`]) when there are none yet. Give back the answer's `client` and
    /// poll next with `after` = its `last_seq` and its `epoch`.
    pub async fn poll(
        &self,
        after: Option<u64>,
        epoch: Option<&str>,
        timeout_s: Option<u64>,
        client: Option<&str>,
    ) -> Result<PollResponse> {
        let options = PollOptions {
            after,
            epoch: epoch.map(str::to_owned),
            positions: BTreeMap::new(),
            timeout_s,
            client: client.map(str::to_owned),
            topics: Vec::new(),
        };
        self.poll_with(&options).await
    }

    /// `GET /v1/poll` with every option, topics included; see [`Subscriber::poll`].
    pub async fn poll_with(&self, options: &PollOptions) -> Result<PollResponse> {
        let mut request = self.http.get(self.endpoint.url(&["v1", "poll"])).bearer_auth(&self.token);
        if let Some(after) = options.after {
            request = request.query(&[("after", after)]);
            if let Some(epoch) = &options.epoch {
                request = request.query(&[("epoch", epoch)]);
            }
        }
        if let Some(timeout_s) = options.timeout_s {
            request = request.query(&[("timeout", timeout_s)]);
        }
        if let Some(client) = &options.client {
            request = request.query(&[("client", client)]);
        }
        if let Some(topics) = topics_query(&options.topics)? {
            request = request.query(&[("topics", topics)]);
        }
        if let Some(positions) = ResumePoint::positions_query(&options.positions) {
            request = request.query(&[("positions", positions)]);
        }
        let wait =
            Duration::from_secs(options.timeout_s.unwrap_or(POLL_TIMEOUT_MAX_S).min(POLL_TIMEOUT_MAX_S));
        let response = request.timeout(wait + POLL_GRACE).send().await?;
        read_json(response, "poll answer").await
    }

    /// `POST /v1/listen`: the client `client` (this token's user and session's: a `hello`'s or
    /// poll answer's `client`) listens to `topics` too, 1 to 100, each allowed by the token's
    /// `topics` claim (else 403 `topic_forbidden`, nothing changed). Returns every topic it
    /// listens to now. The server keeps them with the client id: a reconnect with the same
    /// `client` still listens to them, until the server forgets the client (after its linger).
    pub async fn listen(&self, client: &str, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        Ok(self.listen_client(client, topics).await?.topics)
    }

    /// [`Subscriber::listen`]'s whole answer: the client ([`crate::Scope::Client`]), every topic
    /// it listens to now, and `positions`, the listened topics' last tseqs read after the listen
    /// took effect: where a client that resumes these topics later starts (a
    /// [`crate::Listener`] keeps them).
    pub async fn listen_client(&self, client: &str, topics: &[impl AsRef<str>]) -> Result<Listens> {
        check_id("client id", client)?;
        self.change_listens("listen", ListenAt::Client(client), topics).await
    }

    /// `POST /v1/unlisten`: the client stops listening to `topics` (those it does not listen to
    /// are ignored; no claim is needed). Returns every topic it listens to now.
    pub async fn unlisten(&self, client: &str, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        check_id("client id", client)?;
        Ok(self.change_listens("unlisten", ListenAt::Client(client), topics).await?.topics)
    }

    /// `POST /v1/listen` with `"scope"`: every tab of this token's session
    /// ([`StoredScope::Session`]) or of its user ([`StoredScope::User`]: the user follows the
    /// topics) listens to `topics` too, 1 to 100, each allowed by the token's `topics` claim.
    /// No tab needs to be connected: the server keeps them in its store (a session's until the
    /// session is closed, a user's until unlistened), and they reach the tabs open now and
    /// those opened later, on every node. Returns the scope (the token's
    /// [`crate::Scope::Session`] or [`crate::Scope::User`]) and its topics now, sorted. Refusals
    /// keep the server's code: 403 `topic_forbidden`, 409 `too_many_topics` (over the scope's
    /// bound: 100 topics for a session, 1,000 for a user), 429 `rate_limited`; each changes
    /// nothing.
    pub async fn listen_at(&self, scope: StoredScope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        self.change_listens("listen", ListenAt::Stored(scope), topics).await
    }

    /// `POST /v1/unlisten` with `"scope"`: the token's session or user stops listening to
    /// `topics` (no claim needed; the other scopes' listens stay: a tab that listens to a topic
    /// itself still gets it). Returns the scope and its topics now.
    pub async fn unlisten_at(&self, scope: StoredScope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        self.change_listens("unlisten", ListenAt::Stored(scope), topics).await
    }

    async fn change_listens(
        &self,
        route: &'static str,
        at: ListenAt<'_>,
        topics: &[impl AsRef<str>],
    ) -> Result<Listens> {
        check_topics(topics)?;
        let mut request = self
            .http
            .post(self.endpoint.url(&["v1", route]))
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT);
        let scope = match at {
            // Client scope is the server's default: no `scope` sent, the tab named by header.
            ListenAt::Client(client) => {
                request = request.header("X-Herald-Client", client);
                None
            }
            ListenAt::Stored(scope) => Some(scope),
        };
        let response = request.json(&ListenBody { topics, scope }).send().await?;
        read_json(response, "listen answer").await
    }
}

/// Where a subscriber's listen applies.
enum ListenAt<'a> {
    /// The tab with this client id.
    Client(&'a str),
    /// The token's session or user.
    Stored(StoredScope),
}

/// An open SSE stream. Read it with [`next_event`](Self::next_event) until `Ok(None)` (the
/// server ended it) or an error; it does not reconnect by itself (a [`crate::Listener`] does).
pub struct EventStream {
    /// `None` once the body ended or failed.
    response: Option<reqwest::Response>,
    parser: SseParser,
    /// Items parsed from the chunks read so far but not yet returned. Bounded by one chunk's
    /// worth of items.
    pending: VecDeque<SseItem>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("open", &self.response.is_some())
            .field("last_event_id", &self.parser.last_event_id())
            .finish_non_exhaustive()
    }
}

impl EventStream {
    fn new(response: reqwest::Response, idle_timeout: Duration) -> Self {
        Self { response: Some(response), parser: SseParser::new(), pending: VecDeque::new(), idle_timeout }
    }

    /// The last `id:` the server sent (the resume point of the last event that had one: the
    /// hello's, a durable notification's or topic event's, a reset's); empty before any.
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// [`EventStream::last_event_id`] read as a [`ResumePoint`] (without its epoch, which the
    /// `hello` gives); `None` before any id, or if the server sent one that is not a resume
    /// point.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        Some(self.parser.last_event_id())
            .filter(|id| !id.is_empty())
            .and_then(|id| ResumePoint::parse(id).ok())
    }

    /// The next event; `Ok(None)` when the server ended the stream. Events of a type this
    /// client does not know are skipped, so that a newer server does not break it. Fails with
    /// [`ClientError::Timeout`] when the server sent nothing, not even a keep-alive, for the
    /// idle timeout. After an error the stream is over.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            while let Some(item) = self.pending.pop_front() {
                let event = match item {
                    SseItem::Comment(_) => Some(Event::KeepAlive),
                    SseItem::Event(event) => decode_event(event).inspect_err(|_| self.stop())?,
                };
                if event.is_some() {
                    return Ok(event);
                }
            }
            let Some(response) = self.response.as_mut() else { return Ok(None) };
            let chunk = match tokio::time::timeout(self.idle_timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => {
                    self.stop();
                    return Ok(None);
                }
                Ok(Err(e)) => {
                    self.stop();
                    return Err(ClientError::Transport(e));
                }
                Err(_) => {
                    self.stop();
                    return Err(ClientError::Timeout { what: "the stream", after: self.idle_timeout });
                }
            };
            if let Err(e) = self.parser.feed(&chunk, &mut self.pending) {
                self.stop();
                return Err(e);
            }
        }
    }

    fn stop(&mut self) {
        self.response = None;
        self.pending.clear();
    }
}

/// Turns one SSE event into an [`Event`]; `None` for an event type this client does not know.
pub(crate) fn decode_event(event: SseEvent) -> Result<Option<Event>> {
    #[derive(Deserialize)]
    struct Hello {
        user: String,
        session: String,
        client: String,
        last_seq: u64,
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        positions: Option<BTreeMap<String, u64>>,
    }
    #[derive(Deserialize)]
    struct Reset {
        last_seq: u64,
    }
    #[derive(Deserialize)]
    struct TopicReset {
        topic: String,
        last_tseq: u64,
    }
    #[derive(Deserialize)]
    struct Closed {
        reason: String,
    }
    fn json<'a, T: Deserialize<'a>>(data: &'a str, what: &'static str) -> Result<T> {
        serde_json::from_str(data).map_err(|source| ClientError::Decode { what, source })
    }
    Ok(Some(match event.event.as_str() {
        "hello" => {
            let Hello { user, session, client, last_seq, epoch, topics, positions } =
                json(&event.data, "hello event")?;
            // The id is the resume point where the stream starts: the seq, then each topic's
            // position (which `positions` gives too; the id's are taken if it does not).
            let point = match event.id.as_deref() {
                None | Some("") => None,
                Some(id) => Some(
                    ResumePoint::parse(id)
                        .map_err(|error| ClientError::Protocol(format!("hello id: {error}")))?,
                ),
            };
            let id = point.as_ref().map(|point| point.seq);
            let positions = positions.or_else(|| point.map(|point| point.positions)).unwrap_or_default();
            Event::Hello { user, session, client, last_seq, id, epoch, topics, positions }
        }
        // The publisher's `data` may be JSON this client cannot decode (stored before the server
        // refused it): an event of its own, with its seq, never the end of the stream.
        "notification" => match Undecodable::decode(&event.data, event.id.as_deref()) {
            Ok(notification) => Event::Notification(notification),
            Err(undecodable) => Event::Undecodable(undecodable),
        },
        // The same for a topic event (its tseq, if durable, is in its data).
        "topic" => match Undecodable::decode_topic_event(&event.data) {
            Ok(topic_event) => Event::Topic(topic_event),
            Err(undecodable) => Event::Undecodable(undecodable),
        },
        "reset" => Event::Reset { last_seq: json::<Reset>(&event.data, "reset event")?.last_seq },
        "topic_reset" => {
            let TopicReset { topic, last_tseq } = json(&event.data, "topic_reset event")?;
            Event::TopicReset { topic, last_tseq }
        }
        "closed" => Event::Closed { reason: json::<Closed>(&event.data, "closed event")?.reason },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sse(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent { event: event.into(), data: data.into(), id: id.map(Into::into) }
    }

    #[test]
    fn decodes_herald_events() {
        let hello = decode_event(sse(
            "hello",
            r#"{"user":"a","session":"s","client":"c","last_seq":4,"epoch":"e1"}"#,
            Some("2"),
        ));
        assert_eq!(
            hello.unwrap(),
            Some(Event::Hello {
                user: "a".into(),
                session: "s".into(),
                client: "c".into(),
                last_seq: 4,
                id: Some(2),
                epoch: Some("e1".into()),
                topics: Vec::new(),
                positions: BTreeMap::new(),
            })
        );
        // With topics: the id is the whole resume point, and `positions` where each starts.
        let hello = decode_event(sse(
            "hello",
            r#"{"user":"a","session":"s","client":"c","last_seq":4,"topics":["room:1","post:2"],"positions":{"room:1":0,"post:2":5}}"#,
            Some("3;post:2=5;room:1=0"),
        ));
        let Some(Event::Hello { id, positions, .. }) = hello.unwrap() else { panic!() };
        let expected = BTreeMap::from([("post:2".to_owned(), 5), ("room:1".to_owned(), 0)]);
        assert_eq!((id, &positions), (Some(3), &expected));
        // Positions from the id when the data has none.
        let hello = decode_event(sse(
            "hello",
            r#"{"user":"a","session":"s","client":"c","last_seq":4,"topics":["room:1","post:2"]}"#,
            Some("3;post:2=5;room:1=0"),
        ));
        let Some(Event::Hello { positions, .. }) = hello.unwrap() else { panic!() };
        assert_eq!(positions, expected);
        let reset =
            decode_event(sse("topic_reset", r#"{"topic":"room:1","last_tseq":6}"#, Some("0;room:1=6")));
        assert_eq!(reset.unwrap(), Some(Event::TopicReset { topic: "room:1".into(), last_tseq: 6 }));
        let durable = decode_event(sse(
            "topic",
            r#"{"topic":"room:1","tseq":7,"type":"t","data":1,"created_at":"x"}"#,
            Some("0;room:1=7"),
        ));
        let Some(Event::Topic(t)) = durable.unwrap() else { panic!() };
        assert_eq!(t.tseq, Some(7));
        // A notification's seq is the id's seq part when its envelope cannot be read.
        let Some(Event::Undecodable(u)) = decode_event(sse("notification", "{", Some("8;room:1=2"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.seq, Some(8));
        // A server without epochs (nor topics).
        let old = decode_event(sse("hello", r#"{"user":"a","session":"s","client":"c","last_seq":4}"#, None));
        assert!(matches!(old.unwrap(), Some(Event::Hello { epoch: None, .. })));
        let with_topics = decode_event(sse(
            "hello",
            r#"{"user":"a","session":"s","client":"c","last_seq":4,"topics":["room:1","post:2"]}"#,
            Some("4"),
        ));
        let Some(Event::Hello { topics, .. }) = with_topics.unwrap() else { panic!() };
        assert_eq!(topics, ["room:1", "post:2"]);
        let topic = decode_event(sse(
            "topic",
            r#"{"topic":"room:1","type":"message","data":{"text":"hi"},"created_at":"x"}"#,
            None,
        ));
        let Some(Event::Topic(t)) = topic.unwrap() else { panic!() };
        assert_eq!((t.topic.as_str(), t.kind.as_str(), t.data), ("room:1", "message", json!({"text": "hi"})));
        let n = decode_event(sse(
            "notification",
            r#"{"seq":3,"type":"t","data":[1],"created_at":"x"}"#,
            Some("3"),
        ));
        let Some(Event::Notification(n)) = n.unwrap() else { panic!() };
        assert_eq!((n.seq, n.kind.as_str(), n.data), (Some(3), "t", json!([1])));
        let reset = decode_event(sse("reset", r#"{"last_seq":9}"#, Some("9"))).unwrap();
        assert_eq!(reset, Some(Event::Reset { last_seq: 9 }));
        let closed = decode_event(sse("closed", r#"{"reason":"evicted"}"#, None)).unwrap();
        assert_eq!(closed, Some(Event::Closed { reason: "evicted".into() }));
        assert_eq!(decode_event(sse("future", "{}", None)).unwrap(), None);
    }

    #[test]
    fn a_notification_serde_json_refuses_is_an_undecodable_event() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for data in [deep.as_str(), "1e999999", r#""\ud800""#] {
            let text = format!(r#"{{"seq":7,"type":"t","data":{data},"created_at":"x"}}"#);
            let Some(Event::Undecodable(u)) = decode_event(sse("notification", &text, Some("7"))).unwrap()
            else {
                panic!("{data}")
            };
            assert_eq!((u.seq, u.kind.as_deref(), u.raw.as_str()), (Some(7), Some("t"), text.as_str()));
        }
        // Not even JSON: the seq comes from the SSE id.
        let Some(Event::Undecodable(u)) = decode_event(sse("notification", "{", Some("8"))).unwrap() else {
            panic!()
        };
        assert_eq!((u.seq, u.kind), (Some(8), None));
        // A topic event too: no seq, its topic.
        let text = r#"{"topic":"room:1","type":"t","data":"\ud800","created_at":"x"}"#;
        let Some(Event::Undecodable(u)) = decode_event(sse("topic", text, None)).unwrap() else { panic!() };
        assert_eq!((u.seq, u.topic.as_deref(), u.raw.as_str()), (None, Some("room:1"), text));
    }

    #[test]
    fn bad_event_data_is_an_error() {
        assert!(matches!(decode_event(sse("reset", "{", None)), Err(ClientError::Decode { .. })));
        for id in ["x", "4;room:1", "4;room 1=2"] {
            let hello = sse("hello", r#"{"user":"a","session":"s","client":"c","last_seq":4}"#, Some(id));
            assert!(matches!(decode_event(hello), Err(ClientError::Protocol(_))), "{id}");
        }
    }
}

//! [`Listener`]: a subscriber that stays connected. It resumes by itself after a dropped
//! connection, with backoff, from its [`ResumePoint`] — the last seq it saw and its position in
//! each durable topic it listens to, with their epoch (so that a server whose log is another
//! history now answers `reset` rather than other notifications under seqs it saw) — and with the
//! same client id, and never yields a durable notification or topic event twice.
//!
//! Topic positions: the last tseq yielded of each topic (a `topic_reset` sets it, lower too
//! after an epoch change). A `hello` (or a poll answer's `positions`) says where the server
//! starts each topic the tab listens to, and replaces them. A topic the client starts listening
//! to while connected has no position until its first durable event: the listen's answer gives
//! where it starts (its last tseq after the listen), kept for that topic until the stream gives
//! one, so that a reconnect before its first event still resumes it from there. A topic
//! unlistened (and not listened to otherwise, as the answer says) loses its position. The
//! resume point goes as `?last_event_id=` on SSE and as `after`/`positions` on a poll.
//!
//! What ends it: a `closed` event whose reason is final ([`is_final_close`]: `evicted`,
//! `replaced`, `session_closed`, `token_expired`), which it yields before ending; an error that
//! a retry would only repeat (401 for a refused token, any other 4xx, an answer it cannot use),
//! which it returns; or, when a bound is set, too many failed attempts in a row. Any other end
//! (`lagging`, `shutdown`, `error`, a reason it does not know, a dropped or silent connection,
//! a 5xx) is followed by a reconnect. A notification it cannot decode ends nothing: it comes as
//! [`Event::Undecodable`] with its seq, and the position moves past it.
//!
//! Topics: it names the topics it was told to listen to ([`ListenerOptions::topics`],
//! [`Listener::listen`], less [`Listener::unlisten`]) on every connection and every poll. The
//! server keeps a client's listens with its id, but only while it remembers the id (the client
//! linger; not across a restart of a server that keeps clients in memory): naming them again is
//! what makes them outlive that. It does not adopt the topics a `hello` lists: those the app's
//! backend made the client listen to ([`crate::Publisher::listen`]) may be outside the token's
//! claim, and naming them would get every later connection refused (403). Listens at the scope
//! of its session or user ([`Listener::listen_at`]) are kept by the server itself: they are
//! posted once and never named on a connection.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::error::{ClientError, Result};
use crate::resume::ResumePoint;
use crate::subscriber::{EventStream, PollOptions, StreamOptions, Subscriber};
use crate::token::check_topics;
use crate::types::{Event, Listens, Notification, PollResponse, StoredScope, TopicEvent, Undecodable};

/// Wait before the first reconnect after a failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Longest wait between two attempts: the backoff doubles per failure in a row up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reasons of a `closed` event after which reconnecting is pointless: the server chose to end
/// this client (`evicted`, `replaced`, `session_closed`) or its token (`token_expired`; the
/// same token would be refused with 401).
pub const FINAL_CLOSE_REASONS: [&str; 4] = ["evicted", "replaced", "session_closed", "token_expired"];

/// Whether a `closed` event with this reason ends a [`Listener`].
pub fn is_final_close(reason: &str) -> bool {
    FINAL_CLOSE_REASONS.contains(&reason)
}

/// How a [`Listener`] receives events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenTransport {
    /// One long-lived SSE stream (`GET /v1/stream`).
    #[default]
    Sse,
    /// Repeated long-polls (`GET /v1/poll`), for networks that break streaming. It yields no
    /// `hello` and no keep-alive.
    Poll,
}

/// How a [`Listener`] starts and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerOptions {
    /// The last seq already seen; `None` starts at the user's current last seq.
    pub resume_after: Option<u64>,
    /// The epoch of `resume_after` (a `hello`'s or a poll answer's, kept with the seq; see
    /// [`Listener::epoch`]); `None`: the server's current one.
    pub epoch: Option<String>,
    /// The position in each durable topic already handled (with `resume_after`; see
    /// [`Listener::resume_point`]): each topic resumes after it.
    pub positions: BTreeMap<String, u64>,
    /// The client id to keep at the first connection (later ones keep the server's).
    pub client: Option<String>,
    pub transport: ListenTransport,
    /// Failed attempts in a row after which the last error is returned; `None` retries forever.
    pub max_consecutive_failures: Option<u32>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The long-poll wait in seconds (transport `Poll`); `None` for the server's default.
    pub poll_timeout_s: Option<u64>,
    /// Topics to listen to, named on every connection (see the [module docs](self)). Each one
    /// must be allowed by the token's `topics` claim: else the server refuses the connection
    /// (403 `topic_forbidden`), which ends the listener with that error.
    pub topics: Vec<String>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            resume_after: None,
            epoch: None,
            positions: BTreeMap::new(),
            client: None,
            transport: ListenTransport::Sse,
            max_consecutive_failures: None,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            poll_timeout_s: None,
            topics: Vec::new(),
        }
    }
}

impl ListenerOptions {
    /// Options that resume from `point` (a [`Listener::resume_point`] kept from an earlier run).
    pub fn resume_from(point: &ResumePoint) -> Self {
        Self {
            resume_after: Some(point.seq),
            epoch: point.epoch.clone(),
            positions: point.positions.clone(),
            ..Self::default()
        }
    }
}

/// A self-resuming subscriber; see the [module docs](self).
#[derive(Debug)]
pub struct Listener {
    subscriber: Subscriber,
    options: ListenerOptions,
    /// Every durable seq up to here was yielded (or skipped by a `reset`).
    position: Option<u64>,
    /// The epoch of `position`, from the last `hello` or poll answer.
    epoch: Option<String>,
    /// The epoch of a `hello` that named another one than `epoch`: it becomes `epoch` with the
    /// `reset` that follows such a hello, not before, so that a connection lost between the two
    /// resumes with the old epoch again (and gets its `reset` again).
    epoch_after_reset: Option<String>,
    client: Option<String>,
    /// `client` came from the server (a `hello` or a poll answer): a listen can name it.
    client_known: bool,
    /// Each durable topic's position as the server's events set it: the last tseq yielded (or
    /// skipped by a `topic_reset`), or where a `hello` or poll answer started it. Bounded by the
    /// topics the tab listens to (a `hello` or poll answer replaces them).
    topic_positions: BTreeMap<String, u64>,
    /// Where a topic listened to through this listener starts (its listen answer's position),
    /// for a topic with no position in `topic_positions` yet: named in the resume point until
    /// the stream gives it one. Bounded by the topics listened to (an unlisten removes them).
    listen_positions: BTreeMap<String, u64>,
    /// The topics named on every connection: the options', plus those listened to through
    /// [`Listener::listen`], less those of [`Listener::unlisten`]; each once, in order.
    topics: Vec<String>,
    stream: Option<EventStream>,
    /// Events of the last long-poll answer not yet yielded (at most one answer's worth).
    pending: VecDeque<Event>,
    /// Failed attempts since the last one that worked.
    failures: u32,
    /// Wait before the next attempt.
    delay: Option<Duration>,
    reconnects: u64,
    finished: bool,
}

impl Listener {
    pub fn new(subscriber: Subscriber, options: ListenerOptions) -> Self {
        let mut topics = Vec::new();
        remember(&mut topics, &options.topics);
        Self {
            position: options.resume_after,
            epoch: options.epoch.clone(),
            epoch_after_reset: None,
            client: options.client.clone(),
            client_known: false,
            topic_positions: options.positions.clone(),
            listen_positions: BTreeMap::new(),
            topics,
            subscriber,
            options,
            stream: None,
            pending: VecDeque::new(),
            failures: 0,
            delay: None,
            reconnects: 0,
            finished: false,
        }
    }

    /// The last durable seq yielded (or the position a `hello` or `reset` moved to).
    pub fn last_seq(&self) -> Option<u64> {
        self.position
    }

    /// The epoch of [`Listener::last_seq`] (the server's, once it answered): keep it with the
    /// seq to resume from it later ([`ListenerOptions::epoch`]).
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Where it stands: [`Listener::last_seq`], its epoch and each durable topic's position;
    /// what the next connection resumes from, and what to keep to resume from later
    /// ([`ListenerOptions::resume_from`]). `None` before the first `hello` or poll answer
    /// (unless the options gave a seq).
    pub fn resume_point(&self) -> Option<ResumePoint> {
        Some(ResumePoint { seq: self.position?, epoch: self.epoch.clone(), positions: self.positions() })
    }

    /// Each topic's position to resume from: the stream's, else the listen answer's.
    fn positions(&self) -> BTreeMap<String, u64> {
        let mut positions = self.topic_positions.clone();
        for (topic, tseq) in &self.listen_positions {
            positions.entry(topic.clone()).or_insert(*tseq);
        }
        positions
    }

    /// Keeps the positions of a listen's answer for the topics the stream has none of yet.
    fn take_listen_positions(&mut self, listens: &Listens) {
        for (topic, tseq) in &listens.positions {
            if !self.topic_positions.contains_key(topic) {
                self.listen_positions.entry(topic.clone()).or_insert(*tseq);
            }
        }
    }

    /// Forgets the positions of `topics`, unlistened, unless `still` lists them.
    fn forget_positions(&mut self, topics: &[impl AsRef<str>], still: &[String]) {
        for topic in topics.iter().map(AsRef::as_ref).filter(|t| !still.iter().any(|s| s == t)) {
            self.topic_positions.remove(topic);
            self.listen_positions.remove(topic);
        }
    }

    /// The client id the server gave (or the one from the options, before the first answer).
    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// How many attempts to connect followed a failure or an end of stream.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The topics it names on every connection (see the [module docs](self)).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Listens to `topics` too, now and after every reconnect. Once the server has given the
    /// client id, this is `POST /v1/listen` ([`Subscriber::listen`]): the topics are remembered
    /// only if the server accepts them (a refusal, e.g. 403 `topic_forbidden`, changes nothing),
    /// and the answer is every topic the client listens to now. Before that (no `hello` or
    /// poll answer yet), they are checked and remembered, to be named when it connects, and the
    /// answer is [`Listener::topics`].
    ///
    /// Call it between two [`Listener::next_event`]s (which is cancel-safe, so a `select!`
    /// with a channel of listens works).
    pub async fn listen(&mut self, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        check_topics(topics)?;
        let answer = match (&self.client, self.client_known) {
            (Some(client), true) => Some(self.subscriber.listen_client(client, topics).await?),
            _ => None,
        };
        remember(&mut self.topics, topics);
        match answer {
            Some(answer) => {
                self.take_listen_positions(&answer);
                Ok(answer.topics)
            }
            None => Ok(self.topics.clone()),
        }
    }

    /// Stops listening to `topics`: they are forgotten here at once (no later connection names
    /// them), then, once the server has given the client id, `POST /v1/unlisten`
    /// ([`Subscriber::unlisten`]), whose answer (every topic the client listens to now) is
    /// returned; before that, [`Listener::topics`]. When the request fails, the server may still
    /// have the client listen to them until it forgets the client: call it again.
    pub async fn unlisten(&mut self, topics: &[impl AsRef<str>]) -> Result<Vec<String>> {
        check_topics(topics)?;
        self.topics.retain(|kept| !topics.iter().any(|t| t.as_ref() == kept));
        let now = match (&self.client, self.client_known) {
            (Some(client), true) => self.subscriber.unlisten(client, topics).await?,
            _ => self.topics.clone(),
        };
        self.forget_positions(topics, &now);
        Ok(now)
    }

    /// Listens to `topics` at the scope of this token's session or user
    /// ([`Subscriber::listen_at`]): posted at once, connected or not (no client id is needed),
    /// and kept by the server, not named on connections as [`Listener::listen`]'s are; the tab
    /// gets their events as any tab of that session or user does. Returns the scope's topics
    /// (and where each listened topic starts, which the listener keeps as for
    /// [`Listener::listen`]).
    pub async fn listen_at(&mut self, scope: StoredScope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        let answer = self.subscriber.listen_at(scope, topics).await?;
        self.take_listen_positions(&answer);
        Ok(answer)
    }

    /// Stops listening to `topics` at the scope of this token's session or user
    /// ([`Subscriber::unlisten_at`]); the tab's own listens stay. Returns the scope's topics.
    pub async fn unlisten_at(&self, scope: StoredScope, topics: &[impl AsRef<str>]) -> Result<Listens> {
        self.subscriber.unlisten_at(scope, topics).await
    }

    /// The next event, reconnecting as needed. `Ok(None)` once it has ended (after a final
    /// `closed` event, or after it returned an error).
    ///
    /// Cancel-safe: when the future is dropped (a `tokio::select!` branch that lost), no event
    /// is lost; the next call goes on from the same position.
    pub async fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(None);
            }
            match self.options.transport {
                ListenTransport::Sse => {
                    if let Some(event) = self.next_sse().await? {
                        return Ok(Some(event));
                    }
                }
                ListenTransport::Poll => self.poll_once().await?,
            }
        }
    }

    /// One step on the SSE stream: an event to yield, or `None` when the loop must go on.
    async fn next_sse(&mut self) -> Result<Option<Event>> {
        if self.stream.is_none() {
            self.wait().await;
            let options = StreamOptions {
                resume_after: self.position,
                epoch: self.epoch.clone(),
                positions: self.positions(),
                client: self.client.clone(),
                via_header: false,
                topics: self.topics.clone(),
            };
            match self.subscriber.stream(options).await {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => return self.fail(e).map(|()| None),
            }
        }
        let stream = self.stream.as_mut().expect("opened above");
        match stream.next_event().await {
            Ok(Some(event)) => Ok(self.accept(event)),
            Ok(None) => {
                self.stream = None;
                self.fail(ClientError::StreamEnded).map(|()| None)
            }
            Err(e) => {
                self.stream = None;
                self.fail(e).map(|()| None)
            }
        }
    }

    /// Updates the position and client from `event`; `None` for a notification already yielded.
    fn accept(&mut self, event: Event) -> Option<Event> {
        match &event {
            Event::Hello { client, id, epoch, positions, .. } => {
                // The connection works: the next failure starts the backoff afresh.
                self.failures = 0;
                self.client = Some(client.clone());
                self.client_known = true;
                // Where this stream starts each topic the tab listens to: those resumed where
                // the resume point said, the others at their last tseq (and one whose position
                // was lost at the position given, until its `topic_reset`).
                self.topic_positions.clone_from(positions);
                let started = &self.topic_positions;
                self.listen_positions.retain(|topic, _| !started.contains_key(topic));
                self.epoch_after_reset = None;
                match (&self.epoch, epoch) {
                    // Of another epoch than our position's: a `reset` follows, which moves the
                    // position (back, if the new log is shorter) and takes the new epoch.
                    (Some(ours), Some(theirs)) if ours != theirs && self.position.is_some() => {
                        self.epoch_after_reset = Some(theirs.clone());
                    }
                    _ => {
                        if epoch.is_some() {
                            self.epoch.clone_from(epoch);
                        }
                        // A fresh stream starts at the user's last seq: resume from there if it
                        // drops before any notification, so that none published meanwhile is
                        // missed.
                        if let Some(id) = *id {
                            self.advance(id);
                        }
                    }
                }
            }
            // An undecodable notification counts like any other: the position moves past it, so
            // that a resume does not bring it back.
            Event::Notification(Notification { seq: Some(seq), .. })
            | Event::Undecodable(Undecodable { seq: Some(seq), .. }) => {
                if self.position.is_some_and(|p| *seq <= p) {
                    return None;
                }
                self.position = Some(*seq);
            }
            // A durable topic event, once: in tseq order per topic, so one at or below the
            // topic's position was yielded already. An undecodable one moves the position too.
            Event::Topic(TopicEvent { topic, tseq: Some(tseq), .. })
            | Event::Undecodable(Undecodable { topic: Some(topic), tseq: Some(tseq), .. }) => {
                if self.topic_positions.get(topic).is_some_and(|p| tseq <= p) {
                    return None;
                }
                self.topic_positions.insert(topic.clone(), *tseq);
                self.listen_positions.remove(topic);
            }
            // Ephemeral: nothing to resume from.
            Event::Notification(_) | Event::Undecodable(_) | Event::Topic(_) => {}
            // Set, not raised: after an epoch change the topic goes on lower.
            Event::TopicReset { topic, last_tseq } => {
                self.topic_positions.insert(topic.clone(), *last_tseq);
                self.listen_positions.remove(topic);
            }
            // Not `advance`: a reset for another epoch moves the position back when the new log
            // is shorter (a reset for retention never does).
            Event::Reset { last_seq } => {
                self.position = Some(*last_seq);
                if let Some(epoch) = self.epoch_after_reset.take() {
                    self.epoch = Some(epoch);
                }
            }
            Event::Closed { reason } => {
                self.stream = None;
                if is_final_close(reason) {
                    self.finished = true;
                } else {
                    // Reconnect soon, but not at once: after a `shutdown`, every client of the
                    // server does the same, and jitter spreads them.
                    self.delay = Some(self.backoff(self.failures + 1));
                }
            }
            Event::KeepAlive => {}
        }
        Some(event)
    }

    fn advance(&mut self, seq: u64) {
        self.position = Some(self.position.map_or(seq, |p| p.max(seq)));
    }

    /// One long-poll; its events go to `pending`.
    async fn poll_once(&mut self) -> Result<()> {
        self.wait().await;
        let options = PollOptions {
            after: self.position,
            epoch: self.epoch.clone(),
            positions: self.positions(),
            timeout_s: self.options.poll_timeout_s,
            client: self.client.clone(),
            topics: self.topics.clone(),
        };
        match self.subscriber.poll_with(&options).await {
            Ok(answer) => {
                self.failures = 0;
                self.take_poll_answer(answer);
                Ok(())
            }
            Err(e) => self.fail(e),
        }
    }

    fn take_poll_answer(&mut self, answer: PollResponse) {
        self.client = Some(answer.client);
        self.client_known = true;
        if answer.epoch.is_some() {
            self.epoch = answer.epoch;
        }
        if answer.reset {
            // The stream goes on after the seq just before the first notification given.
            let first = answer
                .notifications
                .iter()
                .filter_map(|n| n.as_ref().map_or_else(|u| u.seq, |n| n.seq))
                .min();
            let last_seq = first.map_or(answer.last_seq, |s| s.saturating_sub(1));
            self.position = Some(last_seq);
            self.pending.push_back(Event::Reset { last_seq });
        }
        for notification in answer.notifications {
            let event = notification.map_or_else(Event::Undecodable, Event::Notification);
            if let Some(event) = self.accept(event) {
                self.pending.push_back(event);
            }
        }
        // After the notifications: an answer does not say how the two kinds interleaved. The
        // topics' resets first: their events come after them.
        for reset in answer.topic_resets {
            let event = Event::TopicReset { topic: reset.topic, last_tseq: reset.last_tseq };
            if let Some(event) = self.accept(event) {
                self.pending.push_back(event);
            }
        }
        for topic_event in answer.topic {
            if let Some(event) = self.accept(topic_event.map_or_else(Event::Undecodable, Event::Topic)) {
                self.pending.push_back(event);
            }
        }
        // Where the server has the client in each topic now (what the next poll names).
        if !answer.positions.is_empty() || !answer.topics.is_empty() {
            self.topic_positions = answer.positions;
            let started = &self.topic_positions;
            self.listen_positions.retain(|topic, _| !started.contains_key(topic));
        }
        self.advance(answer.last_seq);
        if let Some(reason) = answer.closed {
            if is_final_close(&reason) {
                self.finished = true;
            } else {
                self.delay = Some(self.backoff(1));
            }
            self.pending.push_back(Event::Closed { reason });
        }
    }

    /// Counts a failed attempt: returns the error when it is final, else schedules a retry.
    fn fail(&mut self, error: ClientError) -> Result<()> {
        self.failures = self.failures.saturating_add(1);
        let exhausted = self.options.max_consecutive_failures.is_some_and(|max| self.failures >= max);
        if !error.is_retryable() || exhausted {
            self.finished = true;
            return Err(error);
        }
        let delay = self.backoff(self.failures);
        tracing::warn!(
            failures = self.failures,
            delay_ms = delay.as_millis() as u64,
            error = %with_causes(&error),
            "herald stream lost; reconnecting"
        );
        self.delay = Some(delay);
        Ok(())
    }

    /// The wait after `failures` failures in a row: doubling from the initial backoff up to the
    /// cap, then "equal jitter" (a random point in its upper half), so that clients dropped
    /// together do not come back together yet none retries at once.
    fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let base = self.options.backoff_initial.saturating_mul(1 << exponent).min(self.options.backoff_max);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    async fn wait(&mut self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
            // Only after the sleep: a `next_event` cancelled during it waits again when called again.
            self.delay = None;
            self.reconnects += 1;
        }
    }
}

/// Adds each of `topics` that `kept` does not hold yet, in order.
fn remember(kept: &mut Vec<String>, topics: &[impl AsRef<str>]) {
    for topic in topics {
        let topic = topic.as_ref();
        if !kept.iter().any(|t| t == topic) {
            kept.push(topic.to_owned());
        }
    }
}

/// `error` and its causes on one line, for the log (the display of a transport error alone says
/// little: the cause says "connection refused").
fn with_causes(error: &ClientError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> Listener {
        Listener::new(Subscriber::new("http://127.0.0.1:9", "t").unwrap(), ListenerOptions::default())
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let l = listener();
        for failures in 1..40 {
            let expected = BACKOFF_INITIAL.saturating_mul(1 << (failures - 1).min(31)).min(BACKOFF_MAX);
            let delay = l.backoff(failures);
            assert!(delay >= expected / 2 && delay <= expected, "{failures}: {delay:?} vs {expected:?}");
        }
        assert!(l.backoff(u32::MAX) <= BACKOFF_MAX);
    }

    #[test]
    fn futures_are_send_so_that_a_listener_can_be_spawned() {
        fn assert_send<T: Send>(_: T) {}
        let mut l = listener();
        assert_send(l.next_event());
        let publisher = crate::Publisher::new("http://127.0.0.1:9", "k").unwrap();
        let request = crate::PublishRequest::new(crate::To::user("a"), serde_json::Value::Null);
        assert_send(publisher.publish(&request));
    }

    #[test]
    fn final_close_reasons() {
        for reason in ["evicted", "replaced", "session_closed", "token_expired"] {
            assert!(is_final_close(reason));
        }
        for reason in ["lagging", "shutdown", "error", "something_new"] {
            assert!(!is_final_close(reason));
        }
    }
}

//! The PostgreSQL store's tests: the conformance suite (a fresh schema per case), and what only
//! a shared, networked database has: several stores (nodes) on one schema, migrations at once,
//! the epoch, group commit, and the database stopped and started mid-use (a private instance).
//!
//! They need `HERALD_TEST_POSTGRES` (`postgres://postgres@127.0.0.1:5432/test` in CI); without
//! it each test says why it skips and passes. Each case makes its own schema
//! (`herald_test_<pid>_<n>`) and drops it when its store is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, Epoch, Health, InboxChange, InboxCounts, InboxPage, InboxQuery, ListenBounds,
    LogHead, LogPage, Mark, NewNotification, NewTopicEvent, PruneReport, Receipt, Retention, Revocation,
    ScopeListens, Selection, Seq, SessionId, Store, StoreError, StoredListen, Topic, TopicAppended,
    TopicHead, TopicListener, UserId,
};
use serde_json::value::RawValue;

use super::testing::{
    drop_schema, free_port, fresh_schema, private_postgres_or_skip, skip_reason as skip, test_url,
};
use super::*;

/// A store in its own schema, which it drops when dropped.
struct TestStore {
    store: Option<PostgresStore>,
    url: String,
    schema: String,
}

impl TestStore {
    async fn open(retention: Retention) -> Self {
        let url = test_url().expect("the caller checked skip()");
        let schema = fresh_schema();
        let store = PostgresStore::open(options(&url, &schema), retention).await.expect("open the store");
        Self { store: Some(store), url, schema }
    }

    fn store(&self) -> &PostgresStore {
        self.store.as_ref().expect("open until dropped")
    }
}

fn options(url: &str, schema: &str) -> PostgresOptions {
    PostgresOptions { schema: Some(schema.to_owned()), ..PostgresOptions::new(url) }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        drop(self.store.take());
        drop_schema(&self.url, &self.schema);
    }
}

#[async_trait]
impl Store for TestStore {
    async fn push_subscribe(
        &self,
        subscription: &herald_core::PushSubscription,
        bounds: herald_core::PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        self.store().push_subscribe(subscription, bounds).await
    }
    async fn push_unsubscribe(&self, user: &herald_core::UserId, id: &str) -> Result<bool, StoreError> {
        self.store().push_unsubscribe(user, id).await
    }
    async fn push_subscriptions(
        &self,
        user: &herald_core::UserId,
    ) -> Result<Vec<herald_core::PushSubscription>, StoreError> {
        self.store().push_subscriptions(user).await
    }
    async fn push_subscription(&self, id: &str) -> Result<Option<herald_core::PushSubscription>, StoreError> {
        self.store().push_subscription(id).await
    }
    async fn push_enqueue(&self, deliveries: &[herald_core::PushDelivery]) -> Result<(), StoreError> {
        self.store().push_enqueue(deliveries).await
    }
    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushDelivery>, StoreError> {
        self.store().push_claim(now_ms, limit, lease).await
    }
    async fn push_expand(
        &self,
        expansions: &[herald_core::PushExpansion],
        to_senders: &[herald_core::PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.store().push_expand(expansions, to_senders, now_ms).await
    }
    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushPending>, StoreError> {
        self.store().push_claim_pending(now_ms, limit, lease).await
    }
    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.store().push_next_due().await
    }
    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        self.store().push_outbox_depth().await
    }
    async fn push_settle(&self, id: &str, settle: herald_core::PushSettle) -> Result<(), StoreError> {
        self.store().push_settle(id, settle).await
    }
    async fn save_job(&self, job: &herald_core::FanoutJob) -> Result<(), StoreError> {
        self.store().save_job(job).await
    }
    async fn job(&self, id: &str) -> Result<Option<herald_core::FanoutJob>, StoreError> {
        self.store().job(id).await
    }
    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<herald_core::FanoutJob>, StoreError> {
        self.store().unfinished_jobs(limit).await
    }
    async fn record_presence(
        &self,
        node: &str,
        change: &herald_core::PresenceChange,
    ) -> Result<Vec<herald_core::PresenceEvent>, StoreError> {
        self.store().record_presence(node, change).await
    }
    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<herald_core::PresenceBeat, StoreError> {
        self.store().presence_heartbeat(node, now_ms, dead_before_ms).await
    }
    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<herald_core::PresenceEvent>>, StoreError> {
        self.store().release_presence(node, at_ms, limit).await
    }

    async fn append_topic(
        &self,
        event: herald_core::NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<herald_core::TopicAppended, StoreError> {
        self.store().append_topic(event, idempotency_key).await
    }
    async fn topic_heads(
        &self,
        topics: &[Topic],
    ) -> Result<(Vec<herald_core::TopicHead>, Epoch), StoreError> {
        self.store().topic_heads(topics).await
    }
    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<herald_core::TopicPage, StoreError> {
        self.store().read_topic_after(topic, after, limit).await
    }

    async fn append(&self, entries: Vec<NewNotification>, key: Option<&str>) -> Result<Appended, StoreError> {
        self.store().append(entries, key).await
    }
    async fn complete_receipt(&self, key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        self.store().complete_receipt(key, receipt).await
    }
    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        self.store().read_after(user, after, limit).await
    }
    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        self.store().head(user).await
    }
    async fn last_seqs(&self, users: &[UserId]) -> Result<Vec<Seq>, StoreError> {
        self.store().last_seqs(users).await
    }
    fn epoch(&self) -> Epoch {
        self.store().epoch()
    }
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        self.store().prune(now_ms).await
    }
    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.store().inbox_list(user, query).await
    }
    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        self.store().inbox_counts(user).await
    }
    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        self.store().inbox_mark(user, selection, mark, at_ms).await
    }
    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        self.store().inbox_delete(user, selection).await
    }
    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        self.store().revoke(user, session, closed_at_secs).await
    }
    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        self.store().revocations(user).await
    }
    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        self.store().listen(user, session, topics, bounds, now_ms).await
    }
    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        self.store().unlisten(user, session, topics).await
    }
    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        self.store().forget_session_listens(user, session).await
    }
    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        self.store().listens(user).await
    }
    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError> {
        self.store().topic_listeners(topic, after, limit).await
    }
}

async fn make(retention: Retention) -> Arc<dyn Store> {
    Arc::new(TestStore::open(retention).await)
}

crate::conformance_tests!(make, unless skip);

// ---------------------------------------------------------------------------------------------
// What only a shared database has

fn entry(user: &str, n: u64) -> NewNotification {
    NewNotification {
        user: UserId::new(user).unwrap(),
        kind: Arc::from("test.note"),
        data: Arc::from(RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap()),
        created_at_ms: now_ms(),
        audience: Audience::user(),
        push: None,
    }
}

fn seqs_of(appended: Appended) -> Vec<Seq> {
    match appended {
        Appended::Stored { notifications, .. } => notifications.iter().map(|n| n.seq.unwrap()).collect(),
        Appended::Duplicate(receipt) => panic!("a duplicate: {receipt:?}"),
    }
}

macro_rules! skip_unless_postgres {
    () => {
        if let Some(reason) = skip() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Three stores on one schema (three nodes) append to one user at once: the seqs are exactly
/// 1..=N, each handed out once, whichever store appended. Fails if seqs were assigned per
/// process rather than in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_on_one_database_share_each_users_seqs() {
    skip_unless_postgres!();
    const NODES: usize = 3;
    const APPENDS: u64 = 60;
    let first = TestStore::open(Retention::default()).await;
    let url = first.url.clone();
    let mut nodes = vec![Arc::new(first)];
    for _ in 1..NODES {
        let store = PostgresStore::open(options(&url, &nodes[0].schema), Retention::default()).await.unwrap();
        nodes.push(Arc::new(TestStore {
            store: Some(store),
            url: url.clone(),
            schema: nodes[0].schema.clone(),
        }));
    }
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for t in 0..4 {
            let node = Arc::clone(node);
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..APPENDS / 4 {
                    seqs.extend(seqs_of(
                        node.append(vec![entry("alice", (i * 1000 + t * 100) as u64 + n)], None)
                            .await
                            .unwrap(),
                    ));
                }
                seqs
            }));
        }
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    let total = NODES as u64 * APPENDS;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "every seq once, none skipped");
    for node in &nodes {
        let page = node.read_after(&UserId::new("alice").unwrap(), 0, usize::MAX).await.unwrap();
        assert_eq!(page.notifications.len() as u64, total, "every node reads the whole log");
        assert_eq!(page.head.last_seq, total);
    }
    // Only the first drops the schema, after the others closed.
    let mut nodes = nodes.into_iter().map(|n| Arc::into_inner(n).unwrap()).collect::<Vec<_>>();
    let first = nodes.remove(0);
    for mut node in nodes {
        drop(node.store.take());
        std::mem::forget(node);
    }
    drop(first);
}

/// Four nodes open one new schema at once: the migration runs once (the advisory lock), every
/// open succeeds, and all see the same epoch. Fails if two nodes both created the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_opening_at_once_migrate_once() {
    skip_unless_postgres!();
    let url = test_url().unwrap();
    let schema = fresh_schema();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(
                async move { PostgresStore::open(options(&url, &schema), Retention::default()).await },
            )
        })
        .collect();
    let mut epochs = Vec::new();
    for open in opens {
        let store = open.await.unwrap().expect("every node opens");
        epochs.push(store.epoch());
    }
    drop_schema(&url, &schema);
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "one epoch: {epochs:?}");
}

/// Two stores on one schema (two nodes) listen for one user at once, each call adding two
/// topics of its own at user scope and in a new session: the user scope ends within its bound
/// with exactly the topics of the calls that were accepted, and the user with exactly
/// `sessions_max` sessions. Fails if the writes of a user's listens did not take the user's
/// lock (`writes::LISTENS_LOCK`): two nodes would count the same topics and both insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_listening_at_once_stay_within_the_bounds() {
    skip_unless_postgres!();
    const ROUNDS: usize = 5;
    const CALLS_PER_NODE: usize = 8;
    let first = Arc::new(TestStore::open(Retention::default()).await);
    let second: Arc<dyn Store> = Arc::new(
        PostgresStore::open(options(&first.url, &first.schema), Retention::default()).await.unwrap(),
    );
    let nodes: [Arc<dyn Store>; 2] = [first.clone(), second.clone()];
    let bounds = ListenBounds { user_topics_max: 5, session_topics_max: 2, sessions_max: 3 };
    for round in 0..ROUNDS {
        let alice = UserId::new(format!("alice-{round}")).unwrap();
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for call in 0..CALLS_PER_NODE {
                let (node, alice) = (Arc::clone(node), alice.clone());
                tasks.push(tokio::spawn(async move {
                    let mine = [format!("n{n}c{call}a"), format!("n{n}c{call}b")];
                    let topics: Vec<Topic> = mine.iter().map(|t| Topic::new(t).unwrap()).collect();
                    let session = SessionId::new(format!("n{n}c{call}")).unwrap();
                    let (at_user, in_session) = tokio::join!(
                        node.listen(&alice, None, &topics, bounds, now_ms()),
                        node.listen(&alice, Some(&session), &topics, bounds, now_ms()),
                    );
                    assert_eq!(in_session.unwrap(), ScopeListens::Listening(topics.clone()));
                    (topics, at_user.unwrap())
                }));
            }
        }
        let mut accepted = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (topics, ScopeListens::Listening(now)) => {
                    assert!(now.len() <= bounds.user_topics_max, "round {round}: over the bound: {now:?}");
                    accepted.extend(topics);
                }
                (_, ScopeListens::TooMany { count, max }) => {
                    assert_eq!((count, max), (6, 5), "round {round}: refused at 4 topics + 2")
                }
            }
        }
        accepted.sort();
        for node in &nodes {
            let listens = node.listens(&alice).await.unwrap();
            let at_user: Vec<Topic> =
                listens.iter().filter(|l| l.session.is_none()).map(|l| l.topic.clone()).collect();
            assert_eq!(at_user, accepted, "round {round}: exactly the accepted calls' topics");
            assert_eq!(at_user.len(), 4, "round {round}: two calls of two topics fit in 5, a third does not");
            let mut sessions: Vec<&SessionId> = listens.iter().filter_map(|l| l.session.as_ref()).collect();
            sessions.dedup();
            assert_eq!(sessions.len(), bounds.sessions_max, "round {round}: {sessions:?}");
        }
    }
    drop(nodes);
    drop(second);
    drop(first);
}

/// A schema of version 1 (before listens) is upgraded in place to version 2 when a store opens
/// it, keeping its logs; the listens table is new and works, its pages walk its topic index (no
/// sort). Fails if the migration to version 2 were missing or not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_gains_listens() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append(vec![entry("alice", 1)], None).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = &test.schema;
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".herald_topic_listens; DROP TABLE \"{schema}\".herald_topic_log;
             DROP TABLE \"{schema}\".herald_topic_heads; DROP TABLE \"{schema}\".herald_jobs; DROP TABLE \"{schema}\".herald_push_subscriptions;
             DROP TABLE \"{schema}\".herald_push_outbox;
             DROP TABLE \"{schema}\".herald_presence_online; DROP TABLE \"{schema}\".herald_presence_seqs;
             DROP TABLE \"{schema}\".herald_presence_nodes; DROP TABLE \"{schema}\".herald_push_pending; UPDATE \"{schema}\".herald_meta SET schema_version = 1"
        ))
        .await
        .unwrap();
    let reopened = PostgresStore::open(options(&test.url, schema), Retention::default()).await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT schema_version FROM \"{schema}\".herald_meta"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let alice = UserId::new("alice").unwrap();
    assert_eq!(reopened.head(&alice).await.unwrap().last_seq, 1, "the logs are kept");
    assert_eq!(reopened.listens(&alice).await.unwrap(), []);
    let news = Topic::new("news").unwrap();
    let bounds = ListenBounds { user_topics_max: 1, session_topics_max: 1, sessions_max: 1 };
    assert_eq!(
        reopened.listen(&alice, None, std::slice::from_ref(&news), bounds, now_ms()).await.unwrap(),
        ScopeListens::Listening(vec![news.clone()])
    );

    // A page of listeners is a range of the topic's index, read in its order.
    // A few rows would be read by a sequential scan: this asks what the index gives.
    client.batch_execute(&format!("SET search_path = \"{schema}\"; SET enable_seqscan = off")).await.unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN {}",
                reads::TOPIC_LISTENERS_SQL
                    .replace("$1", "'news'")
                    .replace("$2", "'alice'")
                    .replace("$3", "''")
                    .replace("$4", "10")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join(" | ");
    eprintln!("topic listeners: {plan}");
    assert!(plan.contains("herald_topic_listens_by_topic"), "{plan}");
    assert!(plan.contains("ROW(user_id, session) >"), "the page starts in the index: {plan}");
    assert!(!plan.contains("Sort"), "no sort: {plan}");
    drop(reopened);
}

/// A durable event of `topic` whose data is `{"n": n}`, created now.
fn topic_event(topic: &str, n: u64) -> NewTopicEvent {
    NewTopicEvent {
        topic: Topic::new(topic).unwrap(),
        kind: Arc::from("t"),
        data: Arc::from(RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap()),
        created_at_ms: now_ms(),
        except_user: None,
        except_client: None,
    }
}

/// Two stores on one schema (two nodes) append to one topic at once, from several tasks each:
/// the tseqs are exactly 1..=N, each given once, each holding the data of the append that got
/// it, and both nodes read the whole log; twenty appends with one key, spread over both nodes,
/// store once. Fails if tseqs were assigned per process (each node would count from 1) or read
/// and written in separate statements (two nodes would both take `last_tseq + 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_appending_to_one_topic_share_its_tseqs() {
    skip_unless_postgres!();
    const TASKS_PER_NODE: u64 = 4;
    const APPENDS: u64 = 25;
    let first = TestStore::open(Retention::default()).await;
    let second = PostgresStore::open(options(&first.url, &first.schema), Retention::default()).await.unwrap();
    let nodes: [Arc<dyn Store>; 2] = [Arc::new(first), Arc::new(second)];
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for t in 0..TASKS_PER_NODE {
            let node = Arc::clone(node);
            tasks.push(tokio::spawn(async move {
                let mut given = Vec::new();
                for a in 0..APPENDS {
                    let n = (i as u64 * TASKS_PER_NODE + t) * APPENDS + a;
                    match node.append_topic(topic_event("room", n), None).await.unwrap() {
                        TopicAppended::Stored(event) => given.push((n, event.tseq.unwrap())),
                        TopicAppended::Duplicate(receipt) => panic!("no key, yet a duplicate: {receipt:?}"),
                    }
                }
                given
            }));
        }
    }
    let mut tseq_of_n = std::collections::HashMap::new();
    for task in tasks {
        tseq_of_n.extend(task.await.unwrap());
    }
    let total = 2 * TASKS_PER_NODE * APPENDS;
    let mut tseqs: Vec<Seq> = tseq_of_n.values().copied().collect();
    tseqs.sort_unstable();
    assert_eq!(tseqs, (1..=total).collect::<Vec<_>>(), "every tseq once, none skipped");
    let room = Topic::new("room").unwrap();
    for node in &nodes {
        let page = node.read_topic_after(&room, 0, usize::MAX).await.unwrap();
        assert_eq!(page.head, TopicHead { last_tseq: total, pruned_through: 0 });
        assert_eq!(page.events.iter().map(|e| e.tseq.unwrap()).collect::<Vec<_>>(), tseqs);
        for event in &page.events {
            let n: u64 = event.data.get()[5..event.data.get().len() - 1].parse().unwrap();
            assert_eq!(tseq_of_n[&n], event.tseq.unwrap(), "the data under a tseq is its append's");
        }
    }

    let keyed: Vec<_> = (0..20)
        .map(|n| {
            let node = Arc::clone(&nodes[n % 2]);
            tokio::spawn(async move {
                node.append_topic(topic_event("keyed", n as u64), Some("same")).await.unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for task in keyed {
        match task.await.unwrap() {
            TopicAppended::Stored(event) => {
                stored += 1;
                assert_eq!(event.tseq, Some(1));
            }
            TopicAppended::Duplicate(receipt) => {
                assert_eq!(
                    receipt.topic.map(|t| (t.topic.as_str().to_owned(), t.tseq)),
                    Some(("keyed".into(), 1))
                );
            }
        }
    }
    assert_eq!(stored, 1, "one key, one event, whichever node");
    // The second node closes before the first drops the schema.
    let [first, second] = nodes;
    drop(second);
    drop(first);
}

/// A version 2 schema (no topic logs, no jobs) gains them when a node opens it, keeping its logs; the
/// topic queries read ranges of the primary key. Fails if the upgrade to version 3 were
/// missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_gains_topic_logs() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append(vec![entry("alice", 1)], None).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = &test.schema;
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".herald_topic_log; DROP TABLE \"{schema}\".herald_topic_heads;
             DROP TABLE \"{schema}\".herald_jobs; DROP TABLE \"{schema}\".herald_push_subscriptions;
             DROP TABLE \"{schema}\".herald_push_outbox;
             DROP TABLE \"{schema}\".herald_presence_online; DROP TABLE \"{schema}\".herald_presence_seqs;
             DROP TABLE \"{schema}\".herald_presence_nodes; DROP TABLE \"{schema}\".herald_push_pending; UPDATE \"{schema}\".herald_meta SET schema_version = 2"
        ))
        .await
        .unwrap();
    let reopened = PostgresStore::open(options(&test.url, schema), Retention::default()).await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT schema_version FROM \"{schema}\".herald_meta"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(reopened.head(&UserId::new("alice").unwrap()).await.unwrap().last_seq, 1, "the logs are kept");
    match reopened.append_topic(topic_event("news", 1), None).await.unwrap() {
        TopicAppended::Stored(event) => assert_eq!(event.tseq, Some(1)),
        TopicAppended::Duplicate(receipt) => panic!("{receipt:?}"),
    }

    client.batch_execute(&format!("SET search_path = \"{schema}\"; SET enable_seqscan = off")).await.unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN {}",
                reads::TOPIC_PAGE_SQL.replace("$1", "'news'").replace("$2", "0").replace("$3", "10")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join(" | ");
    eprintln!("topic page: {plan}");
    assert!(plan.contains("herald_topic_log_pkey"), "{plan}");
    assert!(!plan.contains("Sort"), "no sort: {plan}");
    drop(reopened);
}

/// The epoch is made with the schema and kept: the same on reopening, another in another schema
/// (a new store), with PostgreSQL's system id and timeline after the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_is_made_with_the_schema_and_kept() {
    skip_unless_postgres!();
    let one = TestStore::open(Retention::default()).await;
    let epoch = one.store().epoch();
    let parts: Vec<&str> = epoch.split('.').collect();
    assert_eq!(parts.len(), 3, "id.system.timeline: {epoch}");
    assert_eq!(parts[0].len(), 36, "a UUID: {epoch}");
    assert!(parts[2].parse::<u32>().unwrap() >= 1, "a timeline: {epoch}");
    let again = PostgresStore::open(options(&one.url, &one.schema), Retention::default()).await.unwrap();
    assert_eq!(again.epoch(), epoch, "reopening keeps the epoch");
    drop(again);
    let other = TestStore::open(Retention::default()).await;
    assert_ne!(other.store().epoch(), epoch, "a new schema is a new epoch");
    assert_eq!(other.store().epoch().split('.').nth(1), Some(parts[1]), "one cluster: one system id");
}

/// An operator renews the epoch (`UPDATE herald_meta SET epoch = …`, after restoring a dump into
/// the same cluster): a store opened afterwards (its connections are new) has the new one, and a
/// client resuming with a seq of the old one gets `hello` from the log's last seq and a `reset`,
/// nothing replayed; with the new one it resumes as usual. Fails if the epoch were not re-read
/// from the database, or a resume of the old epoch replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_the_old_epoch_after_a_renewal_gets_a_reset() {
    use herald_core::{ClientEvent, ClientIdMinter, Hub, Limits, SubscribeRequest, Subscription, Transport};
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append((1..=3).map(|n| entry("alice", n)).collect(), None).await.unwrap();
    let old = test.epoch();
    assert_eq!(test.head(&UserId::new("alice").unwrap()).await.unwrap().epoch, old);

    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let renew = format!("UPDATE \"{}\".herald_meta SET epoch = gen_random_uuid()::text", test.schema);
    assert_eq!(client.execute(&renew, &[]).await.unwrap(), 1);
    let reopened: Arc<dyn Store> =
        Arc::new(PostgresStore::open(options(&test.url, &test.schema), Retention::default()).await.unwrap());
    let new = reopened.epoch();
    assert_ne!(new, old, "the new store's connections read the renewed epoch");
    assert_eq!(new.split('.').skip(1).collect::<Vec<_>>(), old.split('.').skip(1).collect::<Vec<_>>());

    let hub = Hub::new(Limits::default(), ClientIdMinter::new(b"postgres epoch test"));
    let (user, session) = (UserId::new("alice").unwrap(), SessionId::new("s1").unwrap());
    let open = |epoch| {
        let request = SubscribeRequest {
            user: &user,
            session: &session,
            client: None,
            transport: Transport::Sse,
            resume_after: Some(1),
            epoch: Some(epoch),
            topics: &[],
            topic_positions: &[],
            types: &[],
        };
        Subscription::open(&hub, &reopened, request)
    };
    let mut stale = open(&old).await.unwrap();
    let hello = stale.next().await;
    assert!(
        matches!(&hello, Some(ClientEvent::Hello { last_seq: 3, position: 3, epoch, .. }) if *epoch == new),
        "{hello:?}"
    );
    let reset = stale.next().await;
    assert!(matches!(reset, Some(ClientEvent::Reset { last_seq: 3 })), "{reset:?}");
    let after_reset = stale.next_before(Some(tokio::time::Instant::now() + Duration::from_millis(200))).await;
    assert!(after_reset.is_err(), "nothing replayed after the reset: {after_reset:?}");

    let mut current = open(&new).await.unwrap();
    assert!(matches!(current.next().await, Some(ClientEvent::Hello { position: 1, .. })));
    let replayed = [current.next().await, current.next().await];
    assert!(
        matches!(&replayed, [Some(ClientEvent::Notification(a)), Some(ClientEvent::Notification(b))]
            if (a.seq, b.seq) == (Some(2), Some(3))),
        "{replayed:?}"
    );
    drop((stale, current, reopened));
}

/// 64 concurrent appends are committed in fewer transactions than appends (group commit), and
/// every one gets its own seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions() {
    skip_unless_postgres!();
    let test = Arc::new(TestStore::open(Retention::default()).await);
    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let test = Arc::clone(&test);
            tokio::spawn(async move {
                seqs_of(test.append(vec![entry(&format!("user-{}", n % 8), n)], None).await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().len(), 1);
    }
    let stats = test.store().writer_stats();
    assert_eq!(stats.requests, 64);
    assert!(stats.batches < stats.requests, "appends were batched: {stats:?}");
    for u in 0..8 {
        let head = test.head(&UserId::new(format!("user-{u}")).unwrap()).await.unwrap();
        assert_eq!(head.last_seq, 8);
    }
}

/// An append PostgreSQL refuses (a NUL byte in its type, which `text` cannot hold) fails alone:
/// the appends batched with it are stored. Fails if one bad request took its batch down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_append_fails_alone() {
    skip_unless_postgres!();
    let test = Arc::new(TestStore::open(Retention::default()).await);
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let test = Arc::clone(&test);
            tokio::spawn(async move {
                let mut e = entry("alice", n);
                if n == 20 {
                    e.kind = Arc::from("bad\0kind");
                }
                (n, test.append(vec![e], None).await)
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        match task.await.unwrap() {
            (20, result) => assert!(result.is_err(), "the NUL byte is refused"),
            (_, result) => {
                result.expect("the others are stored");
                stored += 1;
            }
        }
    }
    let head = test.head(&UserId::new("alice").unwrap()).await.unwrap();
    assert_eq!(head.last_seq, stored, "no seq was spent on the refused append");
}

/// An address where no PostgreSQL listens: opening fails with `Unavailable` at once, and never
/// hangs.
#[tokio::test]
async fn no_database_fails_to_open_within_the_timeout() {
    let port = free_port();
    let started = Instant::now();
    let opened = PostgresStore::open(
        PostgresOptions::new(format!("postgres://postgres@127.0.0.1:{port}/test")),
        Retention::default(),
    )
    .await;
    assert!(matches!(opened, Err(StoreError::Unavailable(_))), "{opened:?}");
    assert!(started.elapsed() < OPERATION_TIMEOUT, "took {:?}", started.elapsed());
}

/// A server that accepts connections and never answers (a stalled or partitioned database):
/// opening fails with `Unavailable` within `OPERATION_TIMEOUT`. Fails if a connection attempt
/// could wait for an answer without a bound.
#[tokio::test]
async fn a_silent_server_fails_to_open_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let opened = PostgresStore::open(
        PostgresOptions::new(format!("postgres://postgres@127.0.0.1:{port}/test")),
        Retention::default(),
    )
    .await;
    assert!(matches!(opened, Err(StoreError::Unavailable(_))), "{opened:?}");
    assert!(
        started.elapsed() <= OPERATION_TIMEOUT + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    silent.abort();
}

// ---------------------------------------------------------------------------------------------
// The database stopped and started mid-use

/// PostgreSQL stopped and started under steady appends: while it is down every append fails
/// with `Unavailable` within `OPERATION_TIMEOUT` (none hangs) and the store's health is
/// degraded (fails if an unreachable database left it `Ok`); once it is back, a probe makes it
/// healthy again, appends succeed again on the same store (the pool recovers by itself), and
/// the user's seqs are 1..=last with no gap and none reused: every acknowledged append is
/// there, once, under its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_stopped_and_started_mid_use() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let store = Arc::new(
        PostgresStore::open(PostgresOptions::new(postgres.url()), Retention::default()).await.unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appenders: Vec<_> = (0..4u64)
        .map(|t| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut acknowledged, mut failures, mut slowest) = (Vec::new(), 0u64, Duration::ZERO);
                let mut n = t * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    match store.append(vec![entry("alice", n)], None).await {
                        Ok(appended) => acknowledged.push((seqs_of(appended)[0], n)),
                        Err(StoreError::Unavailable(_)) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(other) => panic!("not Unavailable: {other}"),
                    }
                    slowest = slowest.max(started.elapsed());
                }
                (acknowledged, failures, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.health(), Health::Ok);
    tokio::task::block_in_place(|| postgres.stop());
    // While it is down: fails, within the bound, and the store says it is degraded.
    for _ in 0..3 {
        let started = Instant::now();
        let failed = store.head(&UserId::new("alice").unwrap()).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        assert!(
            started.elapsed() <= OPERATION_TIMEOUT + Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let reason = store.health().reason().map(str::to_owned);
        assert!(reason.as_deref().is_some_and(|r| r.contains("PostgreSQL")), "{reason:?}");
        assert!(store.probe().await.is_err());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| postgres.start());
    // Back: the probe sees it without any other operation, and the same store works again by
    // itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.probe().await.is_err() {
        assert!(Instant::now() < deadline, "the probe did not see the database back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.health(), Health::Ok, "a probe that passes makes the store healthy");
    loop {
        if store.append(vec![entry("bob", 1)], None).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acknowledged, mut failures, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    for appender in appenders {
        let (a, f, s) = appender.await.unwrap();
        acknowledged.extend(a);
        failures += f;
        slowest = slowest.max(s);
    }
    eprintln!(
        "{} acknowledged, {failures} failed while down, slowest append {slowest:?}",
        acknowledged.len()
    );
    assert!(failures > 0, "appends failed while the database was down");
    assert!(slowest <= OPERATION_TIMEOUT + Duration::from_millis(500), "an append hung: {slowest:?}");
    let page = store.read_after(&UserId::new("alice").unwrap(), 0, usize::MAX).await.unwrap();
    let stored: Vec<Seq> = page.notifications.iter().map(|n| n.seq.unwrap()).collect();
    assert_eq!(stored, (1..=page.head.last_seq).collect::<Vec<_>>(), "no gap, no seq twice");
    acknowledged.sort_unstable();
    let by_seq: std::collections::HashMap<Seq, String> =
        page.notifications.iter().map(|n| (n.seq.unwrap(), n.data.get().to_owned())).collect();
    for (seq, n) in &acknowledged {
        assert_eq!(
            by_seq.get(seq),
            Some(&format!(r#"{{"n":{n}}}"#)),
            "acknowledged seq {seq} holds its append"
        );
    }
    assert!(acknowledged.windows(2).all(|w| w[0].0 < w[1].0), "no seq acknowledged twice");
}

/// `herald serve --store` URLs: Herald's `schema` parameter is taken out, the rest is libpq's;
/// a URL the driver would refuse fails at once, and no error repeats the password.
#[test]
fn store_urls_take_a_schema_and_are_checked_without_connecting() {
    let options =
        PostgresOptions::from_url("postgres://u:secret@db:5433/herald?schema=h_1&application_name=node")
            .unwrap();
    assert_eq!(options.schema.as_deref(), Some("h_1"));
    assert_eq!(options.url, "postgres://u:secret@db:5433/herald?application_name=node");
    assert_eq!(options.connections_max, POOL_CONNECTIONS_MAX);
    assert_eq!(options.place(), "PostgreSQL database herald on db, schema h_1");
    let options = PostgresOptions::from_url("postgresql://u@db/herald").unwrap();
    assert_eq!((options.schema, options.url.as_str()), (None, "postgresql://u@db/herald"));
    for (bad, says) in [
        ("mysql://u:secret@db/herald", "postgres://"),
        ("postgres://u:secret@db/herald?schema=no-dashes", "schema name"),
        ("postgres://u:secret@db/herald?schema=a&schema=b", "twice"),
        ("postgres://u:secret@db/herald?bogus=1", "invalid PostgreSQL URL"),
        ("postgres://u:secret@db:port/herald", "invalid PostgreSQL URL"),
    ] {
        let error = PostgresOptions::from_url(bad).unwrap_err().to_string();
        assert!(error.contains(says), "{bad}: {error}");
        assert!(!error.contains("secret"), "{bad}: the password in {error:?}");
    }
}

/// TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` say (see `tls.rs`), against a
/// private server that takes TLS connections only, with a self-signed certificate for
/// `localhost`: `verify-full` with that certificate as root connects by name and refuses the
/// address (the certificate does not name it), `verify-ca` takes the address, `verify-full`
/// with the system's roots refuses (unknown issuer), `require` encrypts without judging, and no
/// `sslmode` is plain TCP, which the server rejects. Every connection that succeeds is checked to
/// be encrypted (`pg_stat_ssl`). A bad `sslrootcert` or a client certificate fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_check_the_certificate_as_libpq_says() {
    let Some(mut postgres) = tokio::task::block_in_place(private_postgres_or_skip) else {
        return;
    };
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (generated.cert.pem(), generated.signing_key.serialize_pem());
    tokio::task::block_in_place(|| postgres.require_tls(&cert, &key));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &cert).unwrap();
    let root = root.to_str().unwrap();
    let port = postgres.url().rsplit(':').next().unwrap().split('/').next().unwrap().to_owned();
    let url = |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    async fn encrypted(url: &str) -> Result<bool, String> {
        let options = PostgresOptions::from_url(url).map_err(|e| e.to_string())?;
        let (_pool, client) = super::pool::Pool::connect(&options).await.map_err(|e| e.to_string())?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    let full = format!("sslmode=verify-full&sslrootcert={root}");
    // Errors and logs still name the database with TLS settings in the URL.
    let place = PostgresOptions::from_url(&url("localhost", &full)).unwrap().place();
    assert_eq!(place, "PostgreSQL database postgres on localhost");
    assert_eq!(encrypted(&url("localhost", &full)).await, Ok(true), "verify-full by name");
    let refused = encrypted(&url("127.0.0.1", &full)).await.unwrap_err();
    assert!(
        refused.contains("certificate"),
        "verify-full by an address the certificate does not name: {refused}"
    );
    let ca = format!("sslmode=verify-ca&sslrootcert={root}");
    assert_eq!(encrypted(&url("127.0.0.1", &ca)).await, Ok(true), "verify-ca does not judge the name");
    let system = encrypted(&url("localhost", "sslmode=verify-full")).await.unwrap_err();
    assert!(system.contains("certificate"), "a self-signed certificate is no system root's: {system}");
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=require")).await,
        Ok(true),
        "require encrypts, judges nothing"
    );
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=prefer")).await,
        Ok(true),
        "prefer takes the TLS offered"
    );
    let plain = encrypted(&url("127.0.0.1", "application_name=x")).await.unwrap_err();
    assert!(plain.contains("pg_hba") || plain.contains("encryption"), "no sslmode is plain TCP: {plain}");
    // Percent-encoded as a URL may hold it.
    let encoded = format!("sslmode=verify-full&sslrootcert={}", root.replace('/', "%2F"));
    assert_eq!(encrypted(&url("localhost", &encoded)).await, Ok(true), "sslrootcert percent-encoded");

    for (query, said) in [
        ("sslmode=verify-full&sslrootcert=/nonexistent/root.pem", "sslrootcert"),
        ("sslmode=sometimes", "sslmode=sometimes"),
        ("sslmode=require&sslcert=/tmp/c.pem", "client certificates"),
    ] {
        let error = PostgresOptions::from_url(&url("localhost", query)).unwrap_err().to_string();
        assert!(error.contains(said), "{query}: {error}");
    }
}

/// A version 5 schema (no presence tables) gains them when a node opens it, keeping its logs;
/// presence recorded by one store is seen by another on the same schema (two nodes). Fails if
/// the upgrade to version 6 were missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_5_schema_gains_presence() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append(vec![entry("alice", 1)], None).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = &test.schema;
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".herald_presence_online; DROP TABLE \"{schema}\".herald_presence_seqs;
             DROP TABLE \"{schema}\".herald_presence_nodes; DROP TABLE \"{schema}\".herald_push_pending; UPDATE \"{schema}\".herald_meta SET schema_version = 5"
        ))
        .await
        .unwrap();
    let reopened = PostgresStore::open(options(&test.url, schema), Retention::default()).await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT schema_version FROM \"{schema}\".herald_meta"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(reopened.head(&UserId::new("alice").unwrap()).await.unwrap().last_seq, 1, "the logs are kept");
    let change = herald_core::PresenceChange {
        user: UserId::new("alice").unwrap(),
        session: SessionId::new("s").unwrap(),
        online: Some(true),
        clients: Vec::new(),
        at_ms: 1,
    };
    assert_eq!(reopened.record_presence("a", &change).await.unwrap().len(), 2);
    assert!(test.record_presence("b", &change).await.unwrap().is_empty(), "the other node sees it online");
}

/// A version 3 schema (no jobs) gains `herald_jobs` when a node opens it, keeping its logs; a
/// job saved then reads back, and `unfinished_jobs` reads the partial index in its order (no
/// sort). Fails if the upgrade to version 4 were missing, or the index did not serve the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_schema_gains_jobs() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append(vec![entry("alice", 1)], None).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = &test.schema;
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".herald_jobs; DROP TABLE \"{schema}\".herald_push_subscriptions;
             DROP TABLE \"{schema}\".herald_push_outbox;
             DROP TABLE \"{schema}\".herald_presence_online; DROP TABLE \"{schema}\".herald_presence_seqs;
             DROP TABLE \"{schema}\".herald_presence_nodes; DROP TABLE \"{schema}\".herald_push_pending; UPDATE \"{schema}\".herald_meta SET schema_version = 3"
        ))
        .await
        .unwrap();
    let reopened = PostgresStore::open(options(&test.url, schema), Retention::default()).await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT schema_version FROM \"{schema}\".herald_meta"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(reopened.head(&UserId::new("alice").unwrap()).await.unwrap().last_seq, 1, "the logs are kept");
    let job = herald_core::FanoutJob {
        id: "j1".to_owned(),
        topic: Topic::new("post:1").unwrap(),
        kind: Arc::from("t"),
        data: Arc::from(RawValue::from_string(r#"{"a": 1.50}"#.to_owned()).unwrap()),
        created_at_ms: 5,
        except_user: None,
        except_client: None,
        cursor: Some(UserId::new("m").unwrap()),
        stored: 7,
        finished_at_ms: None,
    };
    reopened.save_job(&job).await.unwrap();
    let read = reopened.unfinished_jobs(16).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!((read[0].id.as_str(), read[0].stored, read[0].data.get()), ("j1", 7, r#"{"a": 1.50}"#));

    // A table this small is read whole by any plan: scans that cannot give the order are
    // turned off, so what is checked is that the partial index gives it (no sort).
    client
        .batch_execute(&format!(
            "SET search_path = \"{schema}\"; SET enable_seqscan = off; SET enable_bitmapscan = off"
        ))
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {}", reads::UNFINISHED_JOBS_SQL.replace("$1", "16")), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join(" | ");
    eprintln!("unfinished jobs: {plan}");
    assert!(plan.contains("herald_jobs_unfinished"), "{plan}");
    assert!(!plan.contains("Sort"), "no sort: {plan}");
    drop(reopened);
}

fn outbox_delivery(n: usize) -> herald_core::PushDelivery {
    herald_core::PushDelivery {
        id: format!("{n:04}.sub.alice"),
        subscription: "sub".to_owned(),
        user: UserId::new("alice").unwrap(),
        unless_live: None,
        payload: "{}".to_owned(),
        ttl_secs: 60,
        urgency: herald_core::PushUrgency::Normal,
        topic: None,
        due_at_ms: 10 + (n % 5) as i64,
        attempts: 0,
    }
}

/// Two nodes (two stores, two pools) on one schema claim the push outbox at once, two claimers
/// each, a few rows at a time, until none is left: no delivery is handed to two claimers, and
/// every one is handed out. Fails if a claim were a read then an update (both nodes would read
/// the same due rows) rather than `FOR UPDATE SKIP LOCKED` in one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_never_claim_the_same_push() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    let other =
        Arc::new(PostgresStore::open(options(&test.url, &test.schema), Retention::default()).await.unwrap());
    let this =
        Arc::new(PostgresStore::open(options(&test.url, &test.schema), Retention::default()).await.unwrap());
    let all: Vec<herald_core::PushDelivery> = (0..400).map(outbox_delivery).collect();
    test.push_enqueue(&all).await.unwrap();
    let mut claimers = Vec::new();
    for node in [&this, &other, &this, &other] {
        let node = Arc::clone(node);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = node.push_claim(100, 9, Duration::from_secs(3600)).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut per_claimer = Vec::new();
    for claimer in claimers {
        per_claimer.push(claimer.await.unwrap());
    }
    let mut claimed: Vec<String> = per_claimer.iter().flatten().cloned().collect();
    claimed.sort();
    let expected: Vec<String> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(claimed.len(), expected.len(), "no delivery claimed twice");
    assert_eq!(claimed, expected, "every delivery claimed once");
    assert!(per_claimer.iter().filter(|mine| !mine.is_empty()).count() >= 2, "the claims ran side by side");
}

/// A version 6 schema (no push markers) gains `herald_push_pending` when a node opens it,
/// keeping its logs and subscriptions; an append with a push request then keeps a marker that
/// another node claims. Fails if the upgrade to version 7 were missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_schema_gains_push_markers() {
    skip_unless_postgres!();
    let test = TestStore::open(Retention::default()).await;
    test.append(vec![entry("alice", 1)], None).await.unwrap();
    let subscription = herald_core::PushSubscription {
        id: herald_core::push_subscription_id("https://push.example/1"),
        user: UserId::new("alice").unwrap(),
        session: SessionId::new("s1").unwrap(),
        endpoint: "https://push.example/1".to_owned(),
        p256dh: "k".to_owned(),
        auth: "a".to_owned(),
        created_at_ms: 1,
    };
    test.push_subscribe(&subscription, herald_core::PushBounds::default()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let schema = &test.schema;
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".herald_push_pending; UPDATE \"{schema}\".herald_meta SET schema_version = 6"
        ))
        .await
        .unwrap();
    let reopened = PostgresStore::open(options(&test.url, schema), Retention::default()).await.unwrap();
    let version: i32 = client
        .query_one(&format!("SELECT schema_version FROM \"{schema}\".herald_meta"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((version, SCHEMA_VERSION), (7, 7));
    assert_eq!(reopened.head(&UserId::new("alice").unwrap()).await.unwrap().last_seq, 1, "the logs are kept");
    let request = Arc::new(herald_core::PushRequest {
        policy: herald_core::PushPolicy::Always,
        payload: None,
        ttl_secs: 60,
        urgency: herald_core::PushUrgency::Normal,
        topic: "t".to_owned(),
        due_at_ms: 5,
        expand_by_ms: 7,
    });
    let pushed = NewNotification { push: Some(request), ..entry("alice", 2) };
    let Appended::Stored { push_pending, .. } = reopened.append(vec![pushed], None).await.unwrap() else {
        panic!("stored")
    };
    assert_eq!(push_pending, [herald_core::PushMarker { user: UserId::new("alice").unwrap(), seq: 2 }]);
    let claimed = test.push_claim_pending(10, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1, "the other node claims it");
}

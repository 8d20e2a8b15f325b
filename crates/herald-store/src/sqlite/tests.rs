//! SQLite-only tests, on top of the shared conformance suite: persistence across reopening and
//! `kill -9`, group commit with a failing request in the batch, chunked pruning, schema version.
//! One job (the tests of the SQLite store), hence one file past 800 lines.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, ClientId, Epoch, InboxChange, InboxCounts, InboxItem, InboxPage, InboxQuery,
    InboxStatus, ListenBounds, LogHead, LogPage, Mark, NewNotification, PruneReport, Receipt, ReceiptEntry,
    Retention, Revocation, ScopeListens, Selection, Seq, SessionId, Store, StoreError, StoredListen, Topic,
    TopicListener, UserId,
};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use serde_json::value::RawValue;
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::connection::open_writer;
use super::reads::{TOPIC_LISTENERS_SQL, USER_ROW_SQL, inbox_status_sql};
use super::request::{Append, Job, Request};
use super::schema::{SCHEMA_V1, migrate};
use super::sql::db_error;
use super::staging::Staging;
use super::writer::run_batch;
use super::*;

/// A head's (last seq, pruned through), its epoch left out.
fn seqs_of(head: &LogHead) -> (Seq, Seq) {
    (head.last_seq, head.pruned_through)
}

/// A store in its own temporary directory, deleted after the store is closed.
struct TempStore {
    // Field order matters: the store (and its writer thread) goes before the directory.
    store: SqliteStore,
    _dir: TempDir,
}

#[async_trait]
impl Store for TempStore {
    async fn push_subscribe(
        &self,
        subscription: &herald_core::PushSubscription,
        bounds: herald_core::PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        self.store.push_subscribe(subscription, bounds).await
    }
    async fn push_unsubscribe(&self, user: &herald_core::UserId, id: &str) -> Result<bool, StoreError> {
        self.store.push_unsubscribe(user, id).await
    }
    async fn push_subscriptions(
        &self,
        user: &herald_core::UserId,
    ) -> Result<Vec<herald_core::PushSubscription>, StoreError> {
        self.store.push_subscriptions(user).await
    }
    async fn push_subscription(&self, id: &str) -> Result<Option<herald_core::PushSubscription>, StoreError> {
        self.store.push_subscription(id).await
    }
    async fn push_enqueue(&self, deliveries: &[herald_core::PushDelivery]) -> Result<(), StoreError> {
        self.store.push_enqueue(deliveries).await
    }
    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushDelivery>, StoreError> {
        self.store.push_claim(now_ms, limit, lease).await
    }
    async fn push_expand(
        &self,
        expansions: &[herald_core::PushExpansion],
        to_senders: &[herald_core::PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.store.push_expand(expansions, to_senders, now_ms).await
    }
    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushPending>, StoreError> {
        self.store.push_claim_pending(now_ms, limit, lease).await
    }
    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.store.push_next_due().await
    }
    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        self.store.push_outbox_depth().await
    }
    async fn push_settle(&self, id: &str, settle: herald_core::PushSettle) -> Result<(), StoreError> {
        self.store.push_settle(id, settle).await
    }
    async fn save_job(&self, job: &herald_core::FanoutJob) -> Result<(), StoreError> {
        self.store.save_job(job).await
    }
    async fn job(&self, id: &str) -> Result<Option<herald_core::FanoutJob>, StoreError> {
        self.store.job(id).await
    }
    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<herald_core::FanoutJob>, StoreError> {
        self.store.unfinished_jobs(limit).await
    }
    async fn record_presence(
        &self,
        node: &str,
        change: &herald_core::PresenceChange,
    ) -> Result<Vec<herald_core::PresenceEvent>, StoreError> {
        self.store.record_presence(node, change).await
    }
    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<herald_core::PresenceBeat, StoreError> {
        self.store.presence_heartbeat(node, now_ms, dead_before_ms).await
    }
    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<herald_core::PresenceEvent>>, StoreError> {
        self.store.release_presence(node, at_ms, limit).await
    }

    async fn append_topic(
        &self,
        event: herald_core::NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<herald_core::TopicAppended, StoreError> {
        self.store.append_topic(event, idempotency_key).await
    }
    async fn topic_heads(
        &self,
        topics: &[Topic],
    ) -> Result<(Vec<herald_core::TopicHead>, Epoch), StoreError> {
        self.store.topic_heads(topics).await
    }
    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<herald_core::TopicPage, StoreError> {
        self.store.read_topic_after(topic, after, limit).await
    }

    async fn append(
        &self,
        entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        self.store.append(entries, idempotency_key).await
    }
    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        self.store.complete_receipt(idempotency_key, receipt).await
    }
    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        self.store.read_after(user, after, limit).await
    }
    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        self.store.head(user).await
    }
    fn epoch(&self) -> Epoch {
        self.store.epoch()
    }
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        self.store.prune(now_ms).await
    }
    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.store.inbox_list(user, query).await
    }
    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        self.store.inbox_counts(user).await
    }
    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        self.store.inbox_mark(user, selection, mark, at_ms).await
    }
    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        self.store.inbox_delete(user, selection).await
    }
    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        self.store.revoke(user, session, closed_at_secs).await
    }
    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        self.store.revocations(user).await
    }
    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        self.store.listen(user, session, topics, bounds, now_ms).await
    }
    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        self.store.unlisten(user, session, topics).await
    }
    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        self.store.forget_session_listens(user, session).await
    }
    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        self.store.listens(user).await
    }
    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError> {
        self.store.topic_listeners(topic, after, limit).await
    }
}

async fn make(retention: Retention) -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("herald.db"), retention).expect("open");
    Arc::new(TempStore { store, _dir: dir })
}

crate::conformance_tests!(make);

/// The conformance suite again with settling so frequent and in such small chunks that the
/// notifications of a user are often part settled, part staged, and settled while being read.
/// (With the default settling, the first suite sees them all staged.)
mod settling_often {
    use super::*;

    pub(super) fn often() -> Settling {
        Settling { rows: 3, after: Duration::from_millis(2), chunk_rows: 2, max_rows: 16 }
    }

    async fn make(retention: Retention) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_with(&dir.path().join("herald.db"), retention, often()).expect("open");
        Arc::new(TempStore { store, _dir: dir })
    }

    crate::conformance_tests!(make);
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

fn entry(user_id: &str, n: u64, created_at_ms: i64) -> NewNotification {
    NewNotification {
        user: user(user_id),
        kind: Arc::from("t"),
        data: Arc::from(RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap()),
        created_at_ms,
        audience: Audience::user(),
        push: None,
    }
}

fn seqs(appended: &Appended) -> Vec<Seq> {
    match appended {
        Appended::Stored { notifications, .. } => notifications.iter().map(|n| n.seq.unwrap()).collect(),
        Appended::Duplicate(receipt) => panic!("unexpected duplicate {receipt:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let (written, completed) = {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        let audience = Audience {
            session: Some(SessionId::new("s").unwrap()),
            client: None,
            except_client: Some(ClientId::new("c").unwrap()),
        };
        let first =
            store.append(vec![entry("alice", 1, 1_000), entry("bob", 1, 1_000)], Some("k")).await.unwrap();
        assert_eq!(seqs(&first), [1, 1]);
        let second =
            store.append(vec![NewNotification { audience, ..entry("alice", 2, 2_000) }], None).await.unwrap();
        assert_eq!(seqs(&second), [2]);
        let completed = Receipt {
            notifications: vec![ReceiptEntry { user: user("alice"), seq: 1 }],
            topic: None,
            job: None,
            delivered: 5,
        };
        store.complete_receipt("k", &completed).await.unwrap();
        let written = store.read_after(&user("alice"), 0, 10).await.unwrap();
        (written, completed)
        // The store is dropped here: its writer thread stops and every connection closes.
    };

    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let read = store.read_after(&user("alice"), 0, 10).await.unwrap();
    assert_eq!(seqs_of(&read.head), (2, 0));
    assert_eq!(read.head, written.head);
    let json = |page: &LogPage| page.notifications.iter().map(|n| n.json().clone()).collect::<Vec<_>>();
    assert_eq!(json(&read), json(&written));
    assert_eq!(read.notifications[1].audience, written.notifications[1].audience);
    assert_eq!(store.head(&user("bob")).await.unwrap().last_seq, 1);
    match store.append(vec![entry("alice", 9, 3_000)], Some("k")).await.unwrap() {
        Appended::Duplicate(receipt) => assert_eq!(receipt, completed),
        Appended::Stored { .. } => panic!("the idempotency key was forgotten"),
    }
    assert_eq!(seqs(&store.append(vec![entry("alice", 3, 3_000)], None).await.unwrap()), [3]);
}

/// Holds the write lock from another connection so that requests pile up in the queue, then
/// checks that they are committed together, and that the one request that fails (a trigger
/// planted behind the store's back refuses its row) fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_isolates_a_failing_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
    store.append(vec![entry("alice", 0, 0)], None).await.unwrap();
    let stats = store.writer_stats();
    assert_eq!((stats.requests, stats.batches, stats.queued), (1, 1, 0));
    assert!(stats.wal_bytes >= 4_096, "one commit wrote at least a page: {stats:?}");

    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    blocker
        .execute_batch(
            "CREATE TRIGGER planted BEFORE INSERT ON staged WHEN NEW.user = 'x'
             BEGIN SELECT RAISE(ABORT, 'planted failure'); END",
        )
        .unwrap();

    let spawn = |u: &'static str, n: u64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.append(vec![entry(u, n, 0)], None).await })
    };
    let wait_for_all_queued = async |total: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = store.writer_stats();
            if stats.requests + stats.queued as u64 == total {
                return;
            }
            assert!(Instant::now() < deadline, "requests never reached the queue: {stats:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // The first of these is taken by the writer, which then waits for the lock; the rest queue.
    let mut tasks: Vec<_> = (1..=99).map(|n| spawn("alice", n)).collect();
    wait_for_all_queued(100).await;
    // So the failing request lands in the second batch, with at least 50 others around it.
    let failing = spawn("x", 0);
    tasks.extend((100..150).map(|n| spawn("alice", n)));
    wait_for_all_queued(151).await;
    blocker.execute_batch("COMMIT").unwrap();

    let error = failing.await.unwrap().expect_err("the refused append fails");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let mut got = Vec::new();
    for task in tasks {
        got.extend(seqs(&task.await.unwrap().expect("the others of the batch commit")));
    }
    got.sort_unstable();
    assert_eq!(got, (2..=150).collect::<Vec<_>>());
    let stats = store.writer_stats();
    assert_eq!(stats.requests, 151);
    assert_eq!(stats.batches, 3, "1 warm-up, the batch stuck on the lock, then all the others together");
    assert_eq!(seqs_of(&store.head(&user("x")).await.unwrap()), (0, 0), "the failed request left no trace");
    assert_eq!(seqs_of(&store.head(&user("alice")).await.unwrap()), (150, 0));
}

/// More expired rows than one chunk: pruned in several chunks, all counted, heads raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_works_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("herald.db"), Retention::default()).unwrap();
    let now = now_ms();
    let old = now - 31 * 24 * 3_600_000;
    let per_user = PRUNE_CHUNK_ROWS as u64 / 2 + 1_000;
    for u in ["a", "b", "c"] {
        store.append((1..=per_user).map(|n| entry(u, n, old)).collect(), None).await.unwrap();
        store.append(vec![entry(u, 0, now)], None).await.unwrap();
    }
    let before = store.writer_stats().batches;
    let report = store.prune(now).await.unwrap();
    assert_eq!(report.notifications, 3 * per_user);
    assert!(store.writer_stats().batches - before >= 2, "one chunk cannot hold {} rows", 3 * per_user);
    for u in ["a", "b", "c"] {
        let page = store.read_after(&user(u), 0, 10).await.unwrap();
        assert_eq!(seqs_of(&page.head), (per_user + 1, per_user));
        assert_eq!(page.notifications.len(), 1);
    }
}

/// "All up to N" over more rows than one chunk: done in several transactions, every row and
/// count right, the seqs in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_up_to_works_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let n = INBOX_CHUNK_ROWS as u64 * 2 + 500;
    store.append((1..=n).map(|i| entry("a", i, now_ms())).collect(), None).await.unwrap();
    let a = user("a");
    store.inbox_mark(&a, &Selection::Seqs(vec![3, 1_500]), Mark::Read, 1).await.unwrap();
    let before = store.writer_stats().batches;
    let read = store.inbox_mark(&a, &Selection::AllUpTo(n - 10), Mark::Read, 2).await.unwrap();
    assert!(store.writer_stats().batches - before >= 3, "{} rows in one chunk", n - 12);
    assert_eq!(read.seqs, (1..=n - 10).filter(|s| *s != 3 && *s != 1_500).collect::<Vec<_>>());
    assert_eq!(read.counts.numbers(), [n, 10, 10, 0]);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(sql_recount(&conn, "a"), [n, 10, 10, 0]);

    let before = store.writer_stats().batches;
    let deleted = store.inbox_delete(&a, &Selection::AllUpTo(n - 1)).await.unwrap();
    assert!(store.writer_stats().batches - before >= 3);
    assert_eq!(deleted.seqs, (1..n).collect::<Vec<_>>());
    assert_eq!(deleted.counts.numbers(), [1, 1, 1, 0]);
    assert_eq!(sql_recount(&conn, "a"), [1, 1, 1, 0]);
    assert_eq!(seqs_of(&store.head(&a).await.unwrap()), (n, 0));
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let error = SqliteStore::open(&path, Retention::default()).expect_err("newer schema");
    assert!(error.to_string().contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{error}");
}

/// `[total, unread, unseen, archived]` of `user` counted by SQL from the rows.
fn sql_recount(conn: &Connection, user: &str) -> [u64; 4] {
    conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE archived_at IS NULL),
                COUNT(*) FILTER (WHERE archived_at IS NULL AND read_at IS NULL),
                COUNT(*) FILTER (WHERE archived_at IS NULL AND seen_at IS NULL),
                COUNT(*) FILTER (WHERE archived_at IS NOT NULL)
         FROM notifications WHERE user = ?1",
        [user],
        |row| Ok([row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?]),
    )
    .unwrap()
}

/// A version 1 file (made with the version 1 schema, as Herald 0.1 wrote it) opens, is upgraded
/// in place (to version 2 with exact counts, everything unread and unseen; then to version 3,
/// which drops three indexes), and works as an inbox; its seqs, heads and idempotency keys are
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_version_1_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO users VALUES ('alice', 7, 2), ('bob', 1, 0), ('carol', 3, 3);
             WITH RECURSIVE s(n) AS (SELECT 3 UNION ALL SELECT n + 1 FROM s WHERE n < 7)
             INSERT INTO notifications (user, seq, type, data, created_at)
                 SELECT 'alice', n, 't', '{\"n\":' || n || '}', 1000 * n FROM s;
             INSERT INTO notifications (user, seq, type, data, created_at, session)
                 VALUES ('bob', 1, 'u', 'null', 5, 's1');
             INSERT INTO idempotency VALUES ('k', 9999999999999, '{\"notifications\":[],\"delivered\":4}');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'notifications' AND sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(indexes, ["inbox_archived", "inbox_read", "notifications_by_created_at"]);
    for (u, expected) in [("alice", [5, 5, 5, 0]), ("bob", [1, 1, 1, 0]), ("carol", [0, 0, 0, 0])] {
        let counts = store.inbox_counts(&user(u)).await.unwrap();
        assert_eq!(counts.numbers(), expected, "{u}");
        assert_eq!(sql_recount(&conn, u), expected, "{u}");
    }
    assert_eq!(seqs_of(&store.head(&user("alice")).await.unwrap()), (7, 2));
    let page =
        store.inbox_list(&user("alice"), &InboxQuery { limit: 2, ..InboxQuery::default() }).await.unwrap();
    assert_eq!(page.items.iter().map(InboxItem::seq).collect::<Vec<_>>(), [7, 6]);
    assert_eq!(page.next_before, Some(6));
    assert_eq!(page.items[0].notification.data.get(), r#"{"n":7}"#);
    let change = store.inbox_mark(&user("alice"), &Selection::AllUpTo(5), Mark::Read, 42).await.unwrap();
    assert_eq!(change.seqs, [3, 4, 5]);
    assert_eq!(change.counts.numbers(), [5, 2, 2, 0]);
    assert_eq!(sql_recount(&conn, "alice"), [5, 2, 2, 0]);
    assert_eq!(seqs(&store.append(vec![entry("alice", 8, 8_000)], None).await.unwrap()), [8]);
    match store.append(vec![entry("alice", 9, 9_000)], Some("k")).await.unwrap() {
        Appended::Duplicate(receipt) => assert_eq!(receipt.delivered, 4),
        Appended::Stored { .. } => panic!("the idempotency key was lost in the upgrade"),
    }
    drop(store);
    // Opening again does not upgrade again.
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.inbox_counts(&user("alice")).await.unwrap().numbers(), [6, 3, 3, 0]);
}

/// Appends leave an existing user's `users` row alone (the tail grows; see `SCHEMA_V3`); every
/// other write folds the tail in first. Heads, counts and versions are right either way, and
/// deleting the newest notifications never makes a seq come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_grow_the_tail_and_other_writes_fold_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let conn = Connection::open(&path).unwrap();
    let row = || -> (i64, i64, i64) {
        conn.query_row("SELECT last_seq, total, inbox_version FROM users WHERE user = 'alice'", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap()
    };
    let alice = user("alice");
    let counts = async || store.inbox_counts(&alice).await.unwrap();
    let append = async |n: u64| {
        seqs(&store.append((0..n).map(|i| entry("alice", i, now_ms())).collect(), None).await.unwrap())
    };

    assert_eq!(append(3).await, [1, 2, 3]);
    assert_eq!(row(), (0, 0, 0), "a new user's row is written once, empty");
    assert_eq!(append(2).await, [4, 5]);
    assert_eq!(row(), (0, 0, 0), "appends do not write the row");
    assert_eq!((counts().await.numbers(), counts().await.version), ([5, 5, 5, 0], 5));
    assert_eq!(store.head(&alice).await.unwrap().last_seq, 5);

    store.inbox_mark(&alice, &Selection::Seqs(vec![2]), Mark::Read, 7).await.unwrap();
    assert_eq!(row(), (5, 5, 6), "the mark folded the tail, then counted itself");
    assert_eq!((counts().await.numbers(), counts().await.version), ([5, 4, 4, 0], 6));

    assert_eq!(append(1).await, [6]);
    assert_eq!((counts().await.numbers(), counts().await.version), ([6, 5, 5, 0], 7));
    let change = store.inbox_delete(&alice, &Selection::Seqs(vec![5, 6])).await.unwrap();
    assert_eq!((change.counts.numbers(), change.counts.version), ([4, 3, 3, 0], 8));
    assert_eq!(store.head(&alice).await.unwrap().last_seq, 6, "the head stays at the deleted newest");
    assert_eq!(append(1).await, [7], "seq 6 is not given out again");
    assert_eq!((counts().await.numbers(), counts().await.version), ([5, 4, 4, 0], 9));
    store.settle_all().await.unwrap();
    assert_eq!(sql_recount(&conn, "alice"), [5, 4, 4, 0]);
}

/// The counts kept in `users` equal an SQL recount after a mix of every kind of change,
/// including a chunked retention pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_counts_equal_an_sql_recount() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention { max_per_user: 50, ..Retention::default() }).unwrap();
    let now = now_ms();
    let old = now - 40 * 24 * 3_600_000;
    store.append((1..=30).map(|n| entry("a", n, old)).collect(), None).await.unwrap();
    store.append((31..=70).map(|n| entry("a", n, now)).collect(), None).await.unwrap();
    let a = user("a");
    store.inbox_mark(&a, &Selection::Seqs((25..=45).collect()), Mark::Read, now).await.unwrap();
    store.inbox_mark(&a, &Selection::AllUpTo(40), Mark::Archived, now).await.unwrap();
    store.inbox_delete(&a, &Selection::Seqs(vec![41, 60, 99])).await.unwrap();
    store.inbox_mark(&a, &Selection::Seqs(vec![35, 36]), Mark::Unarchived, now).await.unwrap();
    store.prune(now).await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let counts = store.inbox_counts(&a).await.unwrap();
    assert_eq!(counts.numbers(), sql_recount(&conn, "a"));
    // Left: 31..=70 but the deleted 41 and 60; archived 31..=40 but the unarchived 35 and 36;
    // read 35, 36, 42..=45.
    assert_eq!(counts.numbers(), [30, 24, 24, 8], "{counts:?}");
}

/// Once a generation has settled all of a user's rows, the writer keeps the user's row, so that
/// its next append reads nothing from SQLite; every write that changes the user (a mark, a
/// delete, retention by count or by age) drops it. Debug builds compare each kept row with
/// SQLite's whenever an append uses it (`StagingWrites::user_row`), so a write that changed a
/// user and left its kept row behind fails this test there; here, seqs and counts must come out
/// as an SQL recount says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_users_rows_are_kept_until_a_write_changes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let retention = Retention { max_per_user: 6, ..Retention::default() };
    let store = SqliteStore::open(&path, retention).unwrap();
    let (a, b) = (user("a"), user("b"));
    let now = now_ms();
    let old = now - 40 * 24 * 3_600_000;
    let append = async |user_id: &str, n: u64, at: i64| {
        seqs(&store.append(vec![entry(user_id, n, at)], None).await.unwrap())
    };
    // Settles what is staged (as a generation does), then says how many users' rows are kept.
    let settled = async |store: &SqliteStore| {
        store.settle_all().await.unwrap();
        let stats = store.writer_stats();
        assert_eq!(stats.staged, 0, "{stats:?}");
        stats.kept_rows
    };

    assert_eq!(append("a", 1, old).await, [1]);
    assert_eq!(append("a", 2, now).await, [2]);
    assert_eq!(append("b", 1, now).await, [1]);
    assert_eq!(settled(&store).await, 2, "a and b are kept");
    assert_eq!(append("a", 3, now).await, [3], "from a's kept row");

    store.inbox_mark(&a, &Selection::Seqs(vec![2]), Mark::Read, now).await.unwrap();
    assert_eq!(settled(&store).await, 1, "the mark dropped a's row, not b's");
    assert_eq!(append("a", 4, now).await, [4]);
    assert_eq!(settled(&store).await, 2);

    store.inbox_delete(&a, &Selection::Seqs(vec![3])).await.unwrap();
    assert_eq!(settled(&store).await, 1, "the delete dropped it");
    assert_eq!(append("a", 5, now).await, [5]);

    // Retention by age: seq 1 is 40 days old.
    store.prune(now).await.unwrap();
    assert_eq!(settled(&store).await, 1, "the prune dropped a's row");
    assert_eq!(append("a", 6, now).await, [6]);
    // Retention by count (6): the 8th append prunes seq 2 (in the append's own transaction).
    assert_eq!(append("a", 7, now).await, [7]);
    assert_eq!(append("a", 8, now).await, [8]);
    assert_eq!(append("a", 9, now).await, [9], "after a prune by count");
    assert_eq!(append("b", 2, now).await, [2], "from b's kept row, untouched by a's writes");

    // The recount reads `notifications` only. Only b is kept: a is at its cap, where every
    // append prunes, which settles the user at once and drops its row.
    assert_eq!(settled(&store).await, 1);
    let conn = Connection::open(&path).unwrap();
    for user in [&a, &b] {
        let counts = store.inbox_counts(user).await.unwrap();
        assert_eq!(counts.numbers(), sql_recount(&conn, user.as_str()), "{user}");
    }
    // a: 1 went by age, 3 was deleted, 2 (the read one) by count when 8 came; 4 to 9 are left.
    let page = store.read_after(&a, 0, 10).await.unwrap();
    let left: Vec<Seq> = page.notifications.iter().map(|n| n.seq.unwrap()).collect();
    assert_eq!(left, [4, 5, 6, 7, 8, 9]);
    let [total, unread, _, archived] = store.inbox_counts(&a).await.unwrap().numbers();
    assert_eq!([total, unread, archived], [6, 6, 0]);
}

/// Inbox pages, marks and deletes of a user with 100,000 notifications read through an index
/// (a range of it, newest first), never a scan of the table nor a sort: what `EXPLAIN QUERY
/// PLAN` says for every query they run.
#[test]
fn inbox_queries_use_indexes_at_100k_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "BEGIN;
         INSERT INTO users (user, last_seq, pruned_through) VALUES ('big', 100000, 0), ('small', 10, 0);
         WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100000)
         INSERT INTO notifications (user, seq, type, data, created_at, seen_at, read_at, archived_at)
             SELECT 'big', n, 't' || (n % 7), '{}', n,
                    CASE WHEN n % 3 = 0 OR n % 5 = 0 THEN n END, CASE WHEN n % 5 = 0 THEN n END,
                    CASE WHEN n % 11 = 0 THEN n END
             FROM s;
         WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 10)
         INSERT INTO notifications (user, seq, type, data, created_at) SELECT 'small', n, 't', '{}', n FROM s;
         COMMIT;
         ANALYZE;",
    )
    .unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    let check = |what: &str, sql: &str| {
        let plan = plan(sql);
        assert!(plan.contains("SEARCH "), "{what}: {plan}");
        assert!(!plan.contains("SCAN "), "{what} scans: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{what} sorts: {plan}");
        eprintln!("{what}: {plan}");
        plan
    };
    let bind = |sql: String, by_type: bool| {
        let sql = sql.replace("?1", "'big'").replace("?2", "90000").replace("?3", "21");
        if by_type { sql.replace("?4", "'t3'") } else { sql }
    };
    for status in InboxStatus::ALL {
        let index = inbox_status_sql(status).0.unwrap_or("PRIMARY KEY");
        for by_type in [false, true] {
            let plan = check(
                &format!("{status:?}, by type {by_type}"),
                &bind(inbox_list_sql(status, by_type), by_type),
            );
            assert!(
                plan.contains(&format!(" {index} (user=? AND seq<?)")),
                "{status:?} walks {index}: {plan}"
            );
        }
    }
    let plan = check("head and counts", &USER_ROW_SQL.replace("?1", "'big'"));
    assert!(plan.contains("PRIMARY KEY (user=?)") && plan.contains("users USING INDEX"), "{plan}");
    check(
        "mark one",
        "SELECT seen_at, read_at, archived_at FROM notifications WHERE user = 'big' AND seq = 5",
    );
    check(
        "mark all",
        "SELECT seq, seen_at, read_at, archived_at FROM notifications
         WHERE user = 'big' AND seq <= 500 AND read_at IS NULL ORDER BY seq",
    );
    check(
        "delete",
        "DELETE FROM notifications WHERE user = 'big' AND seq > 4 AND seq <= 5
         RETURNING seq, seen_at, read_at, archived_at",
    );
    // And the answers are right: the first page of each status, newest first.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store =
            SqliteStore::open(&path, Retention { max_per_user: u64::MAX, ..Retention::default() }).unwrap();
        let page = |status| {
            let store = &store;
            async move {
                let query = InboxQuery { status, kind: None, before: Some(100), limit: 3 };
                store
                    .inbox_list(&user("big"), &query)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(InboxItem::seq)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(page(InboxStatus::All).await, [98, 97, 96]);
        assert_eq!(page(InboxStatus::Unread).await, [98, 97, 96]);
        // Read implies seen (as marks make it): 95 is read, so seen.
        assert_eq!(page(InboxStatus::Unseen).await, [98, 97, 94]);
        assert_eq!(page(InboxStatus::Read).await, [95, 90, 85]);
        assert_eq!(page(InboxStatus::Archived).await, [99, 88, 77]);
    });
}

#[test]
fn refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let error = SqliteStore::open(&path, Retention::default()).expect_err("not a database");
    assert!(matches!(error, StoreError::Unavailable(_) | StoreError::Corrupt(_)), "{error:?}");
}

/// Appends are staged, readable at once, settled by the writer in generations, and `staged`
/// is emptied once they are; closing the store settles what is still staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_staged_then_settled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    // The store makes the file (an empty one made by `Connection::open` would be refused).
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    let rows = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)).unwrap_or(-1)
    };
    {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.append((1..=5).map(|n| entry("alice", n, now_ms())).collect(), None).await.unwrap();
        assert_eq!((rows("staged"), rows("notifications")), (5, 0), "staged, not in the log yet");
        assert_eq!(store.writer_stats().staged, 5);
        let page = store.read_after(&user("alice"), 2, 10).await.unwrap();
        assert_eq!(page.notifications.iter().map(|n| n.seq.unwrap()).collect::<Vec<_>>(), [3, 4, 5]);
        store.settle_all().await.unwrap();
        assert_eq!((rows("staged"), rows("notifications")), (0, 5));
        let stats = store.writer_stats();
        assert_eq!((stats.staged, stats.settled), (0, 5));

        store.append(vec![entry("alice", 6, now_ms())], None).await.unwrap();
        assert_eq!((rows("staged"), rows("notifications")), (1, 5));
        // Dropped: the writer settles before it stops.
    }
    assert_eq!((rows("staged"), rows("notifications")), (0, 6), "closing settled everything");

    // A generation starts by itself once its time has come.
    let store = SqliteStore::open_with(
        &path,
        Retention::default(),
        Settling { after: Duration::from_millis(50), ..Settling::default() },
    )
    .unwrap();
    store.append(vec![entry("bob", 1, now_ms())], None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.writer_stats().staged > 0 {
        assert!(Instant::now() < deadline, "never settled: {:?}", store.writer_stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((rows("staged"), rows("notifications")), (0, 7));
}

/// A settle chunk gives way to waiting requests once it has settled its minimum: with appends
/// queued all the time, a generation of 300 users (one row each) takes many chunks although one
/// chunk could take them all (`chunk_rows` 10,000). The users it gave way before are settled by
/// the next chunks, in order, and `staged` is emptied only when the last one is: nothing is lost
/// or settled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_chunks_give_way_to_waiting_requests() {
    const USERS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let settling = Settling {
        rows: USERS as usize,
        after: Duration::from_secs(3_600),
        chunk_rows: 10_000,
        max_rows: 100_000,
    };
    let store = Arc::new(SqliteStore::open_with(&path, Retention::default(), settling).unwrap());
    // Publishers that keep the writer's queue busy until the generation is settled.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    store.append(vec![entry(&format!("busy{i}"), n, now_ms())], None).await.unwrap();
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for n in 0..USERS {
        store.append(vec![entry(&format!("u{n:03}"), n, now_ms())], None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.writer_stats().settled < USERS {
        assert!(Instant::now() < deadline, "never settled: {:?}", store.writer_stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut busy_appends = 0;
    for task in busy {
        busy_appends += task.await.unwrap();
    }
    let stats = store.writer_stats();
    // Without giving way, every generation would be one chunk.
    assert!(
        stats.settle_chunks >= stats.settle_generations + 4,
        "a generation of {USERS} users under load should take several chunks: {stats:?}"
    );
    for n in 0..USERS {
        let page = store.read_after(&user(&format!("u{n:03}")), 0, 10).await.unwrap();
        assert_eq!(seqs_of(&page.head).0, 1, "u{n:03}: {page:?}");
        assert_eq!(page.notifications.len(), 1, "u{n:03}: {page:?}");
    }
    store.settle_all().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM staged"), 0);
    assert_eq!(
        count("SELECT COUNT(*) FROM notifications"),
        i64::try_from(USERS + busy_appends).unwrap(),
        "every append settled exactly once"
    );
}

/// The writer checkpoints the WAL itself, when no request waits, so the WAL starts over from its
/// beginning instead of growing: under a steady stream of lone commits its file stops growing
/// after the first checkpoint. (With a checkpointer thread beside the writer, a commit always
/// landed while it copied, the WAL never started over, and every commit appended to the file.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_a_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let wal = dir.path().join("herald.db-wal");
    let append_for = |secs: f64, n: &mut u64| {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let store = &store;
        let mut next = *n;
        async move {
            while Instant::now() < until {
                next += 1;
                store.append(vec![entry("alice", next, now_ms())], None).await.unwrap();
                // About 1,000 lone commits a second at most: the load of a steady publisher.
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            next
        }
    };
    let mut n = 0;
    n = append_for(1.5, &mut n).await;
    let after_first_second = std::fs::metadata(&wal).unwrap().len();
    n = append_for(3.0, &mut n).await;
    let after_four_seconds = std::fs::metadata(&wal).unwrap().len();
    let stats = store.writer_stats();
    assert!(stats.checkpoints >= 3, "{stats:?}");
    assert!(
        after_four_seconds < 2 * after_first_second,
        "the WAL grew from {after_first_second} to {after_four_seconds} bytes over {n} appends: it never started over"
    );
}

/// A settle chunk that fails (here: a trigger planted behind the store's back refuses bob's rows
/// in `notifications`) gives its generation up: bob's rows stay staged, readable and in `staged`
/// (the generation's delete must not drop them), appends go on, and once the cause is gone they
/// settle like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_settle_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let settling = Settling { rows: 2, after: Duration::from_millis(5), chunk_rows: 1, max_rows: 1_000 };
    let store = SqliteStore::open_with(&path, Retention::default(), settling).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER planted BEFORE INSERT ON notifications WHEN NEW.user = 'bob'
         BEGIN SELECT RAISE(ABORT, 'planted failure'); END",
    )
    .unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    let log = async |u: &str| -> Vec<Seq> {
        let page = store.read_after(&user(u), 0, 100).await.unwrap();
        page.notifications.iter().map(|n| n.seq.unwrap()).collect()
    };

    for n in 1..=3 {
        store.append(vec![entry("alice", n, now_ms()), entry("bob", n, now_ms())], None).await.unwrap();
    }
    // Alice's rows settle; every generation fails on bob's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count("SELECT COUNT(*) FROM notifications WHERE user = 'alice'") < 3 {
        assert!(Instant::now() < deadline, "alice never settled: {:?}", store.writer_stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.writer_stats().staged, 3, "bob's rows are still staged");
    assert_eq!(count("SELECT COUNT(*) FROM staged WHERE user = 'bob'"), 3, "and still durable in `staged`");
    assert_eq!(count("SELECT COUNT(*) FROM notifications WHERE user = 'bob'"), 0);
    assert_eq!(log("bob").await, [1, 2, 3], "readable all the same");
    assert_eq!(seqs(&store.append(vec![entry("bob", 4, now_ms())], None).await.unwrap()), [4]);

    conn.execute_batch("DROP TRIGGER planted").unwrap();
    while store.writer_stats().staged > 0 {
        assert!(Instant::now() < deadline, "bob never settled: {:?}", store.writer_stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count("SELECT COUNT(*) FROM notifications WHERE user = 'bob'"), 4);
    assert_eq!(log("bob").await, [1, 2, 3, 4]);
    assert_eq!(log("alice").await, [1, 2, 3]);
    drop(store);
    assert_eq!(count("SELECT COUNT(*) FROM staged"), 0);
}

/// What a crash leaves in `staged` is settled when the store opens: rows not in the log yet
/// join it; rows already settled (still there, or settled and then deleted on purpose) do not
/// come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_settles_what_a_crash_left_staged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.append((1..=3).map(|n| entry("alice", n, now_ms())).collect(), None).await.unwrap();
        store.append(vec![entry("bob", 1, now_ms())], None).await.unwrap();
        // alice 3 is deleted on purpose (settling alice; the fold sets her last_seq to 3).
        store.inbox_delete(&user("alice"), &Selection::Seqs(vec![3])).await.unwrap();
    }
    // What a crash mid-generation leaves: rows settled but not yet deleted from `staged`
    // (alice 1..=3, bob 1), and rows staged but not settled (alice 4, 5; bob 2).
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        r#"INSERT INTO staged (user, seq, type, data, created_at) VALUES
             ('alice', 1, 't', '{"n":1}', 0), ('alice', 2, 't', '{"n":2}', 0), ('bob', 1, 't', '{"n":1}', 0),
             ('alice', 3, 't', '{"n":3}', 0), ('alice', 4, 't', '{"n":4}', 0), ('bob', 2, 't', '{"n":2}', 0),
             ('alice', 5, 't', '{"n":5}', 0);"#,
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let log = async |u: &str| {
        let page = store.read_after(&user(u), 0, 100).await.unwrap();
        let seqs: Vec<Seq> = page.notifications.iter().map(|n| n.seq.unwrap()).collect();
        (seqs, page.head.last_seq)
    };
    assert_eq!(log("alice").await, (vec![1, 2, 4, 5], 5), "3 stays deleted, 4 and 5 joined");
    assert_eq!(log("bob").await, (vec![1, 2], 2));
    assert_eq!(store.inbox_counts(&user("alice")).await.unwrap().numbers(), [4, 4, 4, 0]);
    assert_eq!(store.inbox_counts(&user("bob")).await.unwrap().numbers(), [2, 2, 2, 0]);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(conn.query_row("SELECT COUNT(*) FROM staged", [], |row| row.get::<_, i64>(0)).unwrap(), 0);
    assert_eq!(sql_recount(&conn, "alice"), [4, 4, 4, 0]);
    assert_eq!(seqs(&store.append(vec![entry("alice", 6, 0)], None).await.unwrap()), [6]);
}

/// Set in the child process of [`kill_9_loses_no_acknowledged_append`]: its database path.
const CRASH_CHILD_ENV: &str = "HERALD_STORE_CRASH_CHILD_DB";
/// Set (to anything) in the child process to settle often ([`settling_often::often`]), so the
/// kill lands while generations are being settled.
const CRASH_SETTLING_ENV: &str = "HERALD_STORE_CRASH_CHILD_SETTLE_OFTEN";
/// Users the child writes to, from that many concurrent tasks each, so batches mix users.
const CRASH_USERS: [&str; 2] = ["u0", "u1"];

fn crash_retention() -> Retention {
    // No pruning by count in 0.5 s of appends, however fast the disk: every seq stays checkable.
    Retention { max_per_user: u64::MAX, ..Retention::default() }
}

/// Not a test by itself: run by [`kill_9_loses_no_acknowledged_append`] in a child process
/// (the test binary itself) with [`CRASH_CHILD_ENV`] set. Appends from 8 tasks until killed,
/// printing `ACK <user> <seq>` for each seq once its append has returned.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let settling = match std::env::var_os(CRASH_SETTLING_ENV) {
            Some(_) => settling_often::often(),
            None => Settling::default(),
        };
        let store = Arc::new(SqliteStore::open_with(Path::new(&path), crash_retention(), settling).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // A safety bound, should the parent fail to kill us.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut n = 0;
                    while Instant::now() < deadline {
                        n += 1;
                        let u = CRASH_USERS[t % 2];
                        let batch = vec![entry(u, n, now_ms()); 1 + (n as usize % 3)];
                        let appended = store.append(batch, None).await.unwrap();
                        for seq in seqs(&appended) {
                            println!("ACK {u} {seq}");
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// Appends in a child process, `kill -9`s it mid-stream, reopens the file: every seq the child
/// saw acknowledged is there, and each user's log is gap-free. With the default settling, what
/// the child appended is still staged when it dies.
#[test]
fn kill_9_loses_no_acknowledged_append() {
    kill_9_mid_stream(false);
}

/// The same, with the child settling all the time: killed between or inside settle
/// transactions, it still loses nothing and duplicates nothing.
#[test]
fn kill_9_while_settling_loses_no_acknowledged_append() {
    kill_9_mid_stream(true);
}

fn kill_9_mid_stream(settle_often: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let mut command = Command::new(std::env::current_exe().unwrap());
    if settle_often {
        command.env(CRASH_SETTLING_ENV, "1");
    }
    let mut child = command
        .args(["sqlite::tests::crash_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = std::io::BufReader::new(stdout);
        let mut acked = Vec::new();
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            // Only whole lines: one cut by the kill was not fully printed.
            if let Some(ack) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK "))
                && let Some((u, seq)) = ack.split_once(' ')
            {
                if acked.is_empty() {
                    let _ = lines_tx.send(());
                }
                acked.push((u.to_owned(), seq.parse::<Seq>().unwrap()));
            }
            line.clear();
        }
        acked
    });
    lines_rx.recv_timeout(Duration::from_secs(30)).expect("the child acknowledged nothing");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(acked.len() > 10, "too few appends to mean anything: {}", acked.len());

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path, crash_retention()).unwrap();
        for u in CRASH_USERS {
            let mut all = Vec::new();
            loop {
                let page = store.read_after(&user(u), all.len() as Seq, 1_000).await.unwrap();
                if page.notifications.is_empty() {
                    assert_eq!(page.head.last_seq, all.len() as Seq, "{u}: the log ends at its head");
                    break;
                }
                all.extend(page.notifications.iter().map(|n| n.seq.unwrap()));
            }
            assert_eq!(all, (1..=all.len() as Seq).collect::<Vec<_>>(), "{u}: no gap");
            let max_acked = acked.iter().filter(|(a, _)| a == u).map(|(_, seq)| *seq).max().unwrap_or(0);
            assert!(
                max_acked <= all.len() as Seq,
                "{u}: acknowledged seq {max_acked} is lost ({} kept)",
                all.len()
            );
        }
        eprintln!("kill -9 test: {} acknowledged seqs, all present", acked.len());
    });
}

/// The number of rows of `table` in the database at `path`, read behind the store's back.
fn count_rows(path: &Path, table: &str) -> i64 {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)).unwrap()
}

/// Two stores on one file would hand out the same seqs, and the second one's opening would settle
/// and empty the first one's `staged` behind its back (issue 10, defect 1). The second open is
/// refused, naming the holder, before it changes anything; also through another name of the
/// same file (a symlinked dir); once the first is closed, the file opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_one_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let first = SqliteStore::open(&path, Retention::default()).unwrap();
    first.append((1..=3).map(|n| entry("alice", n, now_ms())).collect(), None).await.unwrap();
    assert_eq!(count_rows(&path, "staged"), 3);

    let error = SqliteStore::open(&path, Retention::default()).expect_err("the file is in use");
    match &error {
        StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id()), "{error}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(error.to_string().contains(&format!("pid {}", std::process::id())), "{error}");
    let alias = dir.path().join("alias");
    std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
    let error = SqliteStore::open(&alias.join("herald.db"), Retention::default()).expect_err("same file");
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");

    assert_eq!(count_rows(&path, "staged"), 3, "the refused opens settled nothing");
    assert_eq!(count_rows(&path, "notifications"), 0);
    assert_eq!(seqs(&first.append(vec![entry("alice", 4, now_ms())], None).await.unwrap()), [4]);
    first.settle_all().await.unwrap();
    drop(first);

    let again = SqliteStore::open(&path, Retention::default()).expect("free again once closed");
    assert_eq!(again.head(&user("alice")).await.unwrap().last_seq, 4);
}

/// A 0-byte `herald.db` (truncated by a tool, a full disk, a bad copy) must not start as an empty
/// store: seqs would restart at 1 and every client's resume point would be wrong. Nor is another
/// program's database taken over. Both are refused, unchanged; a file Herald creates is fine.
#[test]
fn an_empty_or_foreign_database_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    std::fs::write(&path, b"").unwrap();
    let error = SqliteStore::open(&path, Retention::default()).expect_err("an empty file");
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    assert!(error.to_string().contains("empty"), "{error}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

    let foreign = dir.path().join("other.db");
    Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE accounts (id INTEGER)").unwrap();
    let error = SqliteStore::open(&foreign, Retention::default()).expect_err("another program's database");
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    let tables: i64 = Connection::open(&foreign)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'", [], |row| row.get(0))
        .unwrap();
    assert_eq!(tables, 1, "nothing was added to it");

    let fresh = dir.path().join("fresh.db");
    drop(SqliteStore::open(&fresh, Retention::default()).expect("a new file"));
    drop(SqliteStore::open(&fresh, Retention::default()).expect("and again"));
}

/// A user at `max_per_user` settles with every append (the append prunes the user), so none of
/// those rows is ever in a generation: they must still leave `staged` (issue 10, defect 4: a
/// user at the cap who got 20,000 more left 20,000 staged rows forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_the_cap_leaves_no_staged_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let retention = Retention { max_per_user: 10, ..Retention::default() };
    let store = SqliteStore::open(&path, retention).unwrap();
    for n in 1..=500 {
        store.append(vec![entry("alice", n, now_ms())], None).await.unwrap();
    }
    // Marks and deletes settle early too.
    for n in 1..=50 {
        store.append(vec![entry("bob", n, now_ms())], None).await.unwrap();
    }
    store.inbox_mark(&user("bob"), &Selection::AllUpTo(50), Mark::Read, now_ms()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.writer_stats().staged > 0 || count_rows(&path, "staged") > 0 {
        assert!(
            Instant::now() < deadline,
            "{} rows left in `staged`: {:?}",
            count_rows(&path, "staged"),
            store.writer_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count_rows(&path, "notifications"), 20, "10 each");
    assert_eq!(seqs_of(&store.head(&user("alice")).await.unwrap()), (500, 490));
}

/// `size` bytes of JSON data: a string of `size - 2` characters.
fn big_entry(user_id: &str, size: usize) -> NewNotification {
    let data = format!("\"{}\"", "x".repeat(size - 2));
    NewNotification { data: Arc::from(RawValue::from_string(data).unwrap()), ..entry(user_id, 0, now_ms()) }
}

/// The bytes of the database file and its WAL.
fn disk_bytes(path: &Path) -> u64 {
    let wal = path.with_file_name("herald.db-wal");
    std::fs::metadata(path).map_or(0, |m| m.len()) + std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// Disk is bounded by retention: thousands of 16–64 KiB publishes to users kept at 20
/// notifications each leave a database of about what retention keeps, not of everything ever
/// published (issue 10, defect 4: 4,000 × 64 KiB with `max_per_user` 100 grew the file to
/// 258 MB for 6.5 MB retained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_stays_bounded_by_retention() {
    const USERS: usize = 4;
    const KEPT: u64 = 20;
    const PUBLISHES: usize = 2_400;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let retention = Retention { max_per_user: KEPT, ..Retention::default() };
    let store = Arc::new(SqliteStore::open(&path, retention).unwrap());
    let published = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (store, published) = (Arc::clone(&store), Arc::clone(&published));
            tokio::spawn(async move {
                for i in (task..PUBLISHES).step_by(8) {
                    let size = 16 * 1024 + (i * 7_919) % (48 * 1024);
                    let user = format!("u{}", i % USERS);
                    store.append(vec![big_entry(&user, size)], None).await.unwrap();
                    published.fetch_add(size as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let published = published.load(Ordering::Relaxed);
    // What retention keeps: at most KEPT of the largest (64 KiB) per user.
    let retained_max = USERS as u64 * KEPT * 64 * 1024;
    store.settle_all().await.unwrap();
    let db = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "published {} MiB, retention keeps at most {} MiB; herald.db {} MiB, with the WAL {} MiB",
        published >> 20,
        retained_max >> 20,
        db >> 20,
        disk_bytes(&path) >> 20
    );
    // Rows in flight (staged, not yet pruned) and free pages kept for reuse come on top of what
    // is retained: 4× is far below the 30× a leak reaches here.
    assert!(db <= 4 * retained_max + (8 << 20), "herald.db is {db} bytes for {retained_max} retained");
    assert_eq!(count_rows(&path, "staged"), 0);
}

/// Space freed by deletes is given back to the file system over time (incremental vacuum, a
/// bounded step at a time when the writer is idle): a database that held 24 MiB shrinks once
/// they are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_space_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    for _ in 0..48 {
        store.append((0..8).map(|_| big_entry("alice", 64 * 1024)).collect(), None).await.unwrap();
    }
    store.settle_all().await.unwrap();
    let full = std::fs::metadata(&path).unwrap().len().max(disk_bytes(&path));
    store.inbox_delete(&user("alice"), &Selection::AllUpTo(384)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let db = std::fs::metadata(&path).unwrap().len();
        if db < 4 << 20 {
            eprintln!("herald.db: {} MiB full, {} KiB after the deletes", full >> 20, db >> 10);
            break;
        }
        assert!(Instant::now() < deadline, "herald.db still {db} bytes (was {full} full)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 384);
    assert!(store.read_after(&user("alice"), 0, 10).await.unwrap().notifications.is_empty());
}

/// The whole batch fails when its transaction cannot commit (a full disk): every request is
/// told once, plainly, what failed, not `store unavailable: store unavailable: …` (issue 10,
/// defect 8).
#[test]
fn a_failed_batch_says_what_failed_once() {
    let full = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some("database or disk is full".into()),
    );
    let error = db_error(full);
    assert_eq!(error.to_string(), "store unavailable: database or disk is full");
    let (reply, mut answer) = oneshot::channel();
    let mut request =
        Request::Append(Job::new(Append { entries: Vec::new(), key: None, push: Vec::new() }, reply));
    request.fail(error);
    request.send();
    let failed = answer.try_recv().unwrap().expect_err("failed");
    assert_eq!(failed.to_string(), "store unavailable: database or disk is full");
}

/// A real full disk, as SQLite reports it (here: the database may not grow past its size): the
/// append fails with the cause said once, the store goes on, and nothing half-written is left.
#[test]
fn a_full_database_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let mut conn = open_writer(&path).unwrap();
    migrate(&mut conn, &path).unwrap();
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0)).unwrap();
    conn.query_row(&format!("PRAGMA max_page_count = {}", pages + 4), [], |_| Ok(())).unwrap();
    let staging = Mutex::new(Staging::default());
    let (reply, mut answer) = oneshot::channel();
    let append = Append { entries: vec![big_entry("alice", 64 * 1024)], key: None, push: Vec::new() };
    let mut batch = vec![Request::Append(Job::new(append, reply))];
    let staged = run_batch(&mut conn, &Retention::default(), &staging, &mut batch);
    assert_eq!(staged, 0);
    batch.into_iter().for_each(Request::send);
    let error = answer.try_recv().unwrap().expect_err("the database is full");
    assert_eq!(error.to_string().matches("store unavailable").count(), 1, "{error}");
    assert!(error.to_string().contains("database or disk is full"), "{error}");
}

/// Revocations survive closing and reopening the file (they are durable once `revoke` returns),
/// and a version 4 file gains the table in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.revoke(&user("alice"), None, 1_000).await.unwrap();
        store.revoke(&user("alice"), Some(&SessionId::new("s1").unwrap()), 2_000).await.unwrap();
    }
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let mut list = store.revocations(&user("alice")).await.unwrap();
    list.sort_by_key(|r| r.closed_at_secs);
    assert_eq!(
        list,
        [
            Revocation { session: None, closed_at_secs: 1_000 },
            Revocation { session: Some(SessionId::new("s1").unwrap()), closed_at_secs: 2_000 },
        ]
    );
    drop(store);
    // A version 4 file (no revocations table) is upgraded in place.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE revocations; DROP TABLE meta; DROP TABLE topic_listens; DROP TABLE topic_log;
         DROP TABLE topic_heads; DROP TABLE jobs; DROP TABLE push_subscriptions; DROP TABLE push_outbox;
         DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.revocations(&user("alice")).await.unwrap(), []);
    store.revoke(&user("alice"), None, 3_000).await.unwrap();
    assert_eq!(store.revocations(&user("alice")).await.unwrap().len(), 1);
}

/// The epoch is made with the database and kept in it (`SCHEMA_V6`): the same after reopening
/// and in a copy of the file, another for another database; a version 5 file gets one when it is
/// upgraded; `renew_epoch` gives the file a new one, keeping its logs, and only while no store has
/// it open. Fails if the epoch were made per open (every restart would reset every client), lost
/// on upgrade, or renewable under a running store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_is_made_with_the_database_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let epoch = {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
        let epoch = store.epoch();
        assert!(epoch.len() == 32 && epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{epoch}");
        assert_eq!(store.head(&user("alice")).await.unwrap().epoch, epoch);
        let error = SqliteStore::renew_epoch(&path).expect_err("the store has it open");
        assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
        epoch
    };
    let reopened = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(reopened.epoch(), epoch, "reopening keeps the epoch");
    assert_eq!(reopened.head(&user("alice")).await.unwrap().epoch, epoch);
    drop(reopened);

    let copy_dir = tempfile::tempdir().unwrap();
    // The file and its WAL, which may hold the last commits (the readers close last, read-only).
    std::fs::copy(&path, copy_dir.path().join("herald.db")).unwrap();
    let wal = dir.path().join("herald.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, copy_dir.path().join("herald.db-wal")).unwrap();
    }
    let copy = SqliteStore::open(&copy_dir.path().join("herald.db"), Retention::default()).unwrap();
    assert_eq!(copy.epoch(), epoch, "a copy of the file is the same database: an operator renews it");
    drop(copy);
    let other = SqliteStore::open(&copy_dir.path().join("other.db"), Retention::default()).unwrap();
    assert_ne!(other.epoch(), epoch, "another database, another epoch");
    drop(other);

    let renewed = SqliteStore::renew_epoch(&path).unwrap();
    assert_ne!(renewed, epoch);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.epoch(), renewed, "the renewed epoch is kept");
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "and the logs with it");
    drop(store);

    let missing = dir.path().join("missing.db");
    let error = SqliteStore::renew_epoch(&missing).expect_err("no database there");
    assert!(matches!(error, StoreError::NotAStore { .. }), "{error:?}");
    assert!(!missing.exists(), "renewing made no database");

    // A version 5 file (no `meta` table) gets an epoch of its own when it is upgraded.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE meta; DROP TABLE topic_listens; DROP TABLE topic_log; DROP TABLE topic_heads;
         DROP TABLE jobs; DROP TABLE push_subscriptions; DROP TABLE push_outbox;
         DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);
    let upgraded = SqliteStore::open(&path, Retention::default()).unwrap();
    let epoch = upgraded.epoch();
    assert!(epoch.len() == 32 && epoch != renewed, "{epoch}");
    assert_eq!(upgraded.head(&user("alice")).await.unwrap().last_seq, 1);
    drop(upgraded);
    assert_eq!(SqliteStore::open(&path, Retention::default()).unwrap().epoch(), epoch, "and keeps it");
}

/// `(session, topic)` of each of `user`'s listens, `""` for user scope.
async fn listens_of(store: &SqliteStore, user_id: &str) -> Vec<(String, String)> {
    store
        .listens(&user(user_id))
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.session.map(|s| s.as_str().to_owned()).unwrap_or_default(), l.topic.as_str().to_owned()))
        .collect()
}

/// Listens survive closing and reopening the file (they are durable once `listen` returns),
/// sessions keep their latest listen (the one evicted after reopening is the oldest), and a
/// version 6 file gains the table in place, keeping its logs. Fails if listens were kept in
/// memory, or if the upgrade to version 7 were missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let bounds = ListenBounds { user_topics_max: 10, session_topics_max: 10, sessions_max: 2 };
    let topics = |names: &[&str]| names.iter().map(|n| Topic::new(n).unwrap()).collect::<Vec<_>>();
    let (s1, s2, s3) =
        (SessionId::new("s1").unwrap(), SessionId::new("s2").unwrap(), SessionId::new("s3").unwrap());
    {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
        store.listen(&user("alice"), None, &topics(&["follow"]), bounds, 1_000).await.unwrap();
        store.listen(&user("alice"), Some(&s2), &topics(&["b"]), bounds, 2_000).await.unwrap();
        store.listen(&user("alice"), Some(&s1), &topics(&["a", "c"]), bounds, 3_000).await.unwrap();
        store.unlisten(&user("alice"), Some(&s1), &topics(&["c"])).await.unwrap();
    }
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(
        listens_of(&store, "alice").await,
        [("", "follow"), ("s1", "a"), ("s2", "b")].map(|(s, t)| (s.to_owned(), t.to_owned()))
    );
    assert_eq!(
        store.topic_listeners(&Topic::new("a").unwrap(), None, 10).await.unwrap(),
        [TopicListener { user: user("alice"), session: Some(s1.clone()) }]
    );
    // s2's latest listen (2,000) is older than s1's (3,000), as it was before reopening.
    store.listen(&user("alice"), Some(&s3), &topics(&["d"]), bounds, 4_000).await.unwrap();
    assert_eq!(
        listens_of(&store, "alice").await,
        [("", "follow"), ("s1", "a"), ("s3", "d")].map(|(s, t)| (s.to_owned(), t.to_owned()))
    );
    drop(store);

    // A version 6 file (no topic_listens table, nor the topic logs and jobs of versions 8 and 9) is
    // upgraded in place.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE topic_listens; DROP TABLE topic_log; DROP TABLE topic_heads; DROP TABLE jobs; DROP TABLE push_subscriptions; DROP TABLE push_outbox;
         DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(listens_of(&store, "alice").await, []);
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    store.listen(&user("alice"), None, &topics(&["again"]), bounds, 5_000).await.unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM topic_listens", [], |row| row.get(0)).unwrap();
    assert_eq!(rows, 1);
}

/// Who listens to a topic is a range of `topic_listens_by_topic` from where the last page ended
/// (no scan, no sort), and a user's listens, a scope's topics and sessions are ranges of the
/// primary key: what `EXPLAIN QUERY PLAN` says. Fails if a page sorted the topic's listeners or
/// a user's listens were read by scanning the table.
#[test]
fn listen_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000)
         INSERT INTO topic_listens (user, session, topic, listened_at)
             SELECT 'u' || (n % 100), CASE WHEN n % 3 = 0 THEN '' ELSE 's' || (n % 7) END, 't' || (n % 50), n
             FROM s WHERE true ON CONFLICT DO NOTHING;
         ANALYZE;",
    )
    .unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    let check = |what: &str, sql: &str, expected: &str| {
        let plan = plan(sql);
        assert!(plan.contains(expected), "{what}: {plan}");
        assert!(!plan.contains("SCAN "), "{what} scans: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{what} sorts: {plan}");
    };
    check(
        "topic listeners",
        &TOPIC_LISTENERS_SQL
            .replace("?1", "'t7'")
            .replace("?2", "'u3'")
            .replace("?3", "'s1'")
            .replace("?4", "10"),
        "COVERING INDEX topic_listens_by_topic (topic=? AND (user,session)>(?,?))",
    );
    check(
        "listens",
        "SELECT session, topic FROM topic_listens WHERE user = 'u3' ORDER BY session, topic",
        "PRIMARY KEY (user=?)",
    );
    check(
        "a scope's topics",
        "SELECT topic FROM topic_listens WHERE user = 'u3' AND session = 's1' ORDER BY topic",
        "PRIMARY KEY (user=? AND session=?)",
    );
    check(
        "sessions",
        "SELECT session, MAX(listened_at) FROM topic_listens WHERE user = 'u3' AND session > '' GROUP BY session",
        "PRIMARY KEY (user=? AND session>?)",
    );
}

/// A topic event of `name` whose data is `{"n": n}`.
fn topic_event(name: &str, n: u64, created_at_ms: i64) -> herald_core::NewTopicEvent {
    herald_core::NewTopicEvent {
        topic: Topic::new(name).unwrap(),
        kind: Arc::from("t"),
        data: Arc::from(RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap()),
        created_at_ms,
        except_user: Some(user("alice")),
        except_client: Some(ClientId::new("c").unwrap()),
    }
}

fn tseq_of(appended: herald_core::TopicAppended) -> Seq {
    match appended {
        herald_core::TopicAppended::Stored(event) => event.tseq.unwrap(),
        herald_core::TopicAppended::Duplicate(receipt) => panic!("unexpected duplicate {receipt:?}"),
    }
}

/// Topic logs, their heads (`pruned_through` too) and their idempotency keys survive reopening:
/// tseqs go on from the last one, also for a topic that retention emptied; and a version 7 file
/// gains the tables in place (schema version 8), keeping its logs. Fails if the heads were kept
/// in memory or derived from the events left (the emptied topic would start again at 1), or if
/// the upgrade to version 8 were missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_logs_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let retention = Retention { topic_max_events: 2, ..Retention::default() };
    let (room, emptied) = (Topic::new("room").unwrap(), Topic::new("emptied").unwrap());
    let written = {
        let store = SqliteStore::open(&path, retention).unwrap();
        for n in 1..=3 {
            assert_eq!(tseq_of(store.append_topic(topic_event("room", n, now_ms()), None).await.unwrap()), n);
        }
        tseq_of(store.append_topic(topic_event("emptied", 1, 1_000), Some("k")).await.unwrap());
        assert_eq!(store.prune(now_ms()).await.unwrap().topic_events, 1);
        store.read_topic_after(&room, 0, 10).await.unwrap()
    };
    let store = SqliteStore::open(&path, retention).unwrap();
    let read = store.read_topic_after(&room, 0, 10).await.unwrap();
    assert_eq!(read.head, herald_core::TopicHead { last_tseq: 3, pruned_through: 1 });
    assert_eq!(read.head, written.head);
    let json =
        |events: &[Arc<herald_core::TopicEvent>]| events.iter().map(|e| e.json().clone()).collect::<Vec<_>>();
    assert_eq!(json(&read.events), json(&written.events));
    assert_eq!(read.events[0].except_user, Some(user("alice")));
    assert_eq!(read.events[0].except_client, Some(ClientId::new("c").unwrap()));
    let (heads, _) = store.topic_heads(std::slice::from_ref(&emptied)).await.unwrap();
    assert_eq!(heads, [herald_core::TopicHead { last_tseq: 1, pruned_through: 1 }]);
    match store.append_topic(topic_event("emptied", 9, now_ms()), Some("k")).await.unwrap() {
        herald_core::TopicAppended::Duplicate(receipt) => {
            assert_eq!(receipt.topic, Some(herald_core::TopicReceipt { topic: emptied.clone(), tseq: 1 }));
        }
        herald_core::TopicAppended::Stored(_) => panic!("the idempotency key was forgotten"),
    }
    assert_eq!(tseq_of(store.append_topic(topic_event("emptied", 2, now_ms()), None).await.unwrap()), 2);
    assert_eq!(tseq_of(store.append_topic(topic_event("room", 4, now_ms()), None).await.unwrap()), 4);
    store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
    drop(store);

    // A version 7 file (no topic tables, no jobs) is upgraded in place.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE topic_log; DROP TABLE topic_heads; DROP TABLE jobs; DROP TABLE push_subscriptions; DROP TABLE push_outbox;
         DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 7;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, retention).unwrap();
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    let (heads, _) = store.topic_heads(std::slice::from_ref(&room)).await.unwrap();
    assert_eq!(heads, [herald_core::TopicHead::default()]);
    assert_eq!(tseq_of(store.append_topic(topic_event("room", 1, now_ms()), None).await.unwrap()), 1);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(count_rows(&path, "topic_log"), 1);
}

/// A page of a topic is a range of `topic_log`'s primary key (no scan, no sort), and retention
/// by age finds expired events through `topic_log_by_created_at`: what `EXPLAIN QUERY PLAN`
/// says. Fails if a replay scanned or sorted the table.
#[test]
fn topic_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000)
         INSERT INTO topic_log (topic, tseq, type, data, created_at)
             SELECT 't' || (n % 50), n, 'x', '{}', n FROM s;
         ANALYZE;",
    )
    .unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    let page =
        plan(&super::reads::TOPIC_PAGE_SQL.replace("?1", "'t7'").replace("?2", "100").replace("?3", "10"));
    assert!(page.contains("PRIMARY KEY (topic=? AND tseq>?)"), "{page}");
    assert!(!page.contains("SCAN ") && !page.contains("TEMP B-TREE"), "{page}");
    let expired = plan("SELECT topic, tseq FROM topic_log WHERE created_at < 500 LIMIT 10");
    assert!(expired.contains("topic_log_by_created_at"), "{expired}");
}

/// A fan-out job of topic `post:{id}`, running, created at `created_at_ms`.
fn fanout_job(id: &str, created_at_ms: i64) -> herald_core::FanoutJob {
    herald_core::FanoutJob {
        id: id.to_owned(),
        topic: Topic::new(format!("post:{id}")).unwrap(),
        kind: Arc::from("t"),
        data: Arc::from(RawValue::from_string(r#"{"k": [1, 2.50]}"#.to_owned()).unwrap()),
        created_at_ms,
        except_user: Some(user("alice")),
        except_client: Some(ClientId::new("c").unwrap()),
        cursor: None,
        stored: 0,
        finished_at_ms: None,
    }
}

/// Fan-out jobs survive reopening: a running job is among `unfinished_jobs` again with its
/// cursor and count (what `Notifier::resume_jobs` reads at the next start), a finished one is
/// still answered by id and still forgotten by `prune` once past the window; and a version 8
/// file gains the `jobs` table in place (schema version 9), keeping its logs. Fails if the jobs
/// were kept in memory, if the upgrade to version 9 were missing, or if a reopened store's
/// `unfinished_jobs` read another column than the one `save_job` wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let now = now_ms();
    let running =
        herald_core::FanoutJob { cursor: Some(user("m")), stored: 1_000, ..fanout_job("run", now - 10) };
    let finished = herald_core::FanoutJob {
        stored: 2_500,
        finished_at_ms: Some(now - 5),
        cursor: Some(user("z")),
        ..fanout_job("done", now - 20)
    };
    {
        let store = SqliteStore::open(&path, Retention::default()).unwrap();
        store.save_job(&fanout_job("run", now - 10)).await.unwrap();
        store.save_job(&running).await.unwrap();
        store.save_job(&finished).await.unwrap();
    }
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let unfinished = store.unfinished_jobs(16).await.unwrap();
    assert_eq!(unfinished.len(), 1, "{unfinished:?}");
    let read = &unfinished[0];
    assert_eq!((read.id.as_str(), read.cursor.clone(), read.stored), ("run", Some(user("m")), 1_000));
    assert_eq!(read.data.get(), r#"{"k": [1, 2.50]}"#);
    assert_eq!(read.except_client, Some(ClientId::new("c").unwrap()));
    let done = store.job("done").await.unwrap().expect("the finished job is kept");
    assert_eq!((done.finished_at_ms, done.stored, done.cursor), (Some(now - 5), 2_500, Some(user("z"))));
    assert_eq!(store.prune(now + 25 * 3_600_000).await.unwrap().jobs, 1);
    assert!(store.job("done").await.unwrap().is_none());
    store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
    drop(store);
    assert_eq!(count_rows(&path, "jobs"), 1);

    // A version 8 file (no jobs table) is upgraded in place.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE jobs; DROP TABLE push_subscriptions; DROP TABLE push_outbox;
         DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    assert!(store.unfinished_jobs(16).await.unwrap().is_empty());
    store.save_job(&running).await.unwrap();
    assert_eq!(store.job("run").await.unwrap().expect("saved after the upgrade").stored, 1_000);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(count_rows(&path, "jobs"), 1);
}

/// A version 9 file (no push tables) is upgraded in place: its logs are kept, and push
/// subscriptions and the outbox are kept across a reopen afterwards. Fails if version 10's
/// migration is not run on an older file, or does not make both tables.
#[tokio::test]
async fn a_version_9_file_gains_web_push() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE push_subscriptions; DROP TABLE push_outbox; DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 9;")
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    let subscription = herald_core::PushSubscription {
        id: herald_core::push_subscription_id("https://push.example/1"),
        user: user("alice"),
        session: SessionId::new("s1").unwrap(),
        endpoint: "https://push.example/1".to_owned(),
        p256dh: "k".to_owned(),
        auth: "a".to_owned(),
        created_at_ms: 1,
    };
    store.push_subscribe(&subscription, herald_core::PushBounds::default()).await.unwrap();
    let delivery = herald_core::PushDelivery {
        id: "p/1".to_owned(),
        subscription: subscription.id.clone(),
        user: user("alice"),
        unless_live: None,
        payload: "{}".to_owned(),
        ttl_secs: 1,
        urgency: herald_core::PushUrgency::Normal,
        topic: None,
        due_at_ms: 5,
        attempts: 0,
    };
    store.push_enqueue(std::slice::from_ref(&delivery)).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.push_subscriptions(&user("alice")).await.unwrap(), [subscription]);
    let claimed = store.push_claim(10, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed, [delivery], "a due push survives a reopen");
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

/// A version 10 file (no presence tables) gains them in place, keeping its logs; presence is
/// recorded afterwards and survives reopening (what a restart after `kill -9` releases). Fails
/// if the upgrade to version 11 were missing, or presence were not kept in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_reopening_and_a_version_10_file_gains_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE presence_online; DROP TABLE presence_seqs; DROP TABLE presence_nodes; DROP TABLE push_pending; PRAGMA user_version = 10;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    let change = herald_core::PresenceChange {
        user: user("alice"),
        session: herald_core::SessionId::new("s").unwrap(),
        online: Some(true),
        clients: Vec::new(),
        at_ms: 1,
    };
    assert_eq!(store.record_presence("n", &change).await.unwrap().len(), 2);
    drop(store);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let released = store.release_presence("n", 2, 10).await.unwrap().expect("kept in the file");
    let seqs: Vec<u64> = released.iter().map(|e| e.user_seq).collect();
    assert_eq!(seqs, [3, 4], "session.offline and user.offline, numbered on");
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

/// A version 11 file (no push markers) gains them in place, keeping its subscriptions and its
/// logs; an append with a push request then keeps a marker, which survives a reopen and is
/// claimed by a sender. Fails if the upgrade to version 12 were missing or made no table.
#[tokio::test]
async fn a_version_11_file_gains_push_markers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    store.append(vec![entry("alice", 1, now_ms())], None).await.unwrap();
    let subscription = herald_core::PushSubscription {
        id: herald_core::push_subscription_id("https://push.example/1"),
        user: user("alice"),
        session: SessionId::new("s1").unwrap(),
        endpoint: "https://push.example/1".to_owned(),
        p256dh: "k".to_owned(),
        auth: "a".to_owned(),
        created_at_ms: 1,
    };
    store.push_subscribe(&subscription, herald_core::PushBounds::default()).await.unwrap();
    drop(store);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE push_pending; PRAGMA user_version = 11;").unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    assert_eq!(store.head(&user("alice")).await.unwrap().last_seq, 1, "the logs are kept");
    let request = Arc::new(herald_core::PushRequest {
        policy: herald_core::PushPolicy::Always,
        payload: None,
        ttl_secs: 60,
        urgency: herald_core::PushUrgency::Normal,
        topic: "t".to_owned(),
        due_at_ms: 5,
        expand_by_ms: 7,
    });
    let pushed = NewNotification { push: Some(request), ..entry("alice", 2, now_ms()) };
    let Appended::Stored { push_pending, .. } = store.append(vec![pushed], None).await.unwrap() else {
        panic!("stored")
    };
    assert_eq!(push_pending, [herald_core::PushMarker { user: user("alice"), seq: 2 }]);
    drop(store);
    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let claimed = store.push_claim_pending(10, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1, "the marker is kept in the file");
    assert_eq!(claimed[0].marker.seq, 2);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!((version, SCHEMA_VERSION), (12, 12));
}

/// `unfinished_jobs` reads the first entries of the partial index `jobs_unfinished` (no scan of
/// the finished jobs, no sort), a job is found by its primary key, and retention finds the
/// finished jobs past the window through `jobs_by_finished_at`: what `EXPLAIN QUERY PLAN` says.
/// Fails if the startup query scanned or sorted the table.
#[test]
fn job_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000)
         INSERT INTO jobs (id, created_at, finished_at, job)
             SELECT 'j' || n, n, CASE WHEN n % 100 = 0 THEN NULL ELSE n + 10 END, '{}' FROM s;
         ANALYZE;",
    )
    .unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    let unfinished = plan(&super::reads::UNFINISHED_JOBS_SQL.replace("?1", "16"));
    assert!(unfinished.contains("jobs_unfinished"), "{unfinished}");
    assert!(!unfinished.contains("TEMP B-TREE"), "{unfinished}");
    let by_id = plan("SELECT job FROM jobs WHERE id = 'j7'");
    assert!(by_id.contains("USING INDEX sqlite_autoindex_jobs_1 (id=?)"), "{by_id}");
    let expired = plan("SELECT rowid FROM jobs WHERE finished_at < 500 LIMIT 10");
    assert!(expired.contains("jobs_by_finished_at"), "{expired}");
}

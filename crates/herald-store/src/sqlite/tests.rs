//! SQLite-only tests, on top of the shared conformance suite: persistence across reopening and
//! `kill -9`, group commit with a failing request in the batch, chunked pruning, schema version.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;

use super::*;

/// A store in its own temporary directory, deleted after the store is closed.
struct TempStore {
    // Field order matters: the store (and its writer thread) goes before the directory.
    store: SqliteStore,
    _dir: TempDir,
}

#[async_trait]
impl Store for TempStore {
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
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        self.store.prune(now_ms).await
    }
}

async fn make(retention: Retention) -> Arc<dyn Store> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("herald.db"), retention).expect("open");
    Arc::new(TempStore { store, _dir: dir })
}

crate::conformance_tests!(make);

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
    }
}

fn seqs(appended: &Appended) -> Vec<Seq> {
    match appended {
        Appended::Stored(notifications) => notifications.iter().map(|n| n.seq.unwrap()).collect(),
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
        let completed =
            Receipt { notifications: vec![ReceiptEntry { user: user("alice"), seq: 1 }], delivered: 5 };
        store.complete_receipt("k", &completed).await.unwrap();
        let written = store.read_after(&user("alice"), 0, 10).await.unwrap();
        (written, completed)
        // The store is dropped here: its writer thread stops and every connection closes.
    };

    let store = SqliteStore::open(&path, Retention::default()).unwrap();
    let read = store.read_after(&user("alice"), 0, 10).await.unwrap();
    assert_eq!(read.head, LogHead { last_seq: 2, pruned_through: 0 });
    assert_eq!(read.head, written.head);
    let json = |page: &LogPage| page.notifications.iter().map(|n| n.json().clone()).collect::<Vec<_>>();
    assert_eq!(json(&read), json(&written));
    assert_eq!(read.notifications[1].audience, written.notifications[1].audience);
    assert_eq!(store.head(&user("bob")).await.unwrap().last_seq, 1);
    match store.append(vec![entry("alice", 9, 3_000)], Some("k")).await.unwrap() {
        Appended::Duplicate(receipt) => assert_eq!(receipt, completed),
        Appended::Stored(_) => panic!("the idempotency key was forgotten"),
    }
    assert_eq!(seqs(&store.append(vec![entry("alice", 3, 3_000)], None).await.unwrap()), [3]);
}

/// Holds the write lock from another connection so that requests pile up in the queue, then
/// checks that they are committed together, and that the one request that fails (its seq
/// collides with a row planted behind the store's back) fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_isolates_a_failing_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = Arc::new(SqliteStore::open(&path, Retention::default()).unwrap());
    store.append(vec![entry("alice", 0, 0)], None).await.unwrap();
    assert_eq!(store.writer_stats(), WriterStats { requests: 1, batches: 1, queued: 0 });

    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    blocker
        .execute(
            "INSERT INTO notifications (user, seq, type, data, created_at) VALUES ('x', 1, 't', '{}', 0)",
            [],
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

    let error = failing.await.unwrap().expect_err("the colliding append fails");
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
    assert_eq!(store.head(&user("x")).await.unwrap(), LogHead::default(), "the failed request left no trace");
    assert_eq!(store.head(&user("alice")).await.unwrap(), LogHead { last_seq: 150, pruned_through: 0 });
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
        assert_eq!(page.head, LogHead { last_seq: per_user + 1, pruned_through: per_user });
        assert_eq!(page.notifications.len(), 1);
    }
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    drop(SqliteStore::open(&path, Retention::default()).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let error = SqliteStore::open(&path, Retention::default()).expect_err("newer schema");
    assert!(error.to_string().contains("schema version 2"), "{error}");
}

#[test]
fn refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let error = SqliteStore::open(&path, Retention::default()).expect_err("not a database");
    assert!(matches!(error, StoreError::Unavailable(_) | StoreError::Corrupt(_)), "{error:?}");
}

/// Set in the child process of [`kill_9_loses_no_acknowledged_append`]: its database path.
const CRASH_CHILD_ENV: &str = "HERALD_STORE_CRASH_CHILD_DB";
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
        let store = Arc::new(SqliteStore::open(Path::new(&path), crash_retention()).unwrap());
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
/// saw acknowledged is there, and each user's log is gap-free.
#[test]
fn kill_9_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
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

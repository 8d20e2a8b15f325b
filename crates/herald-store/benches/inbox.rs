//! Inbox benchmark: counts are O(1) and pages stay fast as one user's log grows to 100,000
//! notifications.
//!
//! ```text
//! cargo bench -p herald-store --bench inbox
//! ```
//!
//! For each store (SQLite on a temporary file, memory) and each size (1,000, 10,000, 100,000
//! notifications of one user, with a mix of states: every 3rd seen, every 5th read, every 11th
//! archived, 7 types), it times `inbox_counts`, the first page (20) of each status, a page half
//! way down the log (`before` = N/2), a page filtered by type, and one mark. For contrast it also
//! times what counting by scanning would cost (SQLite `COUNT(*)` of the unread ones), and the
//! worst case of a page (the only unread notification is the oldest: the page walks the whole
//! log, or all of it below `before`). Without
//! `--bench` (as `cargo test --benches` runs it) it only runs a quick pass at 1,000.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, InboxQuery, InboxStatus, Mark, NewNotification, Retention, Selection, Store, UserId,
};
use herald_store::{MemoryStore, SqliteStore};
use serde_json::value::RawValue;

const USER: &str = "big";
const TYPES: u64 = 7;

fn retention() -> Retention {
    Retention { max_per_user: u64::MAX, ..Retention::default() }
}

fn user() -> UserId {
    UserId::new(USER).unwrap()
}

fn new_notification(i: u64) -> NewNotification {
    NewNotification {
        user: user(),
        kind: Arc::from(format!("t{}", i % TYPES)),
        data: Arc::from(RawValue::from_string(r#"{"text":"a new message"}"#.into()).unwrap()),
        created_at_ms: now_ms(),
        audience: Audience::user(),
        push: None,
    }
}

/// Appends notifications `from..=to` (the `i`-th has type `t{i % 7}`) in batches of 1,000, then
/// gives them the mix of states through the store's own marks.
async fn fill(store: &dyn Store, from: u64, to: u64) {
    let mut n = from;
    while n <= to {
        let end = (n + 999).min(to);
        let Appended::Stored { notifications, .. } =
            store.append((n..=end).map(new_notification).collect(), None).await.unwrap()
        else {
            unreachable!("no idempotency key")
        };
        let seqs: Vec<(u64, u64)> = (n..=end).zip(notifications.iter().map(|n| n.seq.unwrap())).collect();
        for (every, mark) in [(3, Mark::Seen), (5, Mark::Read), (11, Mark::Archived)] {
            let marked = seqs.iter().filter(|(i, _)| i % every == 0).map(|(_, seq)| *seq).collect();
            store.inbox_mark(&user(), &Selection::Seqs(marked), mark, now_ms()).await.unwrap();
        }
        n = end + 1;
    }
}

/// Median and 99th percentile of `iterations` runs of `op`.
async fn time(iterations: usize, mut op: impl AsyncFnMut(usize)) -> (Duration, Duration) {
    for i in 0..iterations.min(50) {
        op(i).await; // warm-up: caches, prepared statements
    }
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let start = Instant::now();
        op(i).await;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

struct Row {
    store: &'static str,
    size: u64,
    what: String,
    median: Duration,
    p99: Duration,
}

async fn measure(store: &dyn Store, name: &'static str, size: u64, iterations: usize, rows: &mut Vec<Row>) {
    let u = user();
    let mut push = |what: &str, (median, p99): (Duration, Duration)| {
        rows.push(Row { store: name, size, what: what.to_owned(), median, p99 });
    };
    let counts = store.inbox_counts(&u).await.unwrap();
    assert_eq!(counts.total + counts.archived, size, "the log holds {size}");
    push(
        "counts",
        time(iterations, async |_| {
            std::hint::black_box(store.inbox_counts(&u).await.unwrap());
        })
        .await,
    );
    for status in InboxStatus::ALL {
        let query = InboxQuery { status, kind: None, before: None, limit: 20 };
        let t = time(iterations, async |_| {
            assert!(!store.inbox_list(&u, &query).await.unwrap().items.is_empty())
        })
        .await;
        push(&format!("page of 20, {}", status.as_str()), t);
    }
    let deep = InboxQuery { status: InboxStatus::Unread, kind: None, before: Some(size / 2), limit: 20 };
    push(
        "page of 20, unread, before N/2",
        time(iterations, async |_| drop(store.inbox_list(&u, &deep).await.unwrap())).await,
    );
    let by_type =
        InboxQuery { status: InboxStatus::Unread, kind: Some("t3".into()), before: None, limit: 20 };
    push(
        "page of 20, unread, type t3",
        time(iterations, async |_| drop(store.inbox_list(&u, &by_type).await.unwrap())).await,
    );
    // Toggling keeps the mix: read then unread, one seq in the middle of the log.
    let seq = store.inbox_list(&u, &deep).await.unwrap().items[0].seq();
    push(
        "mark 1 seq (read / unread)",
        time(iterations, async |i| {
            let mark = if i % 2 == 0 { Mark::Read } else { Mark::Unread };
            store.inbox_mark(&u, &Selection::Seqs(vec![seq]), mark, now_ms()).await.unwrap();
        })
        .await,
    );
    // One more notification, with its index entries and counts (then deleted again, so that the
    // log keeps its size: seqs go on).
    let mut appended = Vec::new();
    let t = time(iterations, async |i| {
        let Appended::Stored { notifications, .. } =
            store.append(vec![new_notification(i as u64)], None).await.unwrap()
        else {
            unreachable!("no idempotency key")
        };
        appended.push(notifications[0].seq.unwrap());
    })
    .await;
    push("append 1", t);
    for seqs in appended.chunks(1_000) {
        store.inbox_delete(&u, &Selection::Seqs(seqs.to_vec())).await.unwrap();
    }
}

/// What counting by scanning costs: `COUNT(*)` of the user's unread notifications.
fn scan_count(path: &std::path::Path, size: u64, iterations: usize, rows: &mut Vec<Row>) {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT COUNT(*) FROM notifications
             WHERE user = ?1 AND read_at IS NULL AND archived_at IS NULL",
        )
        .unwrap();
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            let _: i64 = stmt.query_row([USER], |row| row.get(0)).unwrap();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    rows.push(Row {
        store: "sqlite",
        size,
        what: "(for contrast) COUNT(*) unread by index scan".into(),
        median: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    });
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if full { &[1_000, 10_000, 100_000] } else { &[1_000] };
    let iterations = if full { 2_000 } else { 50 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.db");
        let sqlite = SqliteStore::open(&path, retention()).unwrap();
        let memory = MemoryStore::new(retention());
        let mut filled = 0;
        for &size in sizes {
            let start = Instant::now();
            fill(&sqlite, filled + 1, size).await;
            let sqlite_fill = start.elapsed();
            fill(&memory, filled + 1, size).await;
            eprintln!("filled to {size} (SQLite: {sqlite_fill:.2?} to append and mark {})", size - filled);
            filled = size;
            measure(&sqlite, "sqlite", size, iterations, &mut rows).await;
            scan_count(&path, size, iterations.min(200), &mut rows);
            measure(&memory, "memory", size, iterations, &mut rows).await;
        }
        // A whole "mark all read" at the largest size, once (it touches every unread row).
        let u = user();
        for (name, store) in [("sqlite", &sqlite as &dyn Store), ("memory", &memory as &dyn Store)] {
            let start = Instant::now();
            let change =
                store.inbox_mark(&u, &Selection::AllUpTo(filled), Mark::Read, now_ms()).await.unwrap();
            let took = start.elapsed();
            rows.push(Row {
                store: name,
                size: filled,
                what: format!("mark all read (once; {} changed)", change.seqs.len()),
                median: took,
                p99: took,
            });
        }
        // The worst case of a page of unread ones: the only unread notification is the oldest,
        // so the page walks the whole log (or, with `before`, all of it below that).
        for (name, store) in [("sqlite", &sqlite as &dyn Store), ("memory", &memory as &dyn Store)] {
            let last = store.head(&u).await.unwrap().last_seq;
            store.inbox_mark(&u, &Selection::AllUpTo(last), Mark::Read, now_ms()).await.unwrap();
            store.inbox_mark(&u, &Selection::Seqs(vec![1]), Mark::Unread, now_ms()).await.unwrap();
            let mut befores = vec![None];
            befores.extend(sizes.iter().filter(|&&size| size < filled).map(|size| Some(size + 1)));
            for before in befores {
                let query = InboxQuery { status: InboxStatus::Unread, kind: None, before, limit: 20 };
                let (median, p99) = time(iterations.min(200), async |_| {
                    assert_eq!(store.inbox_list(&u, &query).await.unwrap().items.len(), 1)
                })
                .await;
                rows.push(Row {
                    store: name,
                    size: before.map_or(filled, |b| b - 1),
                    what: "page of 20, unread, the only unread one is the oldest (worst case)".into(),
                    median,
                    p99,
                });
            }
        }
    });

    println!();
    println!("| store | notifications | operation | median µs | p99 µs |");
    println!("| --- | ---: | --- | ---: | ---: |");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.store,
            row.size,
            row.what,
            micros(row.median),
            micros(row.p99)
        );
    }
}

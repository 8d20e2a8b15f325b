//! The test suite every [`Store`] must pass: the contract of `herald_core::store`, checked the
//! same way for every implementation.
//!
//! Compiled for this crate's tests and, with the `conformance` feature, for other crates: a new
//! store (PostgreSQL, later) runs the very same cases with
//! `herald_store::conformance_tests!(make_store);` in a test module, where
//! `async fn make_store(retention: Retention) -> Arc<dyn Store>` returns a fresh, empty store
//! (one `#[tokio::test]` per case), or with [`run_all`] in one test.
//!
//! The cases use the real clock only where the contract does (idempotency windows): they never
//! sleep for longer than a fraction of a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, ClientId, LogHead, NewNotification, Notification, Receipt, ReceiptEntry, Retention,
    SessionId, Store, UserId,
};
use serde_json::value::RawValue;

/// Runs every case in turn against fresh stores made by `make`.
pub async fn run_all(make: impl AsyncFn(Retention) -> Arc<dyn Store>) {
    seqs_count_from_one_per_user(&make).await;
    concurrent_appends_are_gapless(&make).await;
    read_after_pages_with_limit(&make).await;
    unknown_user_has_empty_head(&make).await;
    max_per_user_prunes_the_oldest(&make).await;
    age_prune_raises_pruned_through(&make).await;
    age_prune_removes_a_prefix(&make).await;
    duplicate_key_returns_first_receipt(&make).await;
    completed_receipt_is_returned_to_duplicates(&make).await;
    ephemeral_publish_records_its_key(&make).await;
    expired_key_is_accepted_again(&make).await;
    prune_forgets_old_keys(&make).await;
    concurrent_appends_with_one_key_store_once(&make).await;
    audience_round_trips(&make).await;
    multi_user_append_is_one_receipt(&make).await;
}

/// One `#[tokio::test]` per case of the suite, each with a fresh store from `$make`, an
/// `async fn(Retention) -> Arc<dyn Store>` in scope. The caller needs `tokio` (macros, rt-multi-thread).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(
            @cases $make;
            seqs_count_from_one_per_user,
            concurrent_appends_are_gapless,
            read_after_pages_with_limit,
            unknown_user_has_empty_head,
            max_per_user_prunes_the_oldest,
            age_prune_raises_pruned_through,
            age_prune_removes_a_prefix,
            duplicate_key_returns_first_receipt,
            completed_receipt_is_returned_to_duplicates,
            ephemeral_publish_records_its_key,
            expired_key_is_accepted_again,
            prune_forgets_old_keys,
            concurrent_appends_with_one_key_store_once,
            audience_round_trips,
            multi_user_append_is_one_receipt,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case(&$make).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn user(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

fn data(json: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(json.to_owned()).expect("valid JSON"))
}

/// A notification for `user` whose data is `{"n": n}`, created now.
fn entry(user_id: &str, n: u64) -> NewNotification {
    entry_at(user_id, n, now_ms())
}

fn entry_at(user_id: &str, n: u64, created_at_ms: i64) -> NewNotification {
    NewNotification {
        user: user(user_id),
        kind: Arc::from("test.note"),
        data: data(&format!(r#"{{"n":{n}}}"#)),
        created_at_ms,
        audience: Audience::user(),
    }
}

fn stored(appended: Appended) -> Vec<Arc<Notification>> {
    match appended {
        Appended::Stored(notifications) => notifications,
        Appended::Duplicate(receipt) => panic!("expected a new append, got a duplicate: {receipt:?}"),
    }
}

fn duplicate(appended: Appended) -> Receipt {
    match appended {
        Appended::Duplicate(receipt) => receipt,
        Appended::Stored(notifications) => panic!("expected a duplicate, got {} new", notifications.len()),
    }
}

fn seqs(notifications: &[Arc<Notification>]) -> Vec<u64> {
    notifications.iter().map(|n| n.seq.expect("stored notifications have a seq")).collect()
}

async fn append(store: &dyn Store, entries: Vec<NewNotification>) -> Vec<Arc<Notification>> {
    stored(store.append(entries, None).await.expect("append"))
}

async fn read_all(store: &dyn Store, user_id: &str) -> Vec<Arc<Notification>> {
    store.read_after(&user(user_id), 0, usize::MAX).await.expect("read_after").notifications
}

fn head(last_seq: u64, pruned_through: u64) -> LogHead {
    LogHead { last_seq, pruned_through }
}

fn receipt(entries: &[(&str, u64)], delivered: u64) -> Receipt {
    Receipt {
        notifications: entries.iter().map(|&(u, seq)| ReceiptEntry { user: user(u), seq }).collect(),
        delivered,
    }
}

const HOUR_MS: i64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// Seqs

/// Seqs are 1, 2, 3, … per user, independent between users, in the order given; what is read
/// back is what was stored, byte for byte.
pub async fn seqs_count_from_one_per_user(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let first = append(&*store, vec![entry("alice", 1), entry("alice", 2), entry("alice", 3)]).await;
    assert_eq!(seqs(&first), [1, 2, 3]);
    assert!(first.iter().all(|n| n.user == user("alice") && n.is_durable()));
    assert_eq!(seqs(&append(&*store, vec![entry("bob", 1), entry("bob", 2)]).await), [1, 2]);
    assert_eq!(seqs(&append(&*store, vec![entry("alice", 4)]).await), [4]);
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(4, 0));
    assert_eq!(store.head(&user("bob")).await.unwrap(), head(2, 0));

    let read = read_all(&*store, "alice").await;
    assert_eq!(seqs(&read), [1, 2, 3, 4]);
    for (written, read) in first.iter().zip(&read) {
        assert_eq!(written.json(), read.json(), "the stored notification reads back identical");
        assert_eq!(&*read.kind, "test.note");
        assert_eq!(read.created_at_ms, written.created_at_ms);
        assert_eq!(read.data.get(), written.data.get());
    }
    assert_eq!(read[3].data.get(), r#"{"n":4}"#);
}

/// 50 tasks × 10 concurrent appends of [alice, bob, alice]: alice gets exactly 1..=1000 and bob
/// 1..=500, no gap, no duplicate, and each call's two alice seqs are consecutive, in its order.
pub async fn concurrent_appends_are_gapless(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    const TASKS: u64 = 50;
    const CALLS: u64 = 10;
    let store = make(Retention::default()).await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for c in 0..CALLS {
                let n = (t * CALLS + c) * 2;
                let got =
                    append(&*store, vec![entry("alice", n), entry("bob", n), entry("alice", n + 1)]).await;
                assert_eq!(got.len(), 3);
                assert_eq!((got[0].user.as_str(), got[1].user.as_str()), ("alice", "bob"));
                let (a0, a1) = (got[0].seq.unwrap(), got[2].seq.unwrap());
                assert_eq!(a1, a0 + 1, "one call's seqs of a user are consecutive, in its order");
                calls.push((n, a0));
            }
            calls
        }));
    }
    let mut seq_of_n = HashMap::new();
    for task in tasks {
        for (n, seq) in task.await.expect("task") {
            seq_of_n.insert(n, seq);
            seq_of_n.insert(n + 1, seq + 1);
        }
    }

    let alice = read_all(&*store, "alice").await;
    assert_eq!(seqs(&alice), (1..=TASKS * CALLS * 2).collect::<Vec<_>>());
    for notification in &alice {
        let n: u64 = notification.data.get()[5..notification.data.get().len() - 1].parse().unwrap();
        assert_eq!(seq_of_n[&n], notification.seq.unwrap(), "the data stored under a seq is its call's");
    }
    assert_eq!(seqs(&read_all(&*store, "bob").await), (1..=TASKS * CALLS).collect::<Vec<_>>());
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(TASKS * CALLS * 2, 0));
}

/// `read_after` returns at most `limit`, oldest first, strictly after `after`, with the head.
pub async fn read_after_pages_with_limit(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=25).map(|n| entry("alice", n)).collect()).await;
    append(&*store, vec![entry("bob", 1)]).await;
    let alice = user("alice");

    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = store.read_after(&alice, after, 10).await.unwrap();
        assert_eq!(page.head, head(25, 0));
        let Some(last) = page.notifications.last() else { break };
        after = last.seq.unwrap();
        pages.push(seqs(&page.notifications));
    }
    assert_eq!(pages, [(1..=10).collect::<Vec<_>>(), (11..=20).collect(), (21..=25).collect()]);

    assert_eq!(seqs(&store.read_after(&alice, 7, 3).await.unwrap().notifications), [8, 9, 10]);
    assert!(store.read_after(&alice, 3, 0).await.unwrap().notifications.is_empty());
    let past_the_end = store.read_after(&alice, 99, 10).await.unwrap();
    assert!(past_the_end.notifications.is_empty());
    assert_eq!(past_the_end.head, head(25, 0));
    let huge = store.read_after(&alice, u64::MAX, 10).await.unwrap();
    assert!(huge.notifications.is_empty());
    assert!(read_all(&*store, "bob").await.iter().all(|n| n.user == user("bob")));
}

/// A user never seen has head (0, 0) and an empty log.
pub async fn unknown_user_has_empty_head(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, vec![entry("alice", 1)]).await;
    let nobody = user("nobody");
    assert_eq!(store.head(&nobody).await.unwrap(), LogHead::default());
    let page = store.read_after(&nobody, 0, 100).await.unwrap();
    assert!(page.notifications.is_empty());
    assert_eq!(page.head, LogHead::default());
}

// ---------------------------------------------------------------------------------------------
// Retention

/// With `max_per_user` = 5, the log keeps the newest 5 and `pruned_through` follows, also when
/// one call alone brings more than 5; other users are untouched.
pub async fn max_per_user_prunes_the_oldest(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention { max_per_user: 5, ..Retention::default() }).await;
    append(&*store, (1..=3).map(|n| entry("alice", n)).collect()).await;
    append(&*store, vec![entry("bob", 1)]).await;
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(3, 0));

    append(&*store, (4..=7).map(|n| entry("alice", n)).collect()).await;
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(7, 2));
    assert_eq!(seqs(&read_all(&*store, "alice").await), [3, 4, 5, 6, 7]);

    let eight = append(&*store, (8..=15).map(|n| entry("alice", n)).collect()).await;
    assert_eq!(seqs(&eight), (8..=15).collect::<Vec<_>>(), "the call still gets all its seqs");
    let page = store.read_after(&user("alice"), 0, 100).await.unwrap();
    assert_eq!(page.head, head(15, 10));
    assert_eq!(seqs(&page.notifications), [11, 12, 13, 14, 15]);
    assert_eq!(store.head(&user("bob")).await.unwrap(), head(1, 0));
}

/// Age pruning removes what is older than `max_age`, raises `pruned_through` to the highest
/// seq removed, never lowers it, and seqs go on from `last_seq`.
pub async fn age_prune_raises_pruned_through(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let retention = Retention { max_age: Duration::from_secs(3600), max_per_user: 8, ..Retention::default() };
    let store = make(retention).await;
    let now = now_ms();
    let old = now - 2 * HOUR_MS;
    append(&*store, (1..=3).map(|n| entry_at("alice", n, old)).collect()).await;
    append(&*store, (4..=5).map(|n| entry_at("alice", n, now)).collect()).await;
    append(&*store, (1..=2).map(|n| entry_at("bob", n, old)).collect()).await;
    append(&*store, (1..=2).map(|n| entry_at("carol", n, now)).collect()).await;

    let report = store.prune(now).await.unwrap();
    assert_eq!(report.notifications, 5);
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(5, 3));
    assert_eq!(seqs(&read_all(&*store, "alice").await), [4, 5]);
    assert_eq!(store.head(&user("bob")).await.unwrap(), head(2, 2), "an emptied log keeps its last seq");
    assert!(read_all(&*store, "bob").await.is_empty());
    assert_eq!(store.head(&user("carol")).await.unwrap(), head(2, 0));

    assert_eq!(store.prune(now).await.unwrap().notifications, 0, "pruning again removes nothing");
    assert_eq!(seqs(&append(&*store, vec![entry("bob", 3)]).await), [3]);
    assert_eq!(seqs(&append(&*store, vec![entry("alice", 6)]).await), [6]);

    // max_per_user (8) raised alice to 10 - 8 = 2 < 3 already: pruned_through must not drop.
    append(&*store, (7..=10).map(|n| entry("alice", n)).collect()).await;
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(10, 3));
    assert_eq!(seqs(&read_all(&*store, "alice").await), (4..=10).collect::<Vec<_>>());
}

/// Retention removes a prefix: a notification older than `max_age` takes every lower seq with
/// it, even one stamped later (clocks step back), so a log stays `pruned_through + 1 ..= last_seq`.
pub async fn age_prune_removes_a_prefix(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention { max_age: Duration::from_secs(3600), ..Retention::default() }).await;
    let now = now_ms();
    append(
        &*store,
        vec![
            entry_at("alice", 1, now),
            entry_at("alice", 2, now - 2 * HOUR_MS),
            entry_at("alice", 3, now),
            entry_at("alice", 4, now - 3 * HOUR_MS),
            entry_at("alice", 5, now),
        ],
    )
    .await;
    assert_eq!(store.prune(now).await.unwrap().notifications, 4);
    let page = store.read_after(&user("alice"), 0, 100).await.unwrap();
    assert_eq!(page.head, head(5, 4));
    assert_eq!(seqs(&page.notifications), [5]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency

/// A key used within the window returns the first receipt and stores nothing.
pub async fn duplicate_key_returns_first_receipt(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, vec![entry("alice", 0)]).await;
    let first = stored(store.append(vec![entry("alice", 1), entry("bob", 1)], Some("msg-1")).await.unwrap());
    assert_eq!(seqs(&first), [2, 1]);

    let again = duplicate(store.append(vec![entry("alice", 99)], Some("msg-1")).await.unwrap());
    assert_eq!(again, receipt(&[("alice", 2), ("bob", 1)], 0));
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(2, 0), "a duplicate stores nothing");
    assert_eq!(read_all(&*store, "alice").await.len(), 2);

    let other_key = stored(store.append(vec![entry("alice", 3)], Some("msg-2")).await.unwrap());
    assert_eq!(seqs(&other_key), [3]);
    assert_eq!(seqs(&append(&*store, vec![entry("alice", 4)]).await), [4]);
}

/// After `complete_receipt`, duplicates get the completed receipt; completing an unknown key is
/// not an error.
pub async fn completed_receipt_is_returned_to_duplicates(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    stored(store.append(vec![entry("alice", 1)], Some("k")).await.unwrap());
    let completed = receipt(&[("alice", 1)], 3);
    store.complete_receipt("k", &completed).await.unwrap();
    assert_eq!(duplicate(store.append(vec![entry("alice", 2)], Some("k")).await.unwrap()), completed);
    store.complete_receipt("never-used", &completed).await.unwrap();
    assert!(stored(store.append(vec![], Some("never-used")).await.unwrap()).is_empty());
}

/// An empty append with a key (an ephemeral publish) only records the key.
pub async fn ephemeral_publish_records_its_key(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    assert!(stored(store.append(vec![], Some("eph")).await.unwrap()).is_empty());
    assert_eq!(duplicate(store.append(vec![], Some("eph")).await.unwrap()), Receipt::default());
    store.complete_receipt("eph", &receipt(&[], 2)).await.unwrap();
    assert_eq!(duplicate(store.append(vec![entry("alice", 1)], Some("eph")).await.unwrap()), receipt(&[], 2));
    assert_eq!(store.head(&user("alice")).await.unwrap(), LogHead::default());
    assert!(stored(store.append(vec![], None).await.unwrap()).is_empty());
}

/// A key older than the window is a new publish again.
pub async fn expired_key_is_accepted_again(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store =
        make(Retention { idempotency_window: Duration::from_millis(100), ..Retention::default() }).await;
    assert_eq!(seqs(&stored(store.append(vec![entry("alice", 1)], Some("k")).await.unwrap())), [1]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(seqs(&stored(store.append(vec![entry("alice", 2)], Some("k")).await.unwrap())), [2]);
    // …and the key now stands for the second publish.
    assert_eq!(
        duplicate(store.append(vec![entry("alice", 3)], Some("k")).await.unwrap()),
        receipt(&[("alice", 2)], 0)
    );
}

/// `prune` forgets keys older than the window, and only those.
pub async fn prune_forgets_old_keys(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    store.append(vec![entry("alice", 1)], Some("a")).await.unwrap();
    store.append(vec![], Some("b")).await.unwrap();
    let now = now_ms();
    assert_eq!(store.prune(now).await.unwrap().idempotency_keys, 0);
    assert!(matches!(store.append(vec![], Some("a")).await.unwrap(), Appended::Duplicate(_)));

    let report = store.prune(now + 25 * HOUR_MS).await.unwrap();
    assert_eq!(report.idempotency_keys, 2);
    assert_eq!(report.notifications, 0);
    assert_eq!(read_all(&*store, "alice").await.len(), 1);
}

/// Twenty concurrent appends with one key: exactly one stores, the others get its receipt.
pub async fn concurrent_appends_with_one_key_store_once(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(vec![entry("alice", n)], Some("same")).await.unwrap() })
        })
        .collect();
    let mut stored_once = Vec::new();
    let mut receipts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Appended::Stored(notifications) => stored_once.push(notifications),
            Appended::Duplicate(receipt) => receipts.push(receipt),
        }
    }
    assert_eq!(stored_once.len(), 1, "exactly one append stores");
    assert_eq!(seqs(&stored_once[0]), [1]);
    assert_eq!(receipts.len(), 19);
    assert!(receipts.iter().all(|r| *r == receipt(&[("alice", 1)], 0)));
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(1, 0));
}

// ---------------------------------------------------------------------------------------------
// Contents

/// Every audience (session, client, except_client, each present or not) reads back as written.
pub async fn audience_round_trips(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let session = || Some(SessionId::new("s-1").unwrap());
    let client = |c: &str| Some(ClientId::new(c).unwrap());
    let audiences = [
        Audience::user(),
        Audience { session: session(), ..Audience::default() },
        Audience { client: client("c-1"), ..Audience::default() },
        Audience { except_client: client("c-2"), ..Audience::default() },
        Audience { session: session(), client: None, except_client: client("c-3") },
        Audience { session: session(), client: client("c-4"), except_client: client("c-5") },
    ];
    let entries = audiences
        .iter()
        .enumerate()
        .map(|(n, audience)| NewNotification { audience: audience.clone(), ..entry("alice", n as u64) })
        .collect();
    let written = append(&*store, entries).await;
    let read = read_all(&*store, "alice").await;
    for ((audience, written), read) in audiences.iter().zip(&written).zip(&read) {
        assert_eq!(&written.audience, audience);
        assert_eq!(&read.audience, audience);
    }
    assert_eq!(read.len(), audiences.len());

    // Kinds and data of any shape come back as given, too.
    let odd = NewNotification {
        kind: Arc::from("ünïcode.kind"),
        data: data(r#"[1, "two", {"three": null}, "\u00e9"]"#),
        ..entry("alice", 0)
    };
    let written = append(&*store, vec![odd]).await;
    let read = store.read_after(&user("alice"), written[0].seq.unwrap() - 1, 1).await.unwrap();
    assert_eq!(&*read.notifications[0].kind, "ünïcode.kind");
    assert_eq!(read.notifications[0].data.get(), r#"[1, "two", {"three": null}, "\u00e9"]"#);
    assert_eq!(read.notifications[0].json(), written[0].json());
}

/// One call for several users stores for all of them in the order given, with one receipt.
pub async fn multi_user_append_is_one_receipt(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, vec![entry("bob", 0)]).await;
    let users = ["alice", "bob", "carol"];
    let got =
        stored(store.append(users.iter().map(|u| entry(u, 1)).collect(), Some("fan-out")).await.unwrap());
    let pairs: Vec<_> = got.iter().map(|n| (n.user.as_str().to_owned(), n.seq.unwrap())).collect();
    assert_eq!(pairs, [("alice".to_owned(), 1), ("bob".to_owned(), 2), ("carol".to_owned(), 1)]);
    assert_eq!(
        duplicate(store.append(vec![], Some("fan-out")).await.unwrap()),
        receipt(&[("alice", 1), ("bob", 2), ("carol", 1)], 0)
    );
    for u in users {
        assert_eq!(read_all(&*store, u).await.last().unwrap().data.get(), r#"{"n":1}"#);
    }
}

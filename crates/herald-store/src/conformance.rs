//! The test suite every [`Store`] must pass: the contract of `herald_core::store`, checked the
//! same way for every implementation.
//!
//! Compiled for this crate's tests and, with the `conformance` feature, for other crates: a new
//! store (PostgreSQL, later) runs the very same cases with
//! `herald_store::conformance_tests!(make_store);` in a test module, where
//! `async fn make_store(retention: Retention) -> Arc<dyn Store>` returns a fresh, empty store
//! (one `#[tokio::test]` per case). The macro's list is the one list of cases.
//!
//! The cases use the real clock only where the contract does (idempotency windows): they never
//! sleep for longer than a fraction of a second.
//!
//! One job, hence one file past 800 lines: the cases of the store contract, each a public `async
//! fn` the macro names, and the helpers they share.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, ClientId, EPOCH_BYTES_MAX, FanoutJob, InboxCounts, InboxPage, InboxQuery,
    InboxStatus, ItemState, ListenBounds, LogHead, Mark, NewNotification, NewTopicEvent, Notification,
    PresenceBeat, PresenceChange, PresenceEvent, PresenceKind, PushBounds, PushDelivery, PushExpansion,
    PushMarker, PushPolicy, PushRequest, PushSettle, PushSubscription, PushUrgency, Receipt, ReceiptEntry,
    Retention, Revocation, Revocations, ScopeListens, Selection, Seq, SessionId, Store, StoredListen, Topic,
    TopicAppended, TopicEvent, TopicHead, TopicListener, TopicReceipt, UserId, push_subscription_id,
};
use serde_json::value::RawValue;

/// One `#[tokio::test]` per case of the suite, each with a fresh store from `$make`, an
/// `async fn(Retention) -> Arc<dyn Store>` in scope. The caller needs `tokio` (macros, rt-multi-thread).
///
/// `conformance_tests!(make, unless skip)` runs each case only if `skip()` (a `fn() ->
/// Option<String>`) gives no reason to skip, which it prints: a store that needs a server
/// (PostgreSQL) skips where there is none.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!($make, unless $crate::conformance::never_skip);
    };
    ($make:path, unless $skip:path) => {
        $crate::conformance_tests!(
            @cases $make, $skip;
            seqs_count_from_one_per_user,
            concurrent_appends_are_gapless,
            reads_during_appends_see_a_prefix,
            read_after_pages_with_limit,
            unknown_user_has_empty_head,
            last_seqs_match_the_heads,
            heads_carry_the_store_epoch,
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
            inbox_counts_follow_every_change,
            inbox_marks_are_idempotent,
            inbox_all_up_to,
            inbox_lists_archived_only_when_asked,
            inbox_pages_newest_first_with_before,
            inbox_filters_by_type,
            inbox_missing_seqs_are_not_changed,
            inbox_retention_keeps_counts_exact,
            inbox_deleted_are_not_replayed,
            inbox_concurrent_random_changes_keep_counts_exact,
            revocations_keep_the_latest_close,
            prune_forgets_old_revocations,
            revoked_tokens_are_those_issued_until_the_close,
            listens_at_user_and_session_scope,
            listens_are_sorted_user_scope_first,
            a_listen_over_the_bound_changes_nothing,
            a_listen_of_topics_already_listened_is_never_too_many,
            unlisten_removes_only_what_is_listened,
            a_session_beyond_the_bound_forgets_the_oldest,
            forget_session_listens_keeps_user_scope,
            topic_listeners_pages_by_user_then_session,
            concurrent_listens_stay_within_the_bounds,
            tseqs_count_from_one_per_topic,
            concurrent_topic_appends_are_gapless,
            read_topic_after_pages_and_returns_the_head,
            topic_events_round_trip,
            topic_duplicate_key_returns_the_first_receipt,
            topic_and_user_appends_share_the_key_namespace,
            concurrent_topic_appends_with_one_key_store_once,
            topic_max_events_prunes_the_oldest,
            topic_age_prune_removes_a_prefix,
            tseqs_are_never_reused_after_retention_emptied_a_topic,
            topic_heads_of_unknown_topics_are_zeros_in_order,
            jobs_round_trip_every_field,
            save_job_replaces_the_job_with_its_id,
            unfinished_jobs_are_oldest_first_within_the_limit,
            prune_forgets_finished_jobs_past_the_window,
            push_subscriptions_round_trip_and_replace_by_endpoint,
            push_subscriptions_beyond_the_bounds_forget_the_oldest,
            push_unsubscribe_removes_only_the_users_own,
            push_outbox_enqueues_once_and_claims_what_is_due,
            push_outbox_settle_retries_later_or_removes,
            concurrent_push_claims_never_share_a_delivery,
            an_append_marks_pushes_only_for_users_with_subscriptions,
            push_expand_adds_a_markers_deliveries_once,
            presence_is_online_once_across_nodes,
            presence_heartbeats_find_dead_nodes_and_release_them,
            concurrent_presence_changes_make_one_user_online,
        );
    };
    (@cases $make:path, $skip:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(reason) = $skip() {
                    eprintln!("skipped {}: {reason}", stringify!($case));
                    return;
                }
                $crate::conformance::$case(&$make).await;
            }
        )*
    };
}

/// The `skip` of stores that always run: no reason to skip.
pub fn never_skip() -> Option<String> {
    None
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
        push: None,
    }
}

fn stored(appended: Appended) -> Vec<Arc<Notification>> {
    match appended {
        Appended::Stored { notifications, .. } => notifications,
        Appended::Duplicate(receipt) => panic!("expected a new append, got a duplicate: {receipt:?}"),
    }
}

fn duplicate(appended: Appended) -> Receipt {
    match appended {
        Appended::Duplicate(receipt) => receipt,
        Appended::Stored { notifications, .. } => {
            panic!("expected a duplicate, got {} new", notifications.len())
        }
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

/// A head's seqs, to compare with a [`LogHead`] (whose epoch [`heads_carry_the_store_epoch`]
/// checks).
#[derive(Debug)]
struct Seqs {
    last_seq: u64,
    pruned_through: u64,
}

impl PartialEq<Seqs> for LogHead {
    fn eq(&self, other: &Seqs) -> bool {
        (self.last_seq, self.pruned_through) == (other.last_seq, other.pruned_through)
    }
}

fn head(last_seq: u64, pruned_through: u64) -> Seqs {
    Seqs { last_seq, pruned_through }
}

fn receipt(entries: &[(&str, u64)], delivered: u64) -> Receipt {
    Receipt {
        notifications: entries.iter().map(|&(u, seq)| ReceiptEntry { user: user(u), seq }).collect(),
        topic: None,
        job: None,
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

/// Readers running while a user's log grows (and, in the SQLite store, while appends are staged
/// and settled) always see a prefix of it: `read_after` gap-free from 1 and never past the head
/// that came with it, the first inbox page the newest consecutive seqs with counts that match
/// them, and what each reader sees never shrinks.
pub async fn reads_during_appends_see_a_prefix(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    const APPENDS: u64 = 300;
    let store = make(Retention::default()).await;
    let alice = user("alice");
    /// Appends between two points where the appender waits for every reader to have read
    /// again: reads interleave with appends however the runtime schedules the tasks (a loaded
    /// machine once ran a reader only after the last append).
    const APPENDS_PER_CHECKPOINT: u64 = 50;
    const READERS: usize = 4;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads_done: Arc<[std::sync::atomic::AtomicU64; READERS]> = Arc::new(Default::default());
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (store, alice, done) = (Arc::clone(&store), alice.clone(), Arc::clone(&done));
            let reads_done = Arc::clone(&reads_done);
            tokio::spawn(async move {
                let (mut seen, mut reads) = (0, 0);
                // At least once more after the last append.
                loop {
                    let last_round = done.load(std::sync::atomic::Ordering::Relaxed);
                    reads += 1;
                    if r % 2 == 0 {
                        let page = store.read_after(&alice, 0, 1_000).await.unwrap();
                        let got = seqs(&page.notifications);
                        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "a gap-free prefix");
                        assert!(page.head.last_seq >= got.len() as u64, "nothing past the head");
                        assert!(got.len() as u64 >= seen, "a reader never sees less than before");
                        seen = got.len() as u64;
                    } else {
                        let page = store.inbox_list(&alice, &query(InboxStatus::All, None, 5)).await.unwrap();
                        let newest = page.counts.total;
                        let got: Vec<u64> = page.items.iter().map(|item| item.seq()).collect();
                        let expected: Vec<u64> = (1..=newest).rev().take(5).collect();
                        assert_eq!(got, expected, "the newest, consecutive, as many as the counts say");
                        assert_eq!((page.counts.unread, page.counts.version), (newest, newest));
                        assert!(newest >= seen, "a reader never sees less than before");
                        seen = newest;
                    }
                    reads_done[r].store(reads, std::sync::atomic::Ordering::Release);
                    if last_round {
                        return (reads, seen);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut reads_at_checkpoint = [0u64; READERS];
    for n in 1..=APPENDS {
        append(&*store, vec![entry("alice", n)]).await;
        if n % 7 == 0 {
            tokio::task::yield_now().await;
        }
        if n % APPENDS_PER_CHECKPOINT == 0 && n < APPENDS {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            for (r, at_checkpoint) in reads_at_checkpoint.iter_mut().enumerate() {
                while reads_done[r].load(std::sync::atomic::Ordering::Acquire) <= *at_checkpoint {
                    assert!(tokio::time::Instant::now() < deadline, "reader {r} never read again");
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                *at_checkpoint = reads_done[r].load(std::sync::atomic::Ordering::Acquire);
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for (r, reader) in readers.into_iter().enumerate() {
        let (reads, seen) = reader.await.expect("reader");
        assert!(reads > 1, "reader {r} read while the log grew");
        assert_eq!(seen, APPENDS, "reader {r}'s last read, after the last append, saw it all");
    }
    assert_eq!(seqs(&read_all(&*store, "alice").await), (1..=APPENDS).collect::<Vec<_>>());
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
    assert_eq!(store.head(&nobody).await.unwrap(), head(0, 0));
    let page = store.read_after(&nobody, 0, 100).await.unwrap();
    assert!(page.notifications.is_empty());
    assert_eq!(page.head, head(0, 0));
}

/// Every head and page carries the store's epoch, a printable id of 1 to [`EPOCH_BYTES_MAX`]
/// bytes of `A-Z a-z 0-9 . _ -` (clients send it back in a URL), and appends do not change it.
pub async fn heads_carry_the_store_epoch(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let epoch = store.epoch();
    assert!(!epoch.is_empty() && epoch.len() <= EPOCH_BYTES_MAX, "epoch {epoch:?}");
    assert!(
        epoch.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "epoch {epoch:?} has a character clients would have to escape"
    );
    assert_eq!(store.head(&user("nobody")).await.unwrap().epoch, epoch, "an unknown user's head");
    assert_eq!(store.read_after(&user("nobody"), 0, 10).await.unwrap().head.epoch, epoch);
    append(&*store, vec![entry("alice", 1), entry("alice", 2)]).await;
    assert_eq!(store.head(&user("alice")).await.unwrap().epoch, epoch, "appends keep the epoch");
    assert_eq!(store.read_after(&user("alice"), 0, 1).await.unwrap().head.epoch, epoch);
    assert_eq!(store.epoch(), epoch);
    let other = make(Retention::default()).await;
    assert_ne!(other.epoch(), epoch, "another store (a new database) has another epoch");
}

/// `last_seqs` answers many users at once, in the order asked, 0 for a user never seen.
pub async fn last_seqs_match_the_heads(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, vec![entry("alice", 1), entry("bob", 2)]).await;
    append(&*store, vec![entry("alice", 3)]).await;
    let asked = [user("bob"), user("nobody"), user("alice"), user("bob")];
    assert_eq!(store.last_seqs(&asked).await.unwrap(), vec![1, 0, 2, 1]);
    assert_eq!(store.last_seqs(&[]).await.unwrap(), Vec::<u64>::new());
    let many: Vec<UserId> = (0..1500).map(|i| user(&format!("u{i}"))).collect();
    assert_eq!(store.last_seqs(&many).await.unwrap(), vec![0; 1500]);
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
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(0, 0));
    assert!(stored(store.append(vec![], None).await.unwrap()).is_empty());
}

/// A key older than the window is a new publish again.
pub async fn expired_key_is_accepted_again(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    // The window is long enough that the last append below falls inside it even on a loaded
    // machine (100 ms once did not).
    const WINDOW: Duration = Duration::from_secs(2);
    let store = make(Retention { idempotency_window: WINDOW, ..Retention::default() }).await;
    assert_eq!(seqs(&stored(store.append(vec![entry("alice", 1)], Some("k")).await.unwrap())), [1]);
    tokio::time::sleep(WINDOW + Duration::from_millis(150)).await;
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
            Appended::Stored { notifications, .. } => stored_once.push(notifications),
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

// ---------------------------------------------------------------------------------------------
// The inbox

async fn counts(store: &dyn Store, user_id: &str) -> InboxCounts {
    store.inbox_counts(&user(user_id)).await.expect("inbox_counts")
}

async fn page(store: &dyn Store, user_id: &str, query: InboxQuery) -> InboxPage {
    store.inbox_list(&user(user_id), &query).await.expect("inbox_list")
}

fn query(status: InboxStatus, before: Option<u64>, limit: usize) -> InboxQuery {
    InboxQuery { status, kind: None, before, limit }
}

fn page_seqs(page: &InboxPage) -> Vec<u64> {
    page.items.iter().map(|item| item.seq()).collect()
}

/// Every page of `status`, following `next_before`; the items, newest first. Checks that each
/// page carries the same counts as the first (nothing changes meanwhile).
async fn list_all(store: &dyn Store, user_id: &str, status: InboxStatus) -> Vec<(u64, ItemState)> {
    let mut items = Vec::new();
    let mut before = None;
    let mut first_counts = None;
    loop {
        let page = page(store, user_id, query(status, before, 100)).await;
        assert_eq!(
            *first_counts.get_or_insert(page.counts),
            page.counts,
            "counts are the same on every page"
        );
        items.extend(page.items.iter().map(|item| (item.seq(), item.state)));
        match page.next_before {
            Some(next) => before = Some(next),
            None => return items,
        }
    }
}

/// `[total, unread, unseen, archived]` counted from scratch from the rows (through `inbox_list`),
/// and checked against what each status lists.
async fn recount(store: &dyn Store, user_id: &str) -> [u64; 4] {
    let inbox = list_all(store, user_id, InboxStatus::All).await;
    let archived = list_all(store, user_id, InboxStatus::Archived).await;
    for (_, state) in &inbox {
        assert!(!state.is_archived());
        assert!(state.read_at_ms.is_none() || state.seen_at_ms.is_some(), "read implies seen");
    }
    assert!(archived.iter().all(|(_, state)| state.is_archived()));
    let unread = inbox.iter().filter(|(_, s)| s.read_at_ms.is_none()).count() as u64;
    let unseen = inbox.iter().filter(|(_, s)| s.seen_at_ms.is_none()).count() as u64;
    for (status, expected) in [
        (InboxStatus::Unread, unread),
        (InboxStatus::Unseen, unseen),
        (InboxStatus::Read, inbox.len() as u64 - unread),
    ] {
        let listed = list_all(store, user_id, status).await;
        assert_eq!(listed.len() as u64, expected, "{status:?} lists what it counts");
        assert!(listed.iter().all(|(_, state)| state.is_in(status)));
    }
    let all_stored = read_all(store, user_id).await.len() as u64;
    assert_eq!(
        all_stored,
        inbox.len() as u64 + archived.len() as u64,
        "every stored notification is listed once"
    );
    [inbox.len() as u64, unread, unseen, archived.len() as u64]
}

/// Asserts that `user`'s counts match a recount from scratch; returns them.
async fn assert_exact(store: &dyn Store, user_id: &str) -> InboxCounts {
    let kept = counts(store, user_id).await;
    assert_eq!(
        kept.numbers(),
        recount(store, user_id).await,
        "{user_id}: kept counts vs a recount ({kept:?})"
    );
    kept
}

fn numbers(total: u64, unread: u64, unseen: u64, archived: u64) -> [u64; 4] {
    [total, unread, unseen, archived]
}

async fn mark(store: &dyn Store, user_id: &str, seqs: &[u64], mark: Mark) -> Vec<u64> {
    let change =
        store.inbox_mark(&user(user_id), &Selection::Seqs(seqs.to_vec()), mark, now_ms()).await.unwrap();
    change.seqs
}

/// Counts follow every append, mark, delete, each change counts one more version, the counts a
/// change returns are those read afterwards, and other users are untouched.
pub async fn inbox_counts_follow_every_change(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    assert_eq!(counts(&*store, "alice").await, InboxCounts::default(), "a user never seen counts nothing");
    let Appended::Stored { counts: appended, .. } =
        store.append((1..=5).map(|n| entry("alice", n)).collect(), None).await.unwrap()
    else {
        panic!("a duplicate")
    };
    let after_append = counts(&*store, "alice").await;
    assert_eq!(appended, [(user("alice"), after_append)], "append returns the counts after it");
    assert_eq!(after_append.numbers(), numbers(5, 5, 5, 0));
    append(&*store, vec![entry("bob", 1)]).await;
    let bob = counts(&*store, "bob").await;

    let mut version = after_append.version;
    let mut step = async |expected: [u64; 4]| {
        let kept = assert_exact(&*store, "alice").await;
        assert_eq!(kept.numbers(), expected);
        assert!(kept.version > version, "every change counts a new version");
        version = kept.version;
    };
    assert_eq!(mark(&*store, "alice", &[1, 2], Mark::Read).await, [1, 2]);
    step(numbers(5, 3, 3, 0)).await;
    assert_eq!(mark(&*store, "alice", &[3], Mark::Seen).await, [3]);
    step(numbers(5, 3, 2, 0)).await;
    assert_eq!(mark(&*store, "alice", &[3, 4], Mark::Archived).await, [3, 4]);
    // Archived ones leave the inbox and its badge: 1 (read), 2 (read), 5 (new) are left.
    step(numbers(3, 1, 1, 2)).await;
    let change = store.inbox_delete(&user("alice"), &Selection::Seqs(vec![4, 1])).await.unwrap();
    assert_eq!(change.seqs, [1, 4]);
    assert_eq!(change.counts, counts(&*store, "alice").await, "a change returns the counts after it");
    step(numbers(2, 1, 1, 1)).await;
    assert_eq!(mark(&*store, "alice", &[3], Mark::Unarchived).await, [3]);
    step(numbers(3, 2, 1, 0)).await;
    append(&*store, vec![entry("alice", 6)]).await;
    step(numbers(4, 3, 2, 0)).await;
    assert_eq!(counts(&*store, "bob").await, bob, "other users are untouched");
}

/// Marking is idempotent: read twice changes the counts once (and keeps the first `read_at`),
/// unread after read restores the unread count, and a change that changes nothing is not a new
/// version.
pub async fn inbox_marks_are_idempotent(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=3).map(|n| entry("alice", n)).collect()).await;
    let alice = user("alice");
    let first = store.inbox_mark(&alice, &Selection::Seqs(vec![2]), Mark::Read, 1_000).await.unwrap();
    assert_eq!(first.seqs, [2]);
    assert_eq!(first.counts.numbers(), numbers(3, 2, 2, 0));
    let again = store.inbox_mark(&alice, &Selection::Seqs(vec![2, 2]), Mark::Read, 2_000).await.unwrap();
    assert!(again.seqs.is_empty(), "read twice changes nothing the second time");
    assert_eq!(again.counts, first.counts, "not even the version");
    let state = list_all(&*store, "alice", InboxStatus::Read).await;
    assert_eq!(
        state,
        [(2, ItemState { seen_at_ms: Some(1_000), read_at_ms: Some(1_000), archived_at_ms: None })]
    );
    assert!(mark(&*store, "alice", &[2], Mark::Seen).await.is_empty(), "read implies seen");

    let unread = store.inbox_mark(&alice, &Selection::Seqs(vec![2]), Mark::Unread, 3_000).await.unwrap();
    assert_eq!(unread.seqs, [2]);
    assert_eq!(unread.counts.numbers(), numbers(3, 3, 2, 0), "unread restores the badge; it stays seen");
    assert!(mark(&*store, "alice", &[2], Mark::Unread).await.is_empty());
    assert!(mark(&*store, "alice", &[1, 3], Mark::Unarchived).await.is_empty());
    assert_eq!(mark(&*store, "alice", &[1], Mark::Archived).await, [1]);
    assert!(mark(&*store, "alice", &[1], Mark::Archived).await.is_empty());
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(2, 2, 1, 1));
    // Marking an archived notification read changes it but no count of the inbox.
    let archived_read = store.inbox_mark(&alice, &Selection::Seqs(vec![1]), Mark::Read, 4_000).await.unwrap();
    assert_eq!(archived_read.seqs, [1]);
    assert_eq!(archived_read.counts.numbers(), numbers(2, 2, 1, 1));
    assert!(archived_read.counts.version > unread.counts.version);
    assert_exact(&*store, "alice").await;
}

/// "All up to N" changes every stored notification up to N not yet in that state, and only
/// those; deleting up to N is not retention (no `pruned_through`), and seqs go on.
pub async fn inbox_all_up_to(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=10).map(|n| entry("alice", n)).collect()).await;
    append(&*store, (1..=3).map(|n| entry("bob", n)).collect()).await;
    let alice = user("alice");
    let all = |n: u64| Selection::AllUpTo(n);
    mark(&*store, "alice", &[2], Mark::Read).await;
    let read = store.inbox_mark(&alice, &all(6), Mark::Read, now_ms()).await.unwrap();
    assert_eq!(read.seqs, [1, 3, 4, 5, 6], "2 was read already");
    assert_eq!(read.counts.numbers(), numbers(10, 4, 4, 0));
    assert!(store.inbox_mark(&alice, &all(6), Mark::Read, now_ms()).await.unwrap().seqs.is_empty());
    let seen = store.inbox_mark(&alice, &all(100), Mark::Seen, now_ms()).await.unwrap();
    assert_eq!(seen.seqs, [7, 8, 9, 10]);
    assert_eq!(seen.counts.numbers(), numbers(10, 4, 0, 0));
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(10, 4, 0, 0));

    let deleted = store.inbox_delete(&alice, &all(3)).await.unwrap();
    assert_eq!(deleted.seqs, [1, 2, 3]);
    assert_eq!(deleted.counts.numbers(), numbers(7, 4, 0, 0));
    assert_eq!(store.head(&alice).await.unwrap(), head(10, 0), "a deletion is not retention");
    assert!(store.inbox_delete(&alice, &all(3)).await.unwrap().seqs.is_empty());
    let archived = store.inbox_mark(&alice, &all(5), Mark::Archived, now_ms()).await.unwrap();
    assert_eq!(archived.seqs, [4, 5]);
    assert_eq!(archived.counts.numbers(), numbers(5, 4, 0, 2));
    assert_eq!(seqs(&append(&*store, vec![entry("alice", 11)]).await), [11]);
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(6, 5, 1, 2));
    assert_eq!(assert_exact(&*store, "bob").await.numbers(), numbers(3, 3, 3, 0));
}

/// Archived notifications are listed by `archived` and by no other status.
pub async fn inbox_lists_archived_only_when_asked(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=6).map(|n| entry("alice", n)).collect()).await;
    mark(&*store, "alice", &[2, 5], Mark::Archived).await;
    mark(&*store, "alice", &[3, 5], Mark::Read).await;
    let listed = async |status| page_seqs(&page(&*store, "alice", query(status, None, 100)).await);
    assert_eq!(listed(InboxStatus::All).await, [6, 4, 3, 1]);
    assert_eq!(listed(InboxStatus::Unread).await, [6, 4, 1]);
    assert_eq!(listed(InboxStatus::Unseen).await, [6, 4, 1]);
    assert_eq!(listed(InboxStatus::Read).await, [3]);
    assert_eq!(listed(InboxStatus::Archived).await, [5, 2]);
    let archived = page(&*store, "alice", query(InboxStatus::Archived, None, 100)).await;
    assert!(archived.items[0].state.read_at_ms.is_some() && archived.items[1].state.read_at_ms.is_none());
    assert_eq!(archived.items[0].notification.data.get(), r#"{"n":5}"#);
}

/// Pages come newest first, `limit` at a time, `next_before` leads to the next one and is `None`
/// on the last (also when the last page is full), and every page carries the counts.
pub async fn inbox_pages_newest_first_with_before(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=25).map(|n| entry("alice", n)).collect()).await;
    let expected_counts = counts(&*store, "alice").await;
    let mut before = None;
    let mut pages = Vec::new();
    loop {
        let page = page(&*store, "alice", query(InboxStatus::All, before, 10)).await;
        assert_eq!(page.counts, expected_counts);
        pages.push((page_seqs(&page), page.next_before));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    let down = |from: u64, to: u64| (to..=from).rev().collect::<Vec<u64>>();
    assert_eq!(pages, [(down(25, 16), Some(16)), (down(15, 6), Some(6)), (down(5, 1), None)]);

    let full_last = page(&*store, "alice", query(InboxStatus::All, Some(11), 10)).await;
    assert_eq!(
        (page_seqs(&full_last), full_last.next_before),
        (down(10, 1), None),
        "no empty page at the end"
    );
    let one = page(&*store, "alice", query(InboxStatus::All, Some(2), 10)).await;
    assert_eq!((page_seqs(&one), one.next_before), (vec![1], None));
    assert!(page(&*store, "alice", query(InboxStatus::All, Some(1), 10)).await.items.is_empty());
    assert_eq!(
        page_seqs(&page(&*store, "alice", query(InboxStatus::All, Some(u64::MAX), 3)).await),
        [25, 24, 23]
    );

    // A status page skips what is not in it, and its cursor works the same.
    mark(&*store, "alice", &(1..=25).filter(|n| n % 3 != 0).collect::<Vec<_>>(), Mark::Read).await;
    let unread = page(&*store, "alice", query(InboxStatus::Unread, None, 3)).await;
    assert_eq!((page_seqs(&unread), unread.next_before), (vec![24, 21, 18], Some(18)));
    let next = page(&*store, "alice", query(InboxStatus::Unread, Some(18), 5)).await;
    assert_eq!((page_seqs(&next), next.next_before), (vec![15, 12, 9, 6, 3], None));
    assert_eq!(next.counts.unread, 8);
    assert_eq!(page(&*store, "nobody", query(InboxStatus::All, None, 10)).await.items.len(), 0);
}

/// `type` narrows every status, and pages by type page like the others.
pub async fn inbox_filters_by_type(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let typed = |n: u64| NewNotification {
        kind: Arc::from(if n.is_multiple_of(2) { "even" } else { "odd" }),
        ..entry("alice", n)
    };
    append(&*store, (1..=12).map(typed).collect()).await;
    mark(&*store, "alice", &[2, 3, 4], Mark::Read).await;
    mark(&*store, "alice", &[6], Mark::Archived).await;
    let by_type = async |status, kind: &str, before, limit| {
        let query = InboxQuery { status, kind: Some(kind.to_owned()), before, limit };
        let page = page(&*store, "alice", query).await;
        assert!(page.items.iter().all(|item| &*item.notification.kind == kind));
        (page_seqs(&page), page.next_before)
    };
    assert_eq!(by_type(InboxStatus::All, "even", None, 100).await, (vec![12, 10, 8, 4, 2], None));
    assert_eq!(by_type(InboxStatus::Unread, "even", None, 100).await, (vec![12, 10, 8], None));
    assert_eq!(by_type(InboxStatus::Read, "odd", None, 100).await, (vec![3], None));
    assert_eq!(by_type(InboxStatus::Archived, "even", None, 100).await, (vec![6], None));
    assert_eq!(by_type(InboxStatus::Unseen, "odd", None, 2).await, (vec![11, 9], Some(9)));
    assert_eq!(by_type(InboxStatus::Unseen, "odd", Some(9), 2).await, (vec![7, 5], Some(5)));
    assert_eq!(by_type(InboxStatus::Unseen, "odd", Some(5), 2).await, (vec![1], None));
    assert_eq!(by_type(InboxStatus::All, "none", None, 10).await, (vec![], None));
}

/// Seqs that are not stored (never were, deleted, pruned, 0) are not changed, and are no error.
pub async fn inbox_missing_seqs_are_not_changed(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention { max_per_user: 4, ..Retention::default() }).await;
    append(&*store, (1..=6).map(|n| entry("alice", n)).collect()).await; // 1 and 2 pruned
    let alice = user("alice");
    store.inbox_delete(&alice, &Selection::Seqs(vec![4])).await.unwrap();
    let before = counts(&*store, "alice").await;
    for missing in [vec![0], vec![1, 2], vec![4], vec![99, u64::MAX]] {
        for m in [Mark::Read, Mark::Archived, Mark::Seen] {
            let change =
                store.inbox_mark(&alice, &Selection::Seqs(missing.clone()), m, now_ms()).await.unwrap();
            assert!(change.seqs.is_empty(), "{missing:?} {m:?}");
            assert_eq!(change.counts, before);
        }
        let change = store.inbox_delete(&alice, &Selection::Seqs(missing.clone())).await.unwrap();
        assert!(change.seqs.is_empty(), "{missing:?}");
        assert_eq!(change.counts, before);
    }
    assert_eq!(
        mark(&*store, "alice", &[3, 4, 5, 99], Mark::Read).await,
        [3, 5],
        "only the stored ones change"
    );
    let nobody = user("nobody");
    let change = store.inbox_mark(&nobody, &Selection::AllUpTo(10), Mark::Read, now_ms()).await.unwrap();
    assert_eq!(change, Default::default());
    assert_eq!(store.inbox_delete(&nobody, &Selection::Seqs(vec![1])).await.unwrap(), Default::default());
    assert_eq!(store.head(&nobody).await.unwrap(), head(0, 0), "no user is made up");
    assert_exact(&*store, "alice").await;
}

/// Retention keeps the counts exact: `max_per_user` in `append` (the counts it returns include
/// it) and age in `prune` (which reports each user's new counts).
pub async fn inbox_retention_keeps_counts_exact(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let retention = Retention { max_age: Duration::from_secs(3600), max_per_user: 5, ..Retention::default() };
    let store = make(retention).await;
    let now = now_ms();
    let old = now - 2 * HOUR_MS;
    append(&*store, (1..=3).map(|n| entry_at("alice", n, old)).collect()).await;
    mark(&*store, "alice", &[1], Mark::Read).await;
    mark(&*store, "alice", &[2], Mark::Archived).await;
    mark(&*store, "alice", &[3], Mark::Seen).await;
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(2, 1, 0, 1));
    let Appended::Stored { counts: appended, .. } =
        store.append((4..=7).map(|n| entry_at("alice", n, now)).collect(), None).await.unwrap()
    else {
        panic!("a duplicate")
    };
    // 1 (read) and 2 (archived) went to max_per_user; 3 (seen) and 4..=7 (new) are left.
    assert_eq!(appended[0].1.numbers(), numbers(5, 5, 4, 0));
    assert_eq!(assert_exact(&*store, "alice").await, appended[0].1);

    append(&*store, (1..=2).map(|n| entry_at("bob", n, old)).collect()).await;
    let report = store.prune(now).await.unwrap();
    assert_eq!(report.notifications, 3);
    let mut pruned: Vec<_> = report.inboxes.iter().map(|p| (p.user.as_str().to_owned(), p.through)).collect();
    pruned.sort();
    assert_eq!(pruned, [("alice".to_owned(), 3), ("bob".to_owned(), 2)]);
    for p in &report.inboxes {
        assert_eq!(p.counts, counts(&*store, p.user.as_str()).await, "the report has the new counts");
    }
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(4, 4, 4, 0));
    assert_eq!(assert_exact(&*store, "bob").await.numbers(), numbers(0, 0, 0, 0));
    assert!(store.prune(now).await.unwrap().inboxes.is_empty(), "nothing pruned, no one reported");
}

/// Deleted notifications are not replayed, and the head does not move: a client resuming
/// across a deletion gets the rest with no `reset`.
pub async fn inbox_deleted_are_not_replayed(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, (1..=6).map(|n| entry("alice", n)).collect()).await;
    let alice = user("alice");
    store.inbox_delete(&alice, &Selection::Seqs(vec![2, 3, 6])).await.unwrap();
    let page = store.read_after(&alice, 1, 10).await.unwrap();
    assert_eq!(seqs(&page.notifications), [4, 5]);
    assert_eq!(page.head, head(6, 0));
    assert_eq!(seqs(&store.read_after(&alice, 0, 2).await.unwrap().notifications), [1, 4]);
    assert_eq!(seqs(&append(&*store, vec![entry("alice", 7)]).await), [7]);
    assert_eq!(assert_exact(&*store, "alice").await.numbers(), numbers(4, 4, 4, 0));
}

/// A small deterministic generator (SplitMix64), so that a failing interleaving can be rerun
/// from its printed seed without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Many tasks mark, delete, append and prune at random, concurrently, for two users, with a
/// small `max_per_user` and some expired notifications so that retention runs too. Every counts
/// a change returns must be plausible (`unseen <= unread <= total`), and at the end each user's
/// counts equal a recount from the rows.
pub async fn inbox_concurrent_random_changes_keep_counts_exact(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    const TASKS: u64 = 16;
    const OPS: u64 = 150;
    let retention =
        Retention { max_age: Duration::from_secs(3600), max_per_user: 120, ..Retention::default() };
    let store = make(retention).await;
    let seed = now_ms() as u64;
    eprintln!("inbox_concurrent_random_changes_keep_counts_exact: seed {seed}");
    let users = ["alice", "bob"];
    for u in users {
        append(&*store, (1..=40).map(|n| entry(u, n)).collect()).await;
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
                for _ in 0..OPS {
                    let u = users[rng.below(2) as usize];
                    let last = store.head(&user(u)).await.unwrap().last_seq;
                    let some_seqs =
                        |rng: &mut Rng| (0..1 + rng.below(5)).map(|_| rng.below(last + 3)).collect();
                    let counts = match rng.below(10) {
                        0 | 1 => {
                            let now = now_ms();
                            let at = |rng: &mut Rng| if rng.below(8) == 0 { now - 2 * HOUR_MS } else { now };
                            let entries =
                                (0..1 + rng.below(3)).map(|n| entry_at(u, n, at(&mut rng))).collect();
                            match store.append(entries, None).await.unwrap() {
                                Appended::Stored { counts, .. } => counts[0].1,
                                Appended::Duplicate(_) => unreachable!("no key"),
                            }
                        }
                        2..=5 => {
                            let m = Mark::ALL[rng.below(5) as usize];
                            let selection = Selection::Seqs(some_seqs(&mut rng));
                            store.inbox_mark(&user(u), &selection, m, now_ms()).await.unwrap().counts
                        }
                        6 => {
                            let m = [Mark::Read, Mark::Seen, Mark::Archived][rng.below(3) as usize];
                            let selection = Selection::AllUpTo(last.saturating_sub(rng.below(30)));
                            store.inbox_mark(&user(u), &selection, m, now_ms()).await.unwrap().counts
                        }
                        7 | 8 => {
                            let selection = Selection::Seqs(some_seqs(&mut rng));
                            store.inbox_delete(&user(u), &selection).await.unwrap().counts
                        }
                        _ => {
                            if rng.below(4) == 0 {
                                store.prune(now_ms()).await.unwrap();
                                continue;
                            }
                            let selection = Selection::AllUpTo(last.saturating_sub(60 + rng.below(40)));
                            store.inbox_delete(&user(u), &selection).await.unwrap().counts
                        }
                    };
                    assert!(
                        counts.unseen <= counts.unread && counts.unread <= counts.total,
                        "seed {seed}: implausible counts {counts:?}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    for u in users {
        let kept = counts(&*store, u).await;
        assert_eq!(kept.numbers(), recount(&*store, u).await, "seed {seed}: {u}'s counts vs a recount");
        assert!(kept.total + kept.archived <= 120, "max_per_user holds");
    }
}

// ---------------------------------------------------------------------------------------------
// Revocations

fn session(id: &str) -> SessionId {
    SessionId::new(id).expect("valid session id")
}

/// `user`'s revocations as (session, closed_at), sorted ("" for all sessions).
async fn revocations_of(store: &dyn Store, user_id: &str) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = store
        .revocations(&user(user_id))
        .await
        .expect("revocations")
        .into_iter()
        .map(|Revocation { session, closed_at_secs }| {
            (session.map(|s| s.as_str().to_owned()).unwrap_or_default(), closed_at_secs)
        })
        .collect();
    list.sort();
    list
}

fn presence_change(
    user: &str,
    session: &str,
    online: Option<bool>,
    clients: &[(&str, bool)],
) -> PresenceChange {
    PresenceChange {
        user: UserId::new(user).unwrap(),
        session: SessionId::new(session).unwrap(),
        online,
        clients: clients.iter().map(|(c, o)| (ClientId::new(*c).unwrap(), *o)).collect(),
        at_ms: 1_000,
    }
}

fn presence_summary(events: &[PresenceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let scope = e.client.as_ref().map(|c| c.as_str()).or(e.session.as_ref().map(|s| s.as_str()));
            format!("{} {} {} #{}", e.kind.as_str(), e.user, scope.unwrap_or("-"), e.user_seq)
        })
        .collect()
}

/// A user and a session are online once whatever number of nodes has them; events are
/// numbered per user, and the numbering goes on after the user went offline.
pub async fn presence_is_online_once_across_nodes(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let record = async |node: &str, change: PresenceChange| {
        presence_summary(&store.record_presence(node, &change).await.unwrap())
    };
    assert_eq!(
        record("a", presence_change("u", "s1", Some(true), &[("c1", true)])).await,
        ["user.online u - #1", "session.online u s1 #2", "client.online u c1 #3"]
    );
    assert!(record("a", presence_change("u", "s1", Some(true), &[])).await.is_empty(), "recorded already");
    assert!(record("b", presence_change("u", "s1", Some(true), &[])).await.is_empty(), "online on a");
    assert_eq!(record("b", presence_change("u", "s2", Some(true), &[])).await, ["session.online u s2 #4"]);
    assert_eq!(
        record("a", presence_change("v", "s1", Some(true), &[])).await.len(),
        2,
        "another user: own seqs"
    );
    assert_eq!(
        record("a", presence_change("u", "s1", Some(false), &[("c1", false)])).await,
        ["client.offline u c1 #5"]
    );
    assert_eq!(record("b", presence_change("u", "s1", Some(false), &[])).await, ["session.offline u s1 #6"]);
    assert!(record("b", presence_change("u", "s1", Some(false), &[])).await.is_empty(), "not online there");
    assert_eq!(
        record("b", presence_change("u", "s2", Some(false), &[])).await,
        ["session.offline u s2 #7", "user.offline u - #8"]
    );
    assert_eq!(
        record("a", presence_change("u", "s1", Some(true), &[])).await,
        ["user.online u - #9", "session.online u s1 #10"],
        "user_seq is never given out twice"
    );
    let event =
        &store.record_presence("a", &presence_change("u", "s1", None, &[("c2", true)])).await.unwrap()[0];
    assert_eq!(
        (&*event.node, event.at_ms, event.session.as_ref().map(|s| s.as_str())),
        ("a", 1_000, Some("s1"))
    );
}

/// A heartbeat registers its node and names the nodes silent since the bound; releasing a dead
/// node reports its sessions offline (only where no other node has them), in chunks, then
/// forgets it.
pub async fn presence_heartbeats_find_dead_nodes_and_release_them(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    assert_eq!(store.presence_heartbeat("a", 1_000, 0).await.unwrap(), PresenceBeat::default(), "first beat");
    let beat = store.presence_heartbeat("b", 2_000, 0).await.unwrap();
    assert!(!beat.was_registered && beat.dead_nodes.is_empty());
    let beat = store.presence_heartbeat("b", 40_000, 10_000).await.unwrap();
    assert_eq!(beat, PresenceBeat { was_registered: true, dead_nodes: vec!["a".to_owned()] });
    for (user, session) in [("u", "s1"), ("u", "s2"), ("w", "s1")] {
        store.record_presence("a", &presence_change(user, session, Some(true), &[])).await.unwrap();
    }
    store.record_presence("b", &presence_change("w", "s1", Some(true), &[])).await.unwrap();
    let mut released = Vec::new();
    let mut calls = 0;
    while let Some(events) = store.release_presence("a", 5_000, 2).await.unwrap() {
        calls += 1;
        assert!(calls <= 3, "a chunk of at most 2 sessions per call");
        released.extend(presence_summary(&events));
    }
    assert_eq!(calls, 2);
    assert!(released.iter().all(|e| !e.contains(" w ")), "w is still online on b: {released:?}");
    let mut without_seqs: Vec<&str> = released.iter().map(|e| e.split(" #").next().unwrap()).collect();
    without_seqs.sort_unstable();
    assert_eq!(without_seqs, ["session.offline u s1", "session.offline u s2", "user.offline u -"]);
    assert_eq!(released.iter().filter(|e| e.ends_with(" #6")).count(), 1, "numbered on: {released:?}");
    let beat = store.presence_heartbeat("b", 41_000, 10_000).await.unwrap();
    assert!(beat.dead_nodes.is_empty(), "a is forgotten once released");
    assert!(store.release_presence("a", 5_000, 2).await.unwrap().is_none());
}

/// Two nodes bringing one user online at once: exactly one `user.online`, and the user's seqs
/// are distinct.
pub async fn concurrent_presence_changes_make_one_user_online(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let change = presence_change("u", &format!("s{i}"), Some(true), &[]);
                store.record_presence(&format!("node{}", i % 2), &change).await.unwrap()
            })
        })
        .collect();
    let mut events = Vec::new();
    for task in tasks {
        events.extend(task.await.unwrap());
    }
    let user_online = events.iter().filter(|e| e.kind == PresenceKind::UserOnline).count();
    assert_eq!(user_online, 1, "{:?}", presence_summary(&events));
    let mut seqs: Vec<u64> = events.iter().map(|e| e.user_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
}

/// A revocation is kept per user and session (or all sessions), the latest close winning; other
/// users are untouched.
pub async fn revocations_keep_the_latest_close(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let now = u64::try_from(now_ms() / 1000).unwrap();
    assert_eq!(revocations_of(&*store, "alice").await, []);
    store.revoke(&user("alice"), Some(&session("s1")), now - 10).await.unwrap();
    store.revoke(&user("alice"), Some(&session("s1")), now - 20).await.unwrap();
    store.revoke(&user("alice"), None, now - 5).await.unwrap();
    store.revoke(&user("alice"), Some(&session("s2")), now - 30).await.unwrap();
    store.revoke(&user("alice"), Some(&session("s2")), now - 1).await.unwrap();
    store.revoke(&user("bob"), Some(&session("s1")), now).await.unwrap();
    assert_eq!(
        revocations_of(&*store, "alice").await,
        [(String::new(), now - 5), ("s1".into(), now - 10), ("s2".into(), now - 1)]
    );
    assert_eq!(revocations_of(&*store, "bob").await, [("s1".into(), now)]);
    assert_eq!(revocations_of(&*store, "carol").await, []);
}

/// Retention forgets revocations older than `revocation_window`, and only those.
pub async fn prune_forgets_old_revocations(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store =
        make(Retention { revocation_window: Duration::from_secs(3600), ..Retention::default() }).await;
    let now = u64::try_from(now_ms() / 1000).unwrap();
    store.revoke(&user("alice"), Some(&session("old")), now - 7200).await.unwrap();
    store.revoke(&user("alice"), None, now - 10).await.unwrap();
    store.revoke(&user("bob"), None, now - 3700).await.unwrap();
    let report = store.prune(now_ms()).await.unwrap();
    assert_eq!(report.revocations, 2);
    assert_eq!(revocations_of(&*store, "alice").await, [(String::new(), now - 10)]);
    assert_eq!(revocations_of(&*store, "bob").await, []);
    assert_eq!(store.prune(now_ms()).await.unwrap().revocations, 0);
}

/// Through [`Revocations`] (and its cache): a token issued at or before the close of its
/// session, or of all its user's sessions, is revoked; one issued later, or of another session
/// or user, is not; a close made after the cache was filled is seen at once.
pub async fn revoked_tokens_are_those_issued_until_the_close(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let revocations = Revocations::new(Arc::clone(&store));
    let (alice, s1, s2) = (user("alice"), session("s1"), session("s2"));
    assert!(!revocations.is_revoked(&alice, &s1, 1_000).await.unwrap());
    revocations.revoke(&alice, Some(&s1), 1_000).await.unwrap();
    assert!(revocations.is_revoked(&alice, &s1, 999).await.unwrap());
    assert!(revocations.is_revoked(&alice, &s1, 1_000).await.unwrap(), "same second: revoked");
    assert!(!revocations.is_revoked(&alice, &s1, 1_001).await.unwrap());
    assert!(!revocations.is_revoked(&alice, &s2, 999).await.unwrap());
    assert!(!revocations.is_revoked(&user("bob"), &s1, 999).await.unwrap());
    revocations.revoke(&alice, None, 2_000).await.unwrap();
    assert!(revocations.is_revoked(&alice, &s2, 2_000).await.unwrap());
    assert!(revocations.is_revoked(&alice, &s1, 1_500).await.unwrap());
    assert!(!revocations.is_revoked(&alice, &s2, 2_001).await.unwrap());
    // Another handle on the same store (a restart) sees them too.
    let fresh = Revocations::new(Arc::clone(&store));
    assert!(fresh.is_revoked(&alice, &s2, 2_000).await.unwrap());
    assert!(!fresh.is_revoked(&alice, &s2, 2_001).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Listens kept in the store

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

fn topics(names: &[&str]) -> Vec<Topic> {
    names.iter().map(|name| topic(name)).collect()
}

/// Bounds of `user_topics` at user scope, `session_topics` per session, `sessions` sessions.
fn bounds(user_topics: usize, session_topics: usize, sessions: usize) -> ListenBounds {
    ListenBounds { user_topics_max: user_topics, session_topics_max: session_topics, sessions_max: sessions }
}

/// Roomy bounds, for cases about something else.
const ROOMY: ListenBounds = ListenBounds { user_topics_max: 100, session_topics_max: 100, sessions_max: 100 };

/// `ScopeListens::Listening(topics)`.
fn listening(names: &[&str]) -> ScopeListens {
    ScopeListens::Listening(topics(names))
}

/// `store.listen(user, session, topics, bounds, now_ms)`, unwrapped.
async fn listen_at(
    store: &dyn Store,
    user_id: &str,
    session_id: Option<&str>,
    names: &[&str],
    bounds: ListenBounds,
    now_ms: i64,
) -> ScopeListens {
    let session_id = session_id.map(session);
    store.listen(&user(user_id), session_id.as_ref(), &topics(names), bounds, now_ms).await.expect("listen")
}

/// [`listen_at`] now, within roomy bounds.
async fn listen(store: &dyn Store, user_id: &str, session_id: Option<&str>, names: &[&str]) -> ScopeListens {
    listen_at(store, user_id, session_id, names, ROOMY, now_ms()).await
}

/// `user`'s listens as (session, topic), `""` for user scope, in the store's order.
async fn listens_of(store: &dyn Store, user_id: &str) -> Vec<(String, String)> {
    store
        .listens(&user(user_id))
        .await
        .expect("listens")
        .into_iter()
        .map(|StoredListen { session, topic }| {
            (session.map(|s| s.as_str().to_owned()).unwrap_or_default(), topic.as_str().to_owned())
        })
        .collect()
}

/// Owned (session, topic) pairs, to compare with [`listens_of`].
fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|&(session, topic)| (session.to_owned(), topic.to_owned())).collect()
}

/// A listener of a topic: `user`, at `session`'s scope (`""`: user scope).
fn listener(user_id: &str, session_id: &str) -> TopicListener {
    TopicListener { user: user(user_id), session: (!session_id.is_empty()).then(|| session(session_id)) }
}

/// A user listens at user scope and in a session; each call returns the scope's topics, sorted,
/// a topic named twice (in one call or two) is listened to once, and other users are untouched.
pub async fn listens_at_user_and_session_scope(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    assert_eq!(listens_of(&*store, "alice").await, []);
    assert_eq!(listen(&*store, "alice", None, &["news", "chat", "news"]).await, listening(&["chat", "news"]));
    assert_eq!(listen(&*store, "alice", None, &["chat", "art"]).await, listening(&["art", "chat", "news"]));
    assert_eq!(
        listen(&*store, "alice", Some("s1"), &["room:2", "room:1"]).await,
        listening(&["room:1", "room:2"])
    );
    assert_eq!(listen(&*store, "bob", Some("s1"), &["news"]).await, listening(&["news"]));
    // A topic at both scopes is one listen of each.
    assert_eq!(
        listen(&*store, "alice", Some("s1"), &["news"]).await,
        listening(&["news", "room:1", "room:2"])
    );
    assert_eq!(
        listens_of(&*store, "alice").await,
        pairs(
            &[("", "art"), ("", "chat"), ("", "news"), ("s1", "news"), ("s1", "room:1"), ("s1", "room:2"),]
        )
    );
    assert_eq!(listens_of(&*store, "bob").await, pairs(&[("s1", "news")]));
    assert_eq!(listens_of(&*store, "carol").await, []);
    // A call naming nothing changes nothing, and makes no session.
    assert_eq!(listen(&*store, "carol", Some("s9"), &[]).await, listening(&[]));
    assert_eq!(listen(&*store, "alice", None, &[]).await, listening(&["art", "chat", "news"]));
    assert_eq!(listens_of(&*store, "carol").await, []);
}

/// `listens` is sorted by scope, user scope first, then by topic, in byte order (`B` before
/// `a`), whatever order the listens came in.
pub async fn listens_are_sorted_user_scope_first(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    listen(&*store, "alice", Some("zed"), &["b", "A"]).await;
    listen(&*store, "alice", Some("Zed"), &["x"]).await;
    listen(&*store, "alice", None, &["z", "B", "a"]).await;
    listen(&*store, "alice", Some("abc"), &["m"]).await;
    assert_eq!(
        listens_of(&*store, "alice").await,
        pairs(&[("", "B"), ("", "a"), ("", "z"), ("Zed", "x"), ("abc", "m"), ("zed", "A"), ("zed", "b"),])
    );
    let listens = store.listens(&user("alice")).await.unwrap();
    assert!(listens.windows(2).all(|w| w[0] < w[1]), "sorted as `StoredListen` sorts: {listens:?}");
}

/// A listen that would take its scope over the bound is refused whole with `TooMany { count,
/// max }` (`count`: the scope's topics had it passed, each counted once) and changes nothing,
/// neither the scope nor another session (no eviction); up to the bound exactly is fine.
pub async fn a_listen_over_the_bound_changes_nothing(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let tight = bounds(3, 2, 1);
    let now = now_ms();
    assert_eq!(listen_at(&*store, "alice", None, &["a", "b"], tight, now).await, listening(&["a", "b"]));
    assert_eq!(
        listen_at(&*store, "alice", None, &["c", "d", "c"], tight, now).await,
        ScopeListens::TooMany { count: 4, max: 3 }
    );
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "a"), ("", "b")]), "nothing of it listened");
    assert_eq!(
        listen_at(&*store, "alice", None, &["c", "a", "c"], tight, now).await,
        listening(&["a", "b", "c"])
    );
    assert_eq!(
        listen_at(&*store, "alice", None, &["d"], tight, now).await,
        ScopeListens::TooMany { count: 4, max: 3 }
    );

    // Session scope has its own bound; a new session refused does not evict the one there.
    assert_eq!(listen_at(&*store, "alice", Some("s1"), &["x"], tight, now).await, listening(&["x"]));
    assert_eq!(
        listen_at(&*store, "alice", Some("s2"), &["p", "q", "r"], tight, now + 1).await,
        ScopeListens::TooMany { count: 3, max: 2 }
    );
    assert_eq!(
        listen_at(&*store, "alice", Some("s1"), &["x", "y", "z"], tight, now + 2).await,
        ScopeListens::TooMany { count: 3, max: 2 }
    );
    assert_eq!(
        listens_of(&*store, "alice").await,
        pairs(&[("", "a"), ("", "b"), ("", "c"), ("s1", "x")]),
        "neither s2 nor s1's new topics, and s1 was not evicted"
    );
    assert_eq!(listen_at(&*store, "alice", Some("s1"), &["y"], tight, now).await, listening(&["x", "y"]));
}

/// A listen that adds nothing new is never `TooMany`, even when the scope is at its bound or
/// over it (the bound was lowered since); one that adds a topic then is, counting the scope's
/// topics with it.
pub async fn a_listen_of_topics_already_listened_is_never_too_many(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let now = now_ms();
    assert_eq!(
        listen_at(&*store, "alice", None, &["a", "b", "c"], bounds(3, 3, 3), now).await,
        listening(&["a", "b", "c"])
    );
    assert_eq!(
        listen_at(&*store, "alice", Some("s1"), &["x", "y"], bounds(3, 3, 3), now).await,
        listening(&["x", "y"])
    );
    // At the bound.
    assert_eq!(
        listen_at(&*store, "alice", None, &["c", "a"], bounds(3, 3, 3), now).await,
        listening(&["a", "b", "c"])
    );
    // Over a lowered bound.
    let lowered = bounds(1, 1, 3);
    assert_eq!(
        listen_at(&*store, "alice", None, &["b", "b", "a"], lowered, now).await,
        listening(&["a", "b", "c"])
    );
    assert_eq!(listen_at(&*store, "alice", Some("s1"), &["y"], lowered, now).await, listening(&["x", "y"]));
    assert_eq!(
        listen_at(&*store, "alice", None, &["a", "d"], lowered, now).await,
        ScopeListens::TooMany { count: 4, max: 1 }
    );
    assert_eq!(
        listens_of(&*store, "alice").await,
        pairs(&[("", "a"), ("", "b"), ("", "c"), ("s1", "x"), ("s1", "y")])
    );
}

/// `unlisten` removes the topics named from that scope only, ignores those not listened to
/// (another scope's, unknown ones, a user or session with no listens), and returns what is
/// left; a session left with no topics is gone (from `listens` and `topic_listeners`).
pub async fn unlisten_removes_only_what_is_listened(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let alice = user("alice");
    listen(&*store, "alice", None, &["a", "b", "c"]).await;
    listen(&*store, "alice", Some("s1"), &["b", "x"]).await;
    let unlisten = async |session_id: Option<&str>, names: &[&str]| {
        let session_id = session_id.map(session);
        store.unlisten(&alice, session_id.as_ref(), &topics(names)).await.expect("unlisten")
    };
    assert_eq!(unlisten(None, &["b", "zz", "x"]).await, topics(&["a", "c"]));
    assert_eq!(unlisten(None, &["b"]).await, topics(&["a", "c"]), "again: nothing to remove");
    assert_eq!(unlisten(Some("s2"), &["a"]).await, topics(&[]), "a session with no listens");
    assert_eq!(
        store.unlisten(&user("bob"), None, &topics(&["a"])).await.unwrap(),
        topics(&[]),
        "a user with no listens"
    );
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "a"), ("", "c"), ("s1", "b"), ("s1", "x")]));
    assert_eq!(unlisten(Some("s1"), &["x", "b"]).await, topics(&[]));
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "a"), ("", "c")]));
    assert_eq!(store.topic_listeners(&topic("x"), None, 10).await.unwrap(), []);
    assert_eq!(unlisten(None, &[]).await, topics(&["a", "c"]));
}

/// Beyond `sessions_max` sessions with listens, a new session's listen forgets every listen of
/// the session whose latest listen is the oldest, in the same call: a listen of a topic already
/// listened counts as a listen, unlistening a topic does not make a session older, ties go to
/// the smallest id, user scope is no session and is kept, and a session already there listening
/// more evicts nobody.
pub async fn a_session_beyond_the_bound_forgets_the_oldest(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let two = bounds(10, 10, 2);
    let t = 1_000_000;
    listen_at(&*store, "alice", None, &["follow"], two, t).await;
    listen_at(&*store, "alice", Some("s1"), &["a"], two, t + 100).await;
    listen_at(&*store, "alice", Some("s2"), &["b"], two, t + 200).await;
    // s1 listens again (its topic already listened), then more and less: its latest is t + 400.
    listen_at(&*store, "alice", Some("s1"), &["a"], two, t + 300).await;
    listen_at(&*store, "alice", Some("s1"), &["c"], two, t + 400).await;
    assert_eq!(
        store.unlisten(&user("alice"), Some(&session("s1")), &topics(&["c"])).await.unwrap(),
        topics(&["a"])
    );
    // At the bound, a session already there evicts nobody.
    listen_at(&*store, "alice", Some("s2"), &["d"], two, t + 250).await;
    assert_eq!(
        listens_of(&*store, "alice").await,
        pairs(&[("", "follow"), ("s1", "a"), ("s2", "b"), ("s2", "d")])
    );
    // s3 is one too many: s2 (latest t + 250) goes, not s1 (latest t + 400), in this call.
    assert_eq!(listen_at(&*store, "alice", Some("s3"), &["e"], two, t + 500).await, listening(&["e"]));
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "follow"), ("s1", "a"), ("s3", "e")]));
    assert_eq!(store.topic_listeners(&topic("b"), None, 10).await.unwrap(), []);

    // Ties: the smallest id goes. Other users are not counted.
    let store = make(Retention::default()).await;
    listen_at(&*store, "bob", Some("s0"), &["a"], two, t).await;
    listen_at(&*store, "alice", Some("sb"), &["a"], two, t).await;
    listen_at(&*store, "alice", Some("sa"), &["a"], two, t).await;
    listen_at(&*store, "alice", Some("sc"), &["a"], two, t).await;
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("sb", "a"), ("sc", "a")]));
    assert_eq!(listens_of(&*store, "bob").await, pairs(&[("s0", "a")]));

    // One session at most: each new one replaces the last.
    let one = bounds(10, 10, 1);
    listen_at(&*store, "carol", Some("s1"), &["a", "b"], one, t).await;
    listen_at(&*store, "carol", Some("s2"), &["c"], one, t + 1).await;
    assert_eq!(listens_of(&*store, "carol").await, pairs(&[("s2", "c")]));
}

/// `forget_session_listens` forgets one session's listens, or (`None`) every session's, and
/// keeps user scope and the other users'.
pub async fn forget_session_listens_keeps_user_scope(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let alice = user("alice");
    listen(&*store, "alice", None, &["follow"]).await;
    listen(&*store, "alice", Some("s1"), &["a", "b"]).await;
    listen(&*store, "alice", Some("s2"), &["c"]).await;
    listen(&*store, "alice", Some("s3"), &["d"]).await;
    listen(&*store, "bob", Some("s1"), &["a"]).await;
    store.forget_session_listens(&alice, Some(&session("s1"))).await.unwrap();
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "follow"), ("s2", "c"), ("s3", "d")]));
    store.forget_session_listens(&alice, Some(&session("s9"))).await.unwrap();
    store.forget_session_listens(&alice, None).await.unwrap();
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "follow")]));
    assert_eq!(listens_of(&*store, "bob").await, pairs(&[("s1", "a")]));
    store.forget_session_listens(&user("carol"), None).await.unwrap();
    // Forgotten sessions count no more against `sessions_max`.
    listen_at(&*store, "alice", Some("s4"), &["e"], bounds(10, 10, 1), now_ms()).await;
    listen_at(&*store, "alice", None, &["more"], bounds(10, 10, 1), now_ms()).await;
    assert_eq!(listens_of(&*store, "alice").await, pairs(&[("", "follow"), ("", "more"), ("s4", "e")]));
}

/// `topic_listeners` lists who listens to a topic, by user then session (user scope first), in
/// byte order, in keyset pages: from `after` (exclusive, whether it still listens or not) at most
/// `limit`; the pages together are the whole list, once each.
pub async fn topic_listeners_pages_by_user_then_session(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    listen(&*store, "carol", None, &["news"]).await;
    listen(&*store, "alice", Some("s2"), &["news"]).await;
    listen(&*store, "alice", None, &["news", "other"]).await;
    listen(&*store, "alice", Some("S1"), &["news"]).await;
    listen(&*store, "Bob", Some("s1"), &["news"]).await;
    listen(&*store, "bob", Some("s1"), &["other"]).await;
    listen(&*store, "dave", None, &["other"]).await;
    listen(&*store, "alice", Some("s3"), &["other"]).await;
    let news = topic("news");
    let all = vec![
        listener("Bob", "s1"),
        listener("alice", ""),
        listener("alice", "S1"),
        listener("alice", "s2"),
        listener("carol", ""),
    ];
    assert_eq!(store.topic_listeners(&news, None, 100).await.unwrap(), all);
    assert_eq!(store.topic_listeners(&news, None, 0).await.unwrap(), []);
    assert_eq!(store.topic_listeners(&topic("nobody"), None, 100).await.unwrap(), []);
    for limit in 1..=3 {
        let mut paged = Vec::new();
        let mut after: Option<TopicListener> = None;
        loop {
            let page = store.topic_listeners(&news, after.as_ref(), limit).await.unwrap();
            assert!(page.len() <= limit, "limit {limit}: {page:?}");
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            paged.extend(page);
        }
        assert_eq!(paged, all, "pages of {limit}");
    }
    // From a point that does not listen (or no longer does), and past the end.
    assert_eq!(
        store.topic_listeners(&news, Some(&listener("alice", "S0")), 2).await.unwrap(),
        [listener("alice", "S1"), listener("alice", "s2")]
    );
    assert_eq!(
        store.topic_listeners(&news, Some(&listener("alice", "")), 1).await.unwrap(),
        [listener("alice", "S1")]
    );
    assert_eq!(
        store.topic_listeners(&news, Some(&listener("b", "")), 5).await.unwrap(),
        [listener("carol", "")]
    );
    assert_eq!(store.topic_listeners(&news, Some(&listener("carol", "")), 5).await.unwrap(), []);
    assert_eq!(
        store.topic_listeners(&topic("other"), None, 100).await.unwrap(),
        [listener("alice", ""), listener("alice", "s3"), listener("bob", "s1"), listener("dave", "")]
    );
}

/// Many listens of one user at once, each adding two topics of its own at user scope and in a
/// new session: the user scope stays within its bound, the user ends with exactly
/// `sessions_max` sessions, and what is kept at user scope is exactly what the accepted calls
/// added (those refused added nothing). Fails if two listens could both pass the bound.
pub async fn concurrent_listens_stay_within_the_bounds(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    const CALLS: usize = 12;
    let store = make(Retention::default()).await;
    let tight = bounds(5, 3, 4);
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mine = [format!("t{i:02}a"), format!("t{i:02}b")];
                let names: Vec<&str> = mine.iter().map(String::as_str).collect();
                let session_id = format!("s{i:02}");
                let (at_user, in_session) = tokio::join!(
                    listen_at(&*store, "alice", None, &names, tight, now_ms()),
                    listen_at(&*store, "alice", Some(&session_id), &names, tight, now_ms()),
                );
                assert_eq!(in_session, ScopeListens::Listening(topics(&names)));
                (mine, at_user)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        let (mine, at_user) = task.await.expect("task");
        match at_user {
            ScopeListens::Listening(now) => {
                assert!(now.len() <= 5, "over the bound: {now:?}");
                accepted.extend(mine);
            }
            // Two topics at a time: the scope holds 4 when a call is refused.
            ScopeListens::TooMany { count, max } => assert_eq!((count, max), (6, 5)),
        }
    }
    accepted.sort();
    let listens = store.listens(&user("alice")).await.unwrap();
    let at_user: Vec<String> =
        listens.iter().filter(|l| l.session.is_none()).map(|l| l.topic.as_str().to_owned()).collect();
    assert_eq!(at_user, accepted, "exactly the accepted calls' topics");
    assert_eq!(at_user.len(), 4, "two calls of two topics fit in 5, a third does not");
    let mut sessions: Vec<&SessionId> = listens.iter().filter_map(|l| l.session.as_ref()).collect();
    sessions.dedup();
    assert_eq!(sessions.len(), 4, "sessions_max sessions: {sessions:?}");
}

// ---------------------------------------------------------------------------------------------
// Topic logs

/// A durable event of `topic` whose data is `{"n": n}`, created at `created_at_ms`, for everyone.
fn topic_event_at(name: &str, n: u64, created_at_ms: i64) -> NewTopicEvent {
    NewTopicEvent {
        topic: topic(name),
        kind: Arc::from("test.event"),
        data: data(&format!(r#"{{"n":{n}}}"#)),
        created_at_ms,
        except_user: None,
        except_client: None,
    }
}

fn topic_event(name: &str, n: u64) -> NewTopicEvent {
    topic_event_at(name, n, now_ms())
}

fn stored_event(appended: TopicAppended) -> Arc<TopicEvent> {
    match appended {
        TopicAppended::Stored(event) => event,
        TopicAppended::Duplicate(receipt) => {
            panic!("expected a new topic event, got a duplicate: {receipt:?}")
        }
    }
}

fn topic_duplicate(appended: TopicAppended) -> Receipt {
    match appended {
        TopicAppended::Duplicate(receipt) => receipt,
        TopicAppended::Stored(event) => panic!("expected a duplicate, got tseq {:?}", event.tseq),
    }
}

/// Appends `event` without a key; its tseq.
async fn append_event(store: &dyn Store, event: NewTopicEvent) -> u64 {
    let stored = stored_event(store.append_topic(event, None).await.expect("append_topic"));
    stored.tseq.expect("a stored topic event has a tseq")
}

async fn read_topic(store: &dyn Store, name: &str) -> Vec<Arc<TopicEvent>> {
    store.read_topic_after(&topic(name), 0, usize::MAX).await.expect("read_topic_after").events
}

fn tseqs(events: &[Arc<TopicEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.tseq.expect("stored topic events have a tseq")).collect()
}

async fn topic_head(store: &dyn Store, name: &str) -> TopicHead {
    let (heads, _) = store.topic_heads(&[topic(name)]).await.expect("topic_heads");
    heads[0]
}

fn thead(last_tseq: u64, pruned_through: u64) -> TopicHead {
    TopicHead { last_tseq, pruned_through }
}

/// The receipt a topic publish leaves with its key: no notifications, its topic and tseq.
fn topic_receipt(name: &str, tseq: u64, delivered: u64) -> Receipt {
    Receipt {
        notifications: Vec::new(),
        topic: Some(TopicReceipt { topic: topic(name), tseq }),
        job: None,
        delivered,
    }
}

/// Tseqs are 1, 2, 3, … per topic, independent between topics and from users' seqs; what is
/// read back is what was stored, byte for byte.
pub async fn tseqs_count_from_one_per_topic(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append(&*store, vec![entry("alice", 1), entry("alice", 2)]).await;
    let mut written = Vec::new();
    for n in 1..=3 {
        let event = stored_event(store.append_topic(topic_event("room:a", n), None).await.unwrap());
        assert_eq!(event.tseq, Some(n));
        assert_eq!(event.topic, topic("room:a"));
        written.push(event);
    }
    assert_eq!(append_event(&*store, topic_event("room:b", 1)).await, 1, "another topic starts at 1");
    assert_eq!(append_event(&*store, topic_event("room:b", 2)).await, 2);
    assert_eq!(append_event(&*store, topic_event("room:a", 4)).await, 4);
    assert_eq!(topic_head(&*store, "room:a").await, thead(4, 0));
    assert_eq!(topic_head(&*store, "room:b").await, thead(2, 0));
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(2, 0), "users' seqs are apart");

    let read = read_topic(&*store, "room:a").await;
    assert_eq!(tseqs(&read), [1, 2, 3, 4]);
    for (written, read) in written.iter().zip(&read) {
        assert_eq!(written.json(), read.json(), "the stored event reads back identical");
        assert_eq!(read.topic, topic("room:a"));
    }
    assert_eq!(read[3].data.get(), r#"{"n":4}"#);
    assert_eq!(tseqs(&read_topic(&*store, "room:b").await), [1, 2]);
}

/// 20 tasks × 10 concurrent appends to one topic (and one to a topic of their own each): the
/// topic gets exactly 1..=200, no gap, no duplicate, each tseq holding the data of the append
/// that was given it.
pub async fn concurrent_topic_appends_are_gapless(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    const TASKS: u64 = 20;
    const CALLS: u64 = 10;
    let store = make(Retention::default()).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for c in 0..CALLS {
                    let n = t * CALLS + c;
                    got.push((n, append_event(&*store, topic_event("busy", n)).await));
                    if c == 0 {
                        assert_eq!(append_event(&*store, topic_event(&format!("own:{t}"), n)).await, 1);
                    }
                }
                got
            })
        })
        .collect();
    let mut tseq_of_n = HashMap::new();
    for task in tasks {
        for (n, tseq) in task.await.expect("task") {
            assert!(tseq_of_n.insert(n, tseq).is_none());
        }
    }
    let mut given: Vec<u64> = tseq_of_n.values().copied().collect();
    given.sort_unstable();
    assert_eq!(given, (1..=TASKS * CALLS).collect::<Vec<_>>(), "every tseq given once, no gap");
    let read = read_topic(&*store, "busy").await;
    assert_eq!(tseqs(&read), (1..=TASKS * CALLS).collect::<Vec<_>>());
    for event in &read {
        let n: u64 = event.data.get()[5..event.data.get().len() - 1].parse().unwrap();
        assert_eq!(tseq_of_n[&n], event.tseq.unwrap(), "the data stored under a tseq is its append's");
    }
    assert_eq!(topic_head(&*store, "busy").await, thead(TASKS * CALLS, 0));
}

/// `read_topic_after` gives at most `limit` events after `after`, oldest first, with the head and
/// the store's epoch; past the end, or with limit 0, no events but the head; an unknown topic,
/// nothing and a zero head.
pub async fn read_topic_after_pages_and_returns_the_head(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    for n in 1..=5 {
        append_event(&*store, topic_event("feed", n)).await;
    }
    append_event(&*store, topic_event("other", 1)).await;
    let feed = topic("feed");
    let page = store.read_topic_after(&feed, 0, 2).await.unwrap();
    assert_eq!(tseqs(&page.events), [1, 2]);
    assert_eq!(page.head, thead(5, 0));
    assert_eq!(page.epoch, store.epoch());
    let page = store.read_topic_after(&feed, 2, 2).await.unwrap();
    assert_eq!(tseqs(&page.events), [3, 4]);
    let page = store.read_topic_after(&feed, 4, 10).await.unwrap();
    assert_eq!(tseqs(&page.events), [5]);
    assert_eq!(page.events[0].data.get(), r#"{"n":5}"#);
    let page = store.read_topic_after(&feed, 5, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.head, thead(5, 0));
    let page = store.read_topic_after(&feed, 0, 0).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.head, thead(5, 0));
    let page = store.read_topic_after(&topic("never"), 0, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.head, thead(0, 0));
    assert_eq!(page.epoch, store.epoch());
}

/// `type`, `data`, `created_at`, `except_user` and `except_client` (each present or not) read
/// back as written.
pub async fn topic_events_round_trip(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let variants = [
        (None, None),
        (Some(user("alice")), None),
        (None, Some(ClientId::new("tab-1").unwrap())),
        (Some(user("bob")), Some(ClientId::new("tab-2").unwrap())),
    ];
    let created_at_ms = 1_700_000_123_456;
    let mut written = Vec::new();
    for (i, (except_user, except_client)) in variants.iter().enumerate() {
        let event = NewTopicEvent {
            topic: topic("post:42"),
            kind: Arc::from(format!("comment.{i}")),
            data: data(&format!(r#"{{"text":"héllo \"{i}\"","list":[1,2,{{"a":null}}]}}"#)),
            created_at_ms: created_at_ms + i as i64,
            except_user: except_user.clone(),
            except_client: except_client.clone(),
        };
        written.push(stored_event(store.append_topic(event, None).await.unwrap()));
    }
    let read = read_topic(&*store, "post:42").await;
    assert_eq!(read.len(), variants.len());
    for (i, ((written, read), (except_user, except_client))) in
        written.iter().zip(&read).zip(&variants).enumerate()
    {
        assert_eq!(read.tseq, Some(i as u64 + 1));
        assert_eq!(&*read.kind, format!("comment.{i}"));
        assert_eq!(read.data.get(), written.data.get());
        assert_eq!(read.created_at_ms, created_at_ms + i as i64);
        assert_eq!(&read.except_user, except_user, "except_user of tseq {}", i + 1);
        assert_eq!(&read.except_client, except_client, "except_client of tseq {}", i + 1);
        assert_eq!(read.json(), written.json());
        assert_eq!(written.except_user, read.except_user);
    }
}

/// A key used within the window returns the first receipt, naming the topic and tseq, and
/// stores nothing; a completed receipt is what later duplicates get; another key stores.
pub async fn topic_duplicate_key_returns_the_first_receipt(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    append_event(&*store, topic_event("news", 0)).await;
    let first = stored_event(store.append_topic(topic_event("news", 1), Some("t-1")).await.unwrap());
    assert_eq!(first.tseq, Some(2));
    let again = topic_duplicate(store.append_topic(topic_event("news", 99), Some("t-1")).await.unwrap());
    assert_eq!(again, topic_receipt("news", 2, 0));
    // The key names the first publish, whatever topic the repeat names.
    let elsewhere = topic_duplicate(store.append_topic(topic_event("sport", 1), Some("t-1")).await.unwrap());
    assert_eq!(elsewhere, topic_receipt("news", 2, 0));
    assert_eq!(topic_head(&*store, "news").await, thead(2, 0), "a duplicate stores nothing");
    assert_eq!(topic_head(&*store, "sport").await, thead(0, 0));
    assert_eq!(tseqs(&read_topic(&*store, "news").await), [1, 2]);

    let completed = topic_receipt("news", 2, 7);
    store.complete_receipt("t-1", &completed).await.unwrap();
    assert_eq!(
        topic_duplicate(store.append_topic(topic_event("news", 3), Some("t-1")).await.unwrap()),
        completed
    );
    assert_eq!(
        stored_event(store.append_topic(topic_event("news", 3), Some("t-2")).await.unwrap()).tseq,
        Some(3)
    );
    assert_eq!(append_event(&*store, topic_event("news", 4)).await, 4);
}

/// Appends and topic appends share one namespace of keys: a key used by either is a duplicate
/// for the other, which gets the first publish's receipt and stores nothing.
pub async fn topic_and_user_appends_share_the_key_namespace(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    stored_event(store.append_topic(topic_event("news", 1), Some("k-topic")).await.unwrap());
    let receipt_for_append = duplicate(store.append(vec![entry("alice", 1)], Some("k-topic")).await.unwrap());
    assert_eq!(receipt_for_append, topic_receipt("news", 1, 0));
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(0, 0), "the append stored nothing");

    stored(store.append(vec![entry("bob", 1)], Some("k-user")).await.unwrap());
    let receipt_for_topic =
        topic_duplicate(store.append_topic(topic_event("news", 2), Some("k-user")).await.unwrap());
    assert_eq!(receipt_for_topic, receipt(&[("bob", 1)], 0));
    assert_eq!(topic_head(&*store, "news").await, thead(1, 0), "the topic append stored nothing");

    // An ephemeral publish's key too.
    store.append(vec![], Some("k-eph")).await.unwrap();
    assert_eq!(
        topic_duplicate(store.append_topic(topic_event("news", 3), Some("k-eph")).await.unwrap()),
        Receipt::default()
    );
    assert_eq!(tseqs(&read_topic(&*store, "news").await), [1]);
}

/// Twenty concurrent topic appends with one key: exactly one stores, the others get its receipt.
pub async fn concurrent_topic_appends_with_one_key_store_once(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.append_topic(topic_event("news", n), Some("same")).await.unwrap() },
            )
        })
        .collect();
    let (mut stored_once, mut receipts) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            TopicAppended::Stored(event) => stored_once.push(event),
            TopicAppended::Duplicate(receipt) => receipts.push(receipt),
        }
    }
    assert_eq!(stored_once.len(), 1, "exactly one topic append stores");
    assert_eq!(stored_once[0].tseq, Some(1));
    assert_eq!(receipts.len(), 19);
    assert!(receipts.iter().all(|r| *r == topic_receipt("news", 1, 0)));
    assert_eq!(topic_head(&*store, "news").await, thead(1, 0));
}

/// With `topic_max_events` = 3, a topic keeps its newest 3 events and `pruned_through` follows,
/// from the append itself (no `prune`); other topics are untouched.
pub async fn topic_max_events_prunes_the_oldest(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention { topic_max_events: 3, ..Retention::default() }).await;
    for n in 1..=3 {
        append_event(&*store, topic_event("busy", n)).await;
    }
    append_event(&*store, topic_event("calm", 1)).await;
    assert_eq!(topic_head(&*store, "busy").await, thead(3, 0));
    assert_eq!(tseqs(&read_topic(&*store, "busy").await), [1, 2, 3]);
    for n in 4..=7 {
        assert_eq!(append_event(&*store, topic_event("busy", n)).await, n, "tseqs go on");
    }
    let page = store.read_topic_after(&topic("busy"), 0, 100).await.unwrap();
    assert_eq!(page.head, thead(7, 4));
    assert_eq!(tseqs(&page.events), [5, 6, 7]);
    assert_eq!(page.events[0].data.get(), r#"{"n":5}"#);
    assert_eq!(topic_head(&*store, "calm").await, thead(1, 0));
    assert_eq!(tseqs(&read_topic(&*store, "calm").await), [1]);
    assert_eq!(store.prune(now_ms()).await.unwrap().topic_events, 0, "nothing is old");
}

/// Retention by age (`topic_max_age`) removes what is older, as a prefix (an expired event takes
/// every lower tseq with it, even one stamped later: clocks step back), raises `pruned_through`,
/// counts what went in `PruneReport::topic_events`, leaves fresh topics and users' logs alone,
/// and removes nothing more when run again.
pub async fn topic_age_prune_removes_a_prefix(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let retention = Retention {
        topic_max_age: Duration::from_secs(3600),
        max_age: Duration::from_secs(3600),
        ..Retention::default()
    };
    let store = make(retention).await;
    let now = now_ms();
    let old = now - 2 * HOUR_MS;
    for (n, at) in [(1, now), (2, old), (3, now), (4, old), (5, now)] {
        append_event(&*store, topic_event_at("mixed", n, at)).await;
    }
    append_event(&*store, topic_event_at("fresh", 1, now)).await;
    append(&*store, vec![entry_at("alice", 1, now)]).await;

    let report = store.prune(now).await.unwrap();
    assert_eq!(report.topic_events, 4);
    assert_eq!(report.notifications, 0);
    let page = store.read_topic_after(&topic("mixed"), 0, 100).await.unwrap();
    assert_eq!(page.head, thead(5, 4));
    assert_eq!(tseqs(&page.events), [5]);
    assert_eq!(topic_head(&*store, "fresh").await, thead(1, 0));
    assert_eq!(tseqs(&read_topic(&*store, "fresh").await), [1]);
    assert_eq!(store.head(&user("alice")).await.unwrap(), head(1, 0));
    assert_eq!(store.prune(now).await.unwrap().topic_events, 0, "pruning again removes nothing");
    assert_eq!(topic_head(&*store, "mixed").await, thead(5, 4), "pruned_through never drops");
}

/// A topic whose every event retention removed keeps its last tseq: the next append gets the
/// one after it (never 1 again), by age and by `topic_max_events` alike.
pub async fn tseqs_are_never_reused_after_retention_emptied_a_topic(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let retention =
        Retention { topic_max_age: Duration::from_secs(3600), topic_max_events: 2, ..Retention::default() };
    let store = make(retention).await;
    let now = now_ms();
    for n in 1..=3 {
        append_event(&*store, topic_event_at("gone", n, now - 2 * HOUR_MS)).await;
    }
    assert_eq!(topic_head(&*store, "gone").await, thead(3, 1));
    assert_eq!(store.prune(now).await.unwrap().topic_events, 2);
    let page = store.read_topic_after(&topic("gone"), 0, 100).await.unwrap();
    assert!(page.events.is_empty(), "{:?}", tseqs(&page.events));
    assert_eq!(page.head, thead(3, 3), "an emptied log keeps its last tseq");
    assert_eq!(append_event(&*store, topic_event("gone", 4)).await, 4);
    assert_eq!(tseqs(&read_topic(&*store, "gone").await), [4]);
    assert_eq!(topic_head(&*store, "gone").await, thead(4, 3));
    // `topic_max_events` alone: the bound never lets a tseq come back either.
    for n in 5..=8 {
        assert_eq!(append_event(&*store, topic_event("gone", n)).await, n);
    }
    assert_eq!(topic_head(&*store, "gone").await, thead(8, 6));
    assert_eq!(tseqs(&read_topic(&*store, "gone").await), [7, 8]);
}

/// `topic_heads` answers one head per topic asked, in the order asked (repeats included), zeros
/// for topics never published durably, with the store's epoch; no topics, no heads.
pub async fn topic_heads_of_unknown_topics_are_zeros_in_order(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention { topic_max_events: 2, ..Retention::default() }).await;
    for n in 1..=3 {
        append_event(&*store, topic_event("a", n)).await;
    }
    append_event(&*store, topic_event("b", 1)).await;
    let asked = [topic("b"), topic("unknown"), topic("a"), topic("b"), topic("zzz")];
    let (heads, epoch) = store.topic_heads(&asked).await.unwrap();
    assert_eq!(heads, [thead(1, 0), thead(0, 0), thead(3, 1), thead(1, 0), thead(0, 0)]);
    assert_eq!(epoch, store.epoch());
    let (none, _) = store.topic_heads(&[]).await.unwrap();
    assert!(none.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Fan-out jobs

/// A running job of topic `post:{id}` created at `created_at_ms`, nothing stored yet.
fn job(id: &str, created_at_ms: i64) -> FanoutJob {
    FanoutJob {
        id: id.to_owned(),
        topic: topic(&format!("post:{id}")),
        kind: Arc::from("comment.added"),
        data: data(r#"{"n":1}"#),
        created_at_ms,
        except_user: None,
        except_client: None,
        cursor: None,
        stored: 0,
        finished_at_ms: None,
    }
}

/// `store`'s job `id`, which it must have.
async fn saved_job(store: &dyn Store, id: &str) -> FanoutJob {
    store.job(id).await.expect("job").unwrap_or_else(|| panic!("job {id:?} is missing"))
}

/// Fails unless `read` is `written`, field by field.
fn assert_same_job(read: &FanoutJob, written: &FanoutJob) {
    let id = &written.id;
    assert_eq!(read.id, written.id);
    assert_eq!(read.topic, written.topic, "topic of job {id}");
    assert_eq!(read.kind, written.kind, "type of job {id}");
    assert_eq!(read.data.get(), written.data.get(), "data of job {id}, byte for byte");
    assert_eq!(read.created_at_ms, written.created_at_ms, "created_at of job {id}");
    assert_eq!(read.except_user, written.except_user, "except_user of job {id}");
    assert_eq!(read.except_client, written.except_client, "except_client of job {id}");
    assert_eq!(read.cursor, written.cursor, "cursor of job {id}");
    assert_eq!(read.stored, written.stored, "stored of job {id}");
    assert_eq!(read.finished_at_ms, written.finished_at_ms, "finished_at of job {id}");
}

/// The ids of `jobs`, in order.
fn job_ids(jobs: &[FanoutJob]) -> Vec<&str> {
    jobs.iter().map(|job| job.id.as_str()).collect()
}

/// A job reads back as saved, every field: its data byte for byte (spaces, key order, escapes
/// and number spellings kept, as a `jsonb` column would not), each optional field present or
/// absent. An id never saved is `None`, and so is one that differs only in case.
pub async fn jobs_round_trip_every_field(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let full = FanoutJob {
        id: "Job_7-x".to_owned(),
        topic: topic("room:ops"),
        kind: Arc::from("alert.raised"),
        data: data(r#"{ "z": 1, "a" : [1.50, 2e3, null], "s": "h\u00e9llo \"x\"", "é": {} }"#),
        created_at_ms: 1_700_000_123_456,
        except_user: Some(user("alice")),
        except_client: Some(ClientId::new("tab-1").unwrap()),
        cursor: Some(user("bob")),
        stored: 1_234,
        finished_at_ms: Some(1_700_000_999_999),
    };
    let bare = job("bare", 1_700_000_000_000);
    store.save_job(&full).await.unwrap();
    store.save_job(&bare).await.unwrap();
    assert_same_job(&saved_job(&*store, "Job_7-x").await, &full);
    assert_same_job(&saved_job(&*store, "bare").await, &bare);
    assert!(store.job("never").await.unwrap().is_none(), "an unknown id is no job");
    assert!(store.job("job_7-x").await.unwrap().is_none(), "ids are compared exactly");
    let unfinished = store.unfinished_jobs(10).await.unwrap();
    assert_eq!(job_ids(&unfinished), ["bare"], "a finished job is not unfinished");
    assert_same_job(&unfinished[0], &bare);
}

/// Saving a job with an id the store has replaces it, every field (the cursor moves, `stored`
/// grows, it finishes); the store keeps one job per id, and `unfinished_jobs` follows what the
/// last save said, both ways.
pub async fn save_job_replaces_the_job_with_its_id(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let first = job("a", 1_000);
    store.save_job(&first).await.unwrap();
    store.save_job(&job("b", 2_000)).await.unwrap();
    let moved = FanoutJob { cursor: Some(user("carol")), stored: 1_000, ..first.clone() };
    store.save_job(&moved).await.unwrap();
    assert_same_job(&saved_job(&*store, "a").await, &moved);
    assert_eq!(job_ids(&store.unfinished_jobs(10).await.unwrap()), ["a", "b"], "one job per id");

    let finished = FanoutJob {
        cursor: Some(user("zed")),
        stored: 1_500,
        finished_at_ms: Some(5_000),
        data: data(r#"{"n": 2}"#),
        ..moved.clone()
    };
    store.save_job(&finished).await.unwrap();
    assert_same_job(&saved_job(&*store, "a").await, &finished);
    assert_eq!(job_ids(&store.unfinished_jobs(10).await.unwrap()), ["b"], "a finished job is not unfinished");

    // Saved as running again (never done by the runner, but the last save is what counts).
    store.save_job(&moved).await.unwrap();
    assert_same_job(&saved_job(&*store, "a").await, &moved);
    assert_eq!(job_ids(&store.unfinished_jobs(10).await.unwrap()), ["a", "b"]);
    assert_same_job(&saved_job(&*store, "b").await, &job("b", 2_000));
}

/// `unfinished_jobs` gives the running jobs only, oldest `created_at_ms` first, jobs created
/// at the same ms by id (byte order: `B` before `a`), at most `limit` of them (none for 0).
pub async fn unfinished_jobs_are_oldest_first_within_the_limit(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let finished = |id: &str, at: i64| FanoutJob { finished_at_ms: Some(at + 10), ..job(id, at) };
    for saved in [
        job("late", 9_000),
        finished("done-early", 100),
        job("a", 5_000),
        job("mid", 3_000),
        job("B", 5_000),
        finished("done-late", 9_500),
        job("first", 1_000),
        job("a-2", 5_000),
    ] {
        store.save_job(&saved).await.unwrap();
    }
    let all = store.unfinished_jobs(100).await.unwrap();
    assert_eq!(job_ids(&all), ["first", "mid", "B", "a", "a-2", "late"]);
    assert!(all.iter().all(|job| !job.is_finished()));
    assert_eq!(job_ids(&store.unfinished_jobs(3).await.unwrap()), ["first", "mid", "B"]);
    assert_eq!(job_ids(&store.unfinished_jobs(1).await.unwrap()), ["first"]);
    assert!(store.unfinished_jobs(0).await.unwrap().is_empty());
    assert_eq!(store.unfinished_jobs(usize::MAX).await.unwrap().len(), 6);
}

/// `prune` forgets the jobs that finished longer ago than the idempotency window (their chunks'
/// keys are gone too), counting them in `PruneReport::jobs`; it keeps running jobs however old,
/// and jobs finished within the window (one finished exactly at its edge too), also ones created
/// long before it; pruning again forgets nothing more.
pub async fn prune_forgets_finished_jobs_past_the_window(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store =
        make(Retention { idempotency_window: Duration::from_secs(3600), ..Retention::default() }).await;
    let now = now_ms();
    let finished =
        |id: &str, created: i64, at: i64| FanoutJob { finished_at_ms: Some(at), ..job(id, created) };
    store.save_job(&job("running-old", now - 100 * HOUR_MS)).await.unwrap();
    store.save_job(&finished("gone-1", now - 3 * HOUR_MS, now - 2 * HOUR_MS)).await.unwrap();
    store.save_job(&finished("gone-2", now - 3 * HOUR_MS, now - HOUR_MS - 1)).await.unwrap();
    store.save_job(&finished("recent", now - 100 * HOUR_MS, now - HOUR_MS / 2)).await.unwrap();
    store.save_job(&finished("at-the-edge", now - 2 * HOUR_MS, now - HOUR_MS)).await.unwrap();

    let report = store.prune(now).await.unwrap();
    assert_eq!(report.jobs, 2);
    assert_eq!((report.notifications, report.idempotency_keys, report.topic_events), (0, 0, 0));
    assert!(store.job("gone-1").await.unwrap().is_none());
    assert!(store.job("gone-2").await.unwrap().is_none());
    assert_same_job(
        &saved_job(&*store, "recent").await,
        &finished("recent", now - 100 * HOUR_MS, now - HOUR_MS / 2),
    );
    assert!(store.job("at-the-edge").await.unwrap().is_some(), "finished exactly a window ago is kept");
    assert_same_job(&saved_job(&*store, "running-old").await, &job("running-old", now - 100 * HOUR_MS));
    assert_eq!(job_ids(&store.unfinished_jobs(10).await.unwrap()), ["running-old"]);
    assert_eq!(store.prune(now).await.unwrap().jobs, 0, "pruning again forgets nothing");

    // Later, the window has passed for the other finished jobs too; the running one stays.
    assert_eq!(store.prune(now + 2 * HOUR_MS).await.unwrap().jobs, 2);
    assert!(store.job("recent").await.unwrap().is_none());
    assert!(store.job("running-old").await.unwrap().is_some());
}

fn push_subscription(
    endpoint: &str,
    user_id: &str,
    session_id: &str,
    created_at_ms: i64,
) -> PushSubscription {
    PushSubscription {
        id: push_subscription_id(endpoint),
        user: user(user_id),
        session: SessionId::new(session_id).unwrap(),
        endpoint: endpoint.to_owned(),
        p256dh: format!("key-of-{endpoint}"),
        auth: "c2VjcmV0LXNlY3JldC0xNg".to_owned(),
        created_at_ms,
    }
}

fn endpoints(subscriptions: &[PushSubscription]) -> Vec<&str> {
    subscriptions.iter().map(|s| s.endpoint.as_str()).collect()
}

/// A subscription reads back field for field, by user (oldest first) and by id; subscribing
/// again with the same endpoint replaces it (new keys, and another user's now: a browser signed
/// in as someone else), leaving one.
pub async fn push_subscriptions_round_trip_and_replace_by_endpoint(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let bounds = PushBounds::default();
    let first = push_subscription("https://push.example/b", "alice", "s1", 2_000);
    let second = push_subscription("https://push.example/a", "alice", "s2", 1_000);
    assert!(store.push_subscribe(&first, bounds).await.unwrap().is_empty());
    assert!(store.push_subscribe(&second, bounds).await.unwrap().is_empty());
    assert_eq!(store.push_subscriptions(&user("alice")).await.unwrap(), [second.clone(), first.clone()]);
    assert_eq!(store.push_subscription(&first.id).await.unwrap(), Some(first.clone()));
    assert_eq!(store.push_subscription("no-such-id").await.unwrap(), None);
    assert!(store.push_subscriptions(&user("bob")).await.unwrap().is_empty());

    let moved = PushSubscription {
        p256dh: "new-key".into(),
        ..push_subscription(&first.endpoint, "bob", "s9", 3_000)
    };
    store.push_subscribe(&moved, bounds).await.unwrap();
    assert_eq!(store.push_subscriptions(&user("alice")).await.unwrap(), [second]);
    assert_eq!(store.push_subscriptions(&user("bob")).await.unwrap(), std::slice::from_ref(&moved));
    assert_eq!(store.push_subscription(&first.id).await.unwrap(), Some(moved));
}

/// One subscription more than a session's bound forgets the session's oldest; one more than the
/// user's bound forgets the user's oldest (in any session); each call returns what it forgot.
pub async fn push_subscriptions_beyond_the_bounds_forget_the_oldest(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    let bounds = PushBounds { per_user_max: 3, per_session_max: 2 };
    let sub =
        |n: i64, session: &str| push_subscription(&format!("https://push.example/{n}"), "alice", session, n);
    for n in [1, 2] {
        assert!(store.push_subscribe(&sub(n, "s1"), bounds).await.unwrap().is_empty());
    }
    let forgot = store.push_subscribe(&sub(3, "s1"), bounds).await.unwrap();
    assert_eq!(forgot, [sub(1, "s1").id], "the session's oldest goes");
    assert_eq!(
        endpoints(&store.push_subscriptions(&user("alice")).await.unwrap()),
        ["https://push.example/2", "https://push.example/3"]
    );
    assert!(store.push_subscribe(&sub(4, "s2"), bounds).await.unwrap().is_empty());
    let forgot = store.push_subscribe(&sub(5, "s3"), bounds).await.unwrap();
    assert_eq!(forgot, [sub(2, "s1").id], "the user's oldest goes, whatever its session");
    assert_eq!(
        endpoints(&store.push_subscriptions(&user("alice")).await.unwrap()),
        ["https://push.example/3", "https://push.example/4", "https://push.example/5"]
    );
    // Another user's subscriptions do not count against alice's bound.
    store.push_subscribe(&push_subscription("https://push.example/b", "bob", "s1", 0), bounds).await.unwrap();
    assert_eq!(store.push_subscriptions(&user("alice")).await.unwrap().len(), 3);
}

/// `push_unsubscribe` removes the user's own subscription and says so; another user's, or one
/// not kept, is left alone and answered `false`.
pub async fn push_unsubscribe_removes_only_the_users_own(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let alices = push_subscription("https://push.example/a", "alice", "s1", 1);
    store.push_subscribe(&alices, PushBounds::default()).await.unwrap();
    assert!(!store.push_unsubscribe(&user("bob"), &alices.id).await.unwrap());
    assert_eq!(store.push_subscriptions(&user("alice")).await.unwrap().len(), 1);
    assert!(store.push_unsubscribe(&user("alice"), &alices.id).await.unwrap());
    assert!(!store.push_unsubscribe(&user("alice"), &alices.id).await.unwrap());
    assert!(store.push_subscriptions(&user("alice")).await.unwrap().is_empty());
    assert_eq!(store.push_subscription(&alices.id).await.unwrap(), None);
}

fn delivery(id: &str, due_at_ms: i64) -> PushDelivery {
    PushDelivery {
        id: id.to_owned(),
        subscription: "sub".to_owned(),
        user: user("alice"),
        unless_live: Some(SessionId::new("s1").unwrap()),
        payload: r#"{"type":"t","data":{"x":"\u00e9 é"}}"#.to_owned(),
        ttl_secs: 60,
        urgency: PushUrgency::High,
        topic: Some("t".to_owned()),
        due_at_ms,
        attempts: 0,
    }
}

/// A claim's lease in these tests.
const LEASE: std::time::Duration = std::time::Duration::from_millis(1_000);

/// Deliveries read back field for field, the earliest due first (then by id), only those due,
/// at most `limit`; enqueuing an id kept already changes nothing (its first version stays). A
/// claimed delivery is not handed out again before its lease ends, and is after.
pub async fn push_outbox_enqueues_once_and_claims_what_is_due(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    store.push_enqueue(&[delivery("p2/b", 200), delivery("p1/a", 100), delivery("p2/a", 200)]).await.unwrap();
    store.push_enqueue(&[delivery("p1/a", 50), delivery("p3/a", 300)]).await.unwrap();
    store.push_enqueue(&[]).await.unwrap();
    assert_eq!(store.push_outbox_depth().await.unwrap(), 4);
    assert_eq!(store.push_next_due().await.unwrap(), Some(100));
    assert!(store.push_claim(99, 10, LEASE).await.unwrap().is_empty());
    assert!(store.push_claim(1_000, 0, LEASE).await.unwrap().is_empty());
    assert_eq!(store.push_claim(250, 1, LEASE).await.unwrap(), [delivery("p1/a", 100)]);
    let due = store.push_claim(250, 10, LEASE).await.unwrap();
    assert_eq!(due, [delivery("p2/a", 200), delivery("p2/b", 200)], "not p1/a again: it is claimed");
    assert!(store.push_claim(1_249, 10, LEASE).await.unwrap().iter().all(|d| d.id == "p3/a"));
    assert_eq!(store.push_next_due().await.unwrap(), Some(1_250), "p1/a's lease ends first");
    let again: Vec<String> =
        store.push_claim(1_250, 10, LEASE).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(again, ["p1/a", "p2/a", "p2/b"], "claimed again once their lease ended");
    assert_eq!(store.push_outbox_depth().await.unwrap(), 4, "a claim removes nothing");
}

/// `Retry` moves a delivery later with its attempts (read back in the delivery too), `Done`
/// removes it; settling an id not kept is no error.
pub async fn push_outbox_settle_retries_later_or_removes(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    store.push_enqueue(&[delivery("a", 100), delivery("b", 100)]).await.unwrap();
    store.push_settle("a", PushSettle::Retry { due_at_ms: 500, attempts: 2 }).await.unwrap();
    assert_eq!(store.push_next_due().await.unwrap(), Some(100));
    assert_eq!(store.push_claim(400, 10, LEASE).await.unwrap(), [delivery("b", 100)]);
    let retried = PushDelivery { attempts: 2, ..delivery("a", 500) };
    assert_eq!(store.push_claim(500, 10, LEASE).await.unwrap(), [retried]);
    store.push_settle("b", PushSettle::Done).await.unwrap();
    store.push_settle("b", PushSettle::Done).await.unwrap();
    store.push_settle("gone", PushSettle::Retry { due_at_ms: 1, attempts: 1 }).await.unwrap();
    assert_eq!(store.push_outbox_depth().await.unwrap(), 1);
    store.push_settle("a", PushSettle::Done).await.unwrap();
    assert_eq!(store.push_next_due().await.unwrap(), None);
}

/// Four claimers at once, each taking a few deliveries at a time until none is left: every
/// delivery is handed to exactly one of them (a claim is atomic).
pub async fn concurrent_push_claims_never_share_a_delivery(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    let all: Vec<PushDelivery> = (0..120).map(|n| delivery(&format!("d{n:03}"), 10 + n % 7)).collect();
    store.push_enqueue(&all).await.unwrap();
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.push_claim(100, 7, std::time::Duration::from_secs(3600)).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap());
    }
    claimed.sort();
    let expected: Vec<String> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(claimed, expected, "each delivery claimed once");
}

fn push_request(expand_by_ms: i64) -> Arc<PushRequest> {
    Arc::new(PushRequest {
        policy: PushPolicy::Offline,
        payload: Some(r#"{"title":"é"}"#.to_owned()),
        ttl_secs: 60,
        urgency: PushUrgency::Low,
        topic: "topic".to_owned(),
        due_at_ms: expand_by_ms - 30,
        expand_by_ms,
    })
}

/// An append whose entries carry a push request keeps a marker for each notification whose user
/// has a push subscription, and none for the others, nor for entries without a request; the
/// markers come back from a claim with their request once their time came (not before), and
/// not again within the lease.
pub async fn an_append_marks_pushes_only_for_users_with_subscriptions(
    make: &impl AsyncFn(Retention) -> Arc<dyn Store>,
) {
    let store = make(Retention::default()).await;
    store
        .push_subscribe(&push_subscription("https://push.example/a", "alice", "s1", 1), PushBounds::default())
        .await
        .unwrap();
    store
        .push_subscribe(&push_subscription("https://push.example/c", "carol", "s1", 1), PushBounds::default())
        .await
        .unwrap();
    append(&*store, vec![entry("alice", 0)]).await;
    let request = push_request(1_000);
    let pushed = |user_id: &str| NewNotification { push: Some(Arc::clone(&request)), ..entry(user_id, 1) };
    let entries = vec![pushed("alice"), pushed("bob"), entry("carol", 1), pushed("alice")];
    let Appended::Stored { push_pending, .. } = store.append(entries, Some("key-1")).await.unwrap() else {
        panic!("stored")
    };
    let mut marked = push_pending.clone();
    marked.sort();
    let marker = |user_id: &str, seq: Seq| PushMarker { user: user(user_id), seq };
    assert_eq!(
        marked,
        [marker("alice", 2), marker("alice", 3)],
        "not bob (no subscription), not carol (no request)"
    );
    let repeat = store.append(vec![pushed("alice")], Some("key-1")).await.unwrap();
    assert!(matches!(repeat, Appended::Duplicate(_)), "a repeat keeps no marker");
    let Appended::Stored { push_pending, .. } = store.append(vec![entry("alice", 2)], None).await.unwrap()
    else {
        panic!("stored")
    };
    assert!(push_pending.is_empty());

    assert_eq!(store.push_next_due().await.unwrap(), Some(1_000));
    assert!(store.push_claim_pending(999, 10, LEASE).await.unwrap().is_empty());
    let claimed = store.push_claim_pending(1_000, 10, LEASE).await.unwrap();
    let markers: Vec<PushMarker> = claimed.iter().map(|p| p.marker.clone()).collect();
    assert_eq!(markers, [marker("alice", 2), marker("alice", 3)]);
    let expected = PushRequest { expand_by_ms: 1_000 + LEASE.as_millis() as i64, ..(*request).clone() };
    assert_eq!(claimed[0].request, expected, "the request round-trips, with its new expand_by");
    assert!(store.push_claim_pending(1_500, 10, LEASE).await.unwrap().is_empty(), "claimed for the lease");
    assert_eq!(store.push_claim_pending(2_000, 1, LEASE).await.unwrap().len(), 1, "then again");
    assert_eq!(store.push_outbox_depth().await.unwrap(), 0, "markers are not deliveries");
}

/// `push_expand` removes a marker and adds its deliveries once: a second expansion of the same
/// marker (a sender that took it for orphaned, or a repeat) adds nothing, even with other
/// deliveries; `to_senders` makes a marker due at once.
pub async fn push_expand_adds_a_markers_deliveries_once(make: &impl AsyncFn(Retention) -> Arc<dyn Store>) {
    let store = make(Retention::default()).await;
    store
        .push_subscribe(&push_subscription("https://push.example/a", "alice", "s1", 1), PushBounds::default())
        .await
        .unwrap();
    let request = push_request(1_000);
    let pushed = NewNotification { push: Some(Arc::clone(&request)), ..entry("alice", 1) };
    let Appended::Stored { push_pending, .. } =
        store.append(vec![pushed.clone(), pushed], None).await.unwrap()
    else {
        panic!("stored")
    };
    assert_eq!(push_pending.len(), 2);
    let (first, second) = (push_pending[0].clone(), push_pending[1].clone());
    let expansion =
        PushExpansion { marker: first.clone(), deliveries: vec![delivery("x/1", 10), delivery("x/2", 10)] };
    assert_eq!(store.push_expand(std::slice::from_ref(&expansion), &[], 5).await.unwrap(), 2);
    let again = PushExpansion { marker: first.clone(), deliveries: vec![delivery("x/3", 10)] };
    assert_eq!(store.push_expand(&[again], &[], 5).await.unwrap(), 0, "the marker is gone: nothing added");
    assert_eq!(store.push_outbox_depth().await.unwrap(), 2);
    // The second marker to the senders: due at once.
    assert_eq!(store.push_expand(&[], std::slice::from_ref(&second), 7).await.unwrap(), 0);
    assert_eq!(store.push_next_due().await.unwrap(), Some(7));
    let claimed = store.push_claim_pending(7, 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|p| &p.marker).collect::<Vec<_>>(), [&second]);
    // Expanded with nothing to push (its notification gone): the marker goes all the same.
    assert_eq!(
        store.push_expand(&[PushExpansion { marker: second, deliveries: Vec::new() }], &[], 8).await.unwrap(),
        0
    );
    assert!(store.push_claim_pending(i64::MAX, 10, LEASE).await.unwrap().is_empty());
    assert_eq!(store.push_next_due().await.unwrap(), Some(10), "the deliveries are left");
}

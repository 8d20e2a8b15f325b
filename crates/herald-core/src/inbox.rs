//! The inbox's vocabulary: each stored notification's seen / read / archived state, each user's
//! counts, inbox pages and selections, and the `inbox` events that tell all of a user's clients
//! about every change. Only data and pure functions live here (the store, the queue, the hub
//! and the bus all speak it); the service that reads and changes inboxes is
//! [`crate::inbox_service`], above the store and the bus.
//!
//! **State.** A stored notification has `seen_at`, `read_at` and `archived_at` (milliseconds
//! since the epoch, `None` until set). Marking `read` also sets `seen_at` if it was not set (a
//! notification read was seen), so `read ⇒ seen` always holds; `unread` clears `read_at` only.
//! Archiving takes a notification out of the inbox (and out of every count but `archived`)
//! without touching its read state; unarchiving brings it back as it was.
//!
//! **Counts** ([`InboxCounts`]) are kept by the store, updated in the same transaction as every
//! append, mark, delete and retention prune, and read in O(1):
//! - `total`: retained notifications that are not archived (the inbox);
//! - `unread`: of those, the ones not read (the badge);
//! - `unseen`: of those, the ones not seen;
//! - `archived`: retained notifications that are archived;
//! - `version`: grows with every change of the user's inbox (appends included), so that a client
//!   that gets counts from several places (events, pages, `GET …/counts`) in any order keeps the
//!   newest ones.
//!
//! **Events.** Every change goes to the user's clients as an ephemeral [`InboxEvent`] (the
//! transports send it as `inbox`), serialized once and shared like a notification: marks and
//! deletes to every client (but the one that made the change, if it says which), retention
//! prunes to every client, and after each durable notification an `append` event to the clients
//! that follow the counts ([`crate::Subscription::follow_inbox`]), so that a badge counts new
//! notifications exactly, those meant for other sessions or tabs included.
//!
//! [`crate::Inbox`] is the handle that does all this, next to the [`crate::Notifier`].

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, Seq, UserId};
use crate::notification::{Notification, format_timestamp_ms};

/// Most seqs in one mark or delete by seqs. More: refused.
pub const MARK_SEQS_MAX: usize = 1_000;
/// Most notifications in one inbox page.
pub const INBOX_PAGE_LEN_MAX: usize = 100;
/// Notifications in an inbox page when the client names no limit.
pub const INBOX_PAGE_LEN_DEFAULT: usize = 20;

/// Which notifications an inbox page lists. Every status but [`InboxStatus::Archived`] leaves
/// archived notifications out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InboxStatus {
    /// Every notification that is not archived.
    #[default]
    All,
    /// Not read (and not archived).
    Unread,
    /// Not seen (and not archived).
    Unseen,
    /// Read (and not archived).
    Read,
    /// Archived.
    Archived,
}

impl InboxStatus {
    pub const ALL: [InboxStatus; 5] = [
        InboxStatus::All,
        InboxStatus::Unread,
        InboxStatus::Unseen,
        InboxStatus::Read,
        InboxStatus::Archived,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

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

/// A change of state: what `POST …/inbox/mark` takes as `"as"` (deserialized from its
/// lowercase name, the same as [`Mark::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Sets `read_at` (and `seen_at`, if not set).
    Read,
    /// Clears `read_at`.
    Unread,
    /// Sets `seen_at`.
    Seen,
    /// Sets `archived_at`.
    Archived,
    /// Clears `archived_at`.
    Unarchived,
}

impl Mark {
    pub const ALL: [Mark; 5] = [Mark::Read, Mark::Unread, Mark::Seen, Mark::Archived, Mark::Unarchived];

    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Read => "read",
            Mark::Unread => "unread",
            Mark::Seen => "seen",
            Mark::Archived => "archived",
            Mark::Unarchived => "unarchived",
        }
    }

    /// Whether "mark all up to N" takes this mark (`read`, `seen`, `archived`): the others undo a
    /// state, which is only done for notifications one names.
    pub fn applies_to_all(self) -> bool {
        matches!(self, Mark::Read | Mark::Seen | Mark::Archived)
    }
}

/// The inbox state of one stored notification: when it was seen, read, archived (milliseconds
/// since the epoch), `None` until then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ItemState {
    pub seen_at_ms: Option<i64>,
    pub read_at_ms: Option<i64>,
    pub archived_at_ms: Option<i64>,
}

impl ItemState {
    pub fn is_archived(&self) -> bool {
        self.archived_at_ms.is_some()
    }

    /// Whether a page of `status` lists a notification in this state.
    pub fn is_in(&self, status: InboxStatus) -> bool {
        let archived = self.is_archived();
        match status {
            InboxStatus::All => !archived,
            InboxStatus::Unread => !archived && self.read_at_ms.is_none(),
            InboxStatus::Unseen => !archived && self.seen_at_ms.is_none(),
            InboxStatus::Read => !archived && self.read_at_ms.is_some(),
            InboxStatus::Archived => archived,
        }
    }

    /// The state after `mark` at `at_ms`, or `None` if it is in that state already (marking is
    /// idempotent: a second `read` changes nothing, and keeps the first `read_at`).
    pub fn marked(&self, mark: Mark, at_ms: i64) -> Option<ItemState> {
        let mut next = *self;
        match mark {
            Mark::Read => {
                next.read_at_ms = next.read_at_ms.or(Some(at_ms));
                next.seen_at_ms = next.seen_at_ms.or(Some(at_ms));
            }
            Mark::Unread => next.read_at_ms = None,
            Mark::Seen => next.seen_at_ms = next.seen_at_ms.or(Some(at_ms)),
            Mark::Archived => next.archived_at_ms = next.archived_at_ms.or(Some(at_ms)),
            Mark::Unarchived => next.archived_at_ms = None,
        }
        (next != *self).then_some(next)
    }

    /// What a notification in this state adds to its user's counts.
    pub fn weight(&self) -> CountsDelta {
        let inbox = i64::from(!self.is_archived());
        CountsDelta {
            total: inbox,
            unread: inbox * i64::from(self.read_at_ms.is_none()),
            unseen: inbox * i64::from(self.seen_at_ms.is_none()),
            archived: 1 - inbox,
        }
    }
}

/// A change of a user's counts (signed), as stores accumulate it within one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsDelta {
    pub total: i64,
    pub unread: i64,
    pub unseen: i64,
    pub archived: i64,
}

impl CountsDelta {
    /// The change from a notification in state `from` to one in state `to` (`None`: absent, for
    /// an append or a removal).
    pub fn between(from: Option<&ItemState>, to: Option<&ItemState>) -> Self {
        let w = |s: Option<&ItemState>| s.map(ItemState::weight).unwrap_or_default();
        w(to) - w(from)
    }
}

impl std::ops::Sub for CountsDelta {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self {
            total: self.total - rhs.total,
            unread: self.unread - rhs.unread,
            unseen: self.unseen - rhs.unseen,
            archived: self.archived - rhs.archived,
        }
    }
}

impl std::ops::AddAssign for CountsDelta {
    fn add_assign(&mut self, rhs: Self) {
        self.total += rhs.total;
        self.unread += rhs.unread;
        self.unseen += rhs.unseen;
        self.archived += rhs.archived;
    }
}

/// A user's inbox counts; see the module docs for what each one counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InboxCounts {
    pub unread: u64,
    pub unseen: u64,
    pub total: u64,
    pub archived: u64,
    /// Grows with every change of the user's inbox: of two counts, the higher version is newer.
    pub version: u64,
}

impl InboxCounts {
    /// Applies `delta` and counts one more version.
    ///
    /// A count below zero means the store took away a notification it had not counted: a store
    /// bug. Debug builds (every test, the conformance suite included) stop at it. Release builds
    /// stop the count at zero instead: a panic here would take down the store's writer and with
    /// it every user's publishes, for one user's badge; a count that wrapped would show that
    /// user 18 quintillion unread notifications for good; at zero, the badge is wrong only by
    /// what was miscounted.
    pub fn apply(&mut self, delta: CountsDelta) {
        let add = |n: &mut u64, d: i64, name: &str| {
            debug_assert!(
                n.checked_add_signed(d).is_some(),
                "inbox count {name} {n} {d:+} out of range: the store miscounted"
            );
            *n = n.saturating_add_signed(d);
        };
        add(&mut self.total, delta.total, "total");
        add(&mut self.unread, delta.unread, "unread");
        add(&mut self.unseen, delta.unseen, "unseen");
        add(&mut self.archived, delta.archived, "archived");
        self.version += 1;
    }

    /// The counts without their version, to compare with a recount.
    pub fn numbers(&self) -> [u64; 4] {
        [self.total, self.unread, self.unseen, self.archived]
    }
}

/// What an inbox page asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    pub status: InboxStatus,
    /// Only notifications of this `type`.
    pub kind: Option<String>,
    /// Only notifications with a seq below this one (the cursor: the previous page's
    /// `next_before`); `None`: from the newest.
    pub before: Option<Seq>,
    /// At most this many (the [`crate::Inbox`] handle keeps it within 1..=[`INBOX_PAGE_LEN_MAX`]).
    pub limit: usize,
}

impl Default for InboxQuery {
    fn default() -> Self {
        Self { status: InboxStatus::All, kind: None, before: None, limit: INBOX_PAGE_LEN_DEFAULT }
    }
}

/// One notification in an inbox page, with its state.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub notification: Arc<Notification>,
    pub state: ItemState,
}

impl InboxItem {
    pub fn seq(&self) -> Seq {
        self.notification.seq.unwrap_or_default()
    }
}

/// One page of a user's inbox, newest first, with the counts of the same moment.
#[derive(Debug, Clone, Default)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// The `before` of the next page; `None` when this page is the last.
    pub next_before: Option<Seq>,
    pub counts: InboxCounts,
}

/// Which notifications a mark or delete is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These seqs (duplicates and seqs that are not stored are ignored).
    Seqs(Vec<Seq>),
    /// Every stored notification with a seq up to this one.
    AllUpTo(Seq),
}

/// What a mark or delete changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxChange {
    /// The seqs whose state changed (or that were deleted), ascending. Seqs already in the
    /// state, not stored, or deleted before, are not in it.
    pub seqs: Vec<Seq>,
    /// The user's counts after the change (unchanged, version included, if nothing changed).
    pub counts: InboxCounts,
}

/// A user whose notifications retention removed, in a [`crate::PruneReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedInbox {
    pub user: UserId,
    /// Every seq up to this one is gone now.
    pub through: Seq,
    pub counts: InboxCounts,
}

/// An `inbox` event: one change of one user's inbox, for the user's clients. Built once and
/// shared by every client it goes to, like a [`Notification`].
#[derive(Debug)]
pub struct InboxEvent {
    pub user: UserId,
    /// The client that made the change, which already knows (`X-Herald-Client`).
    pub except_client: Option<ClientId>,
    /// Only for clients that follow the counts (an `append` event).
    pub followers_only: bool,
    pub counts: InboxCounts,
    /// `{"op":…,…,"counts":{…}}`, serialized once: when made, or for an `append` event, when
    /// first asked for. An `append` event goes with every publish, and on a node where none of
    /// its user's tabs follows the counts nothing ever asks (serializing it was 1 % of the
    /// server's CPU at full load, `--memory`).
    json: OnceLock<Bytes>,
    /// The seqs of an `append` event whose JSON is not made yet.
    appended_seqs: Box<[Seq]>,
}

#[derive(Serialize)]
struct WireInboxEvent<'a> {
    op: &'static str,
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    mark: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seqs: Option<&'a [Seq]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all_up_to: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    through: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<usize>,
    counts: &'a InboxCounts,
}

impl InboxEvent {
    /// An event made on another node, from what it sent: its [`InboxEvent::json`] and the fields
    /// the hub routes by. For a bus that carries events between nodes.
    pub fn from_parts(
        user: UserId,
        except_client: Option<ClientId>,
        followers_only: bool,
        counts: InboxCounts,
        json: Bytes,
    ) -> Self {
        let json = OnceLock::from(json);
        Self { user, except_client, followers_only, counts, json, appended_seqs: Box::default() }
    }

    fn build(
        user: UserId,
        except_client: Option<ClientId>,
        followers_only: bool,
        counts: InboxCounts,
        wire: WireInboxEvent<'_>,
    ) -> Self {
        let json = OnceLock::from(serialize(&wire));
        Self { user, except_client, followers_only, counts, json, appended_seqs: Box::default() }
    }

    /// `append`: new notifications `seqs` were stored; for the clients that follow the counts.
    /// Its JSON is made when first asked for.
    pub fn appended(user: UserId, seqs: &[Seq], counts: InboxCounts) -> Self {
        let json = OnceLock::new();
        Self { user, except_client: None, followers_only: true, counts, json, appended_seqs: seqs.into() }
    }

    /// `mark`: `change.seqs` were marked `mark` at `at_ms`.
    pub fn marked(
        user: UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
        change: &InboxChange,
        except_client: Option<ClientId>,
    ) -> Self {
        let (seqs, all_up_to) = Self::selected(selection, change);
        let wire = WireInboxEvent {
            op: "mark",
            mark: Some(mark.as_str()),
            at: Some(format_timestamp_ms(at_ms)),
            seqs,
            all_up_to,
            through: None,
            changed: Some(change.seqs.len()),
            counts: &change.counts,
        };
        Self::build(user, except_client, false, change.counts, wire)
    }

    /// `delete`: `change.seqs` were deleted.
    pub fn deleted(
        user: UserId,
        selection: &Selection,
        change: &InboxChange,
        except_client: Option<ClientId>,
    ) -> Self {
        let (seqs, all_up_to) = Self::selected(selection, change);
        let wire = WireInboxEvent {
            op: "delete",
            mark: None,
            at: None,
            seqs,
            all_up_to,
            through: None,
            changed: Some(change.seqs.len()),
            counts: &change.counts,
        };
        Self::build(user, except_client, false, change.counts, wire)
    }

    /// `prune`: retention removed every notification up to `through`.
    pub fn pruned(pruned: &PrunedInbox) -> Self {
        let wire = WireInboxEvent {
            op: "prune",
            mark: None,
            at: None,
            seqs: None,
            all_up_to: None,
            through: Some(pruned.through),
            // Every seq up to `through` is gone: that says it all.
            changed: None,
            counts: &pruned.counts,
        };
        Self::build(pruned.user.clone(), None, false, pruned.counts, wire)
    }

    /// A change by seqs lists the seqs changed; "all up to N" gives N (the seqs could be many:
    /// every notification up to N is in the new state now).
    fn selected<'a>(selection: &Selection, change: &'a InboxChange) -> (Option<&'a [Seq]>, Option<Seq>) {
        match selection {
            Selection::Seqs(_) => (Some(&change.seqs), None),
            Selection::AllUpTo(n) => (None, Some(*n)),
        }
    }

    /// The event's JSON object, on one line: the `data:` of an SSE `inbox` event.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            // Only an `append` event is made without its JSON.
            let seqs = &*self.appended_seqs;
            serialize(&WireInboxEvent {
                op: "append",
                mark: None,
                at: None,
                seqs: Some(seqs),
                all_up_to: None,
                through: None,
                changed: Some(seqs.len()),
                counts: &self.counts,
            })
        })
    }

    /// Whether the client `client` gets this event; `follows` says whether it follows counts.
    pub fn is_for(&self, client: &ClientId, follows: bool) -> bool {
        (follows || !self.followers_only) && self.except_client.as_ref() != Some(client)
    }
}

fn serialize(wire: &WireInboxEvent<'_>) -> Bytes {
    Bytes::from(serde_json::to_vec(wire).expect("an inbox event always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_idempotent_and_read_implies_seen() {
        let fresh = ItemState::default();
        let read = fresh.marked(Mark::Read, 5).unwrap();
        assert_eq!(read, ItemState { seen_at_ms: Some(5), read_at_ms: Some(5), archived_at_ms: None });
        assert_eq!(read.marked(Mark::Read, 9), None, "read twice changes nothing");
        assert_eq!(read.marked(Mark::Seen, 9), None);
        let unread = read.marked(Mark::Unread, 7).unwrap();
        assert_eq!(unread, ItemState { seen_at_ms: Some(5), read_at_ms: None, archived_at_ms: None });
        assert_eq!(fresh.marked(Mark::Unread, 1), None);
        assert_eq!(fresh.marked(Mark::Unarchived, 1), None);
        let archived = unread.marked(Mark::Archived, 8).unwrap();
        assert!(archived.is_in(InboxStatus::Archived) && !archived.is_in(InboxStatus::All));
        assert_eq!(archived.marked(Mark::Unarchived, 9), Some(unread));
    }

    #[test]
    fn weights_follow_the_statuses() {
        let fresh = ItemState::default();
        assert_eq!(fresh.weight(), CountsDelta { total: 1, unread: 1, unseen: 1, archived: 0 });
        let archived = fresh.marked(Mark::Archived, 1).unwrap();
        assert_eq!(archived.weight(), CountsDelta { total: 0, unread: 0, unseen: 0, archived: 1 });
        let read = fresh.marked(Mark::Read, 1).unwrap();
        assert_eq!(
            CountsDelta::between(Some(&fresh), Some(&read)),
            CountsDelta { total: 0, unread: -1, unseen: -1, archived: 0 }
        );
        assert_eq!(CountsDelta::between(Some(&read), None), CountsDelta { total: -1, ..Default::default() });
        let mut counts = InboxCounts::default();
        counts.apply(CountsDelta::between(None, Some(&fresh)));
        assert_eq!(counts, InboxCounts { unread: 1, unseen: 1, total: 1, archived: 0, version: 1 });
    }

    /// `POST …/inbox/mark` reads `"as"` with serde: its names must be the ones events send.
    #[test]
    fn marks_deserialize_from_their_wire_names() {
        for mark in Mark::ALL {
            let name = serde_json::Value::from(mark.as_str());
            assert_eq!(serde_json::from_value::<Mark>(name).unwrap(), mark);
        }
        assert!(serde_json::from_value::<Mark>("Read".into()).is_err(), "names are lowercase only");
    }

    /// Only a store bug takes a count below zero; debug builds stop there rather than hide it.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the store miscounted")]
    fn a_count_below_zero_is_a_bug_in_debug_builds() {
        InboxCounts::default().apply(CountsDelta { unread: -1, ..CountsDelta::default() });
    }

    #[test]
    fn events_are_serialized_once_in_their_wire_form() {
        let user = UserId::new("alice").unwrap();
        let counts = InboxCounts { unread: 2, unseen: 1, total: 5, archived: 1, version: 9 };
        let change = InboxChange { seqs: vec![3, 4], counts };
        let marked = InboxEvent::marked(
            user.clone(),
            &Selection::Seqs(vec![3, 4, 8]),
            Mark::Read,
            0,
            &change,
            Some(ClientId::new("c1").unwrap()),
        );
        assert_eq!(
            std::str::from_utf8(marked.json()).unwrap(),
            r#"{"op":"mark","as":"read","at":"1970-01-01T00:00:00Z","seqs":[3,4],"changed":2,"counts":{"unread":2,"unseen":1,"total":5,"archived":1,"version":9}}"#
        );
        assert!(!marked.is_for(&ClientId::new("c1").unwrap(), true));
        assert!(marked.is_for(&ClientId::new("c2").unwrap(), false));
        let all = InboxEvent::deleted(user.clone(), &Selection::AllUpTo(8), &change, None);
        assert_eq!(
            std::str::from_utf8(all.json()).unwrap(),
            r#"{"op":"delete","all_up_to":8,"changed":2,"counts":{"unread":2,"unseen":1,"total":5,"archived":1,"version":9}}"#
        );
        let appended = InboxEvent::appended(user.clone(), &[10], counts);
        assert_eq!(
            std::str::from_utf8(appended.json()).unwrap(),
            r#"{"op":"append","seqs":[10],"changed":1,"counts":{"unread":2,"unseen":1,"total":5,"archived":1,"version":9}}"#
        );
        assert!(appended.is_for(&ClientId::new("c2").unwrap(), true));
        assert!(!appended.is_for(&ClientId::new("c2").unwrap(), false), "append events only for followers");
        let pruned = InboxEvent::pruned(&PrunedInbox { user, through: 7, counts });
        assert_eq!(
            std::str::from_utf8(pruned.json()).unwrap(),
            r#"{"op":"prune","through":7,"counts":{"unread":2,"unseen":1,"total":5,"archived":1,"version":9}}"#
        );
    }
}

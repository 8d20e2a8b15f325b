//! [`Inbox`]: the service that reads and changes users' inboxes and tells their clients, next
//! to the [`crate::Notifier`] (which hands one out), on the same store and bus.
//!
//! What it speaks (states, counts, selections, `inbox` events) is [`crate::inbox`]'s
//! vocabulary; what it checks before the store is asked (page length, `type`, selections) is
//! checked here only, and each refusal is an [`InboxError`] variant of its own, so a caller (the
//! HTTP API) can answer it without checking again.

use std::sync::Arc;

use crate::bus::{Bus, BusError};
use crate::ids::{ClientId, UserId};
use crate::inbox::{
    INBOX_PAGE_LEN_MAX, InboxChange, InboxCounts, InboxEvent, InboxPage, InboxQuery, MARK_SEQS_MAX, Mark,
    Selection,
};
use crate::notification::{KIND_BYTES_MAX, now_ms};
use crate::store::{PruneReport, Store, StoreError};

/// Why an inbox read or change was refused or failed. All but `Store` and `Bus` are the caller's
/// fault and changed nothing; `Store` and `Bus` are the server's.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A page of 0 or more than [`INBOX_PAGE_LEN_MAX`] notifications.
    #[error("`limit` must be 1 to {max}, not {limit}")]
    LimitOutOfRange { limit: usize, max: usize },
    /// A `type` filter that is empty or longer than [`KIND_BYTES_MAX`]: no notification has it.
    #[error("`type` must be 1 to {max} bytes long, not {bytes}")]
    InvalidKind { bytes: usize, max: usize },
    /// A selection by seqs that names none.
    #[error("`seqs` must not be empty")]
    NoSeqs,
    /// A selection by seqs that names more than [`MARK_SEQS_MAX`].
    #[error("{count} seqs in one request; at most {max} are allowed")]
    TooManySeqs { count: usize, max: usize },
    /// "All up to N" with a mark that undoes a state (`unread`, `unarchived`): those take only
    /// seqs one names (see [`Mark::applies_to_all`]).
    #[error("all_up_to takes \"as\": \"read\", \"seen\" or \"archived\", not {:?}", .mark.as_str())]
    MarkOnlyBySeqs { mark: Mark },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What a mark or delete through [`Inbox`] did.
#[derive(Debug, Clone)]
pub struct InboxUpdate {
    pub change: InboxChange,
    /// The event describing the change; sent to the user's clients only if something changed.
    /// Its JSON is also the HTTP answer.
    pub event: Arc<InboxEvent>,
    /// Clients of this node it was handed to.
    pub delivered: u64,
}

/// Reads and changes users' inboxes, and tells their clients. Cheap to clone; get one from
/// [`crate::Notifier::inbox`].
#[derive(Clone)]
pub struct Inbox {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Self { store, bus }
    }

    /// A page of `user`'s inbox, newest first, with the counts.
    pub async fn list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, InboxError> {
        if let Some(kind) = &query.kind
            && (kind.is_empty() || kind.len() > KIND_BYTES_MAX)
        {
            return Err(InboxError::InvalidKind { bytes: kind.len(), max: KIND_BYTES_MAX });
        }
        if query.limit == 0 || query.limit > INBOX_PAGE_LEN_MAX {
            return Err(InboxError::LimitOutOfRange { limit: query.limit, max: INBOX_PAGE_LEN_MAX });
        }
        Ok(self.store.inbox_list(user, query).await?)
    }

    /// `user`'s counts (O(1): kept by the store, not counted).
    pub async fn counts(&self, user: &UserId) -> Result<InboxCounts, InboxError> {
        Ok(self.store.inbox_counts(user).await?)
    }

    /// Marks the selected notifications of `user`, then sends an `inbox` event to every client of
    /// the user but `except_client` (if anything changed).
    pub async fn mark(
        &self,
        user: &UserId,
        selection: Selection,
        mark: Mark,
        except_client: Option<ClientId>,
    ) -> Result<InboxUpdate, InboxError> {
        let selection = check_selection(selection)?;
        if matches!(selection, Selection::AllUpTo(_)) && !mark.applies_to_all() {
            return Err(InboxError::MarkOnlyBySeqs { mark });
        }
        let at_ms = now_ms();
        let change = self.store.inbox_mark(user, &selection, mark, at_ms).await?;
        let event = InboxEvent::marked(user.clone(), &selection, mark, at_ms, &change, except_client);
        self.send(change, event).await
    }

    /// Deletes the selected notifications of `user` (they are not replayed any more, and no
    /// client is told to `reset`), then sends an `inbox` event as [`Inbox::mark`] does.
    pub async fn delete(
        &self,
        user: &UserId,
        selection: Selection,
        except_client: Option<ClientId>,
    ) -> Result<InboxUpdate, InboxError> {
        let selection = check_selection(selection)?;
        let change = self.store.inbox_delete(user, &selection).await?;
        let event = InboxEvent::deleted(user.clone(), &selection, &change, except_client);
        self.send(change, event).await
    }

    /// Applies retention (see [`Store::prune`]) and sends a `prune` event to the clients of
    /// every user who lost notifications, with their new counts.
    pub async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let report = self.store.prune(now_ms).await?;
        for pruned in &report.inboxes {
            if let Err(error) = self.bus.publish_inbox(Arc::new(InboxEvent::pruned(pruned))).await {
                tracing::warn!(%error, user = %pruned.user, "cannot send an inbox prune event");
            }
        }
        Ok(report)
    }

    async fn send(&self, change: InboxChange, event: InboxEvent) -> Result<InboxUpdate, InboxError> {
        let event = Arc::new(event);
        let delivered =
            if change.seqs.is_empty() { 0 } else { self.bus.publish_inbox(Arc::clone(&event)).await? };
        Ok(InboxUpdate { change, event, delivered })
    }
}

/// Refuses selections over [`MARK_SEQS_MAX`] or empty; drops duplicate seqs.
fn check_selection(selection: Selection) -> Result<Selection, InboxError> {
    match selection {
        Selection::Seqs(mut seqs) => {
            if seqs.is_empty() {
                return Err(InboxError::NoSeqs);
            }
            if seqs.len() > MARK_SEQS_MAX {
                return Err(InboxError::TooManySeqs { count: seqs.len(), max: MARK_SEQS_MAX });
            }
            seqs.sort_unstable();
            seqs.dedup();
            Ok(Selection::Seqs(seqs))
        }
        all => Ok(all),
    }
}

//! [`MemoryStore`]: every user's log in memory, for `herald serve --memory` and tests.
//!
//! Everything lives behind one `parking_lot::Mutex`, taken only for short, synchronous work and
//! never held across an `.await`; that one lock is what makes an `append` atomic and its seqs
//! gap-free, and what lets two concurrent appends with one idempotency key store exactly once.
//! It keeps the same [`Retention`] as [`crate::SqliteStore`], with the same rule: a log always
//! holds a contiguous run of seqs, `pruned_through + 1 ..= last_seq`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, LogHead, LogPage, NewNotification, Notification, PruneReport, Receipt, ReceiptEntry, Retention,
    Seq, Store, StoreError, UserId,
};
use parking_lot::Mutex;

/// Users whose logs one `prune` examines per hold of the lock. At the bound the lock is released
/// and taken again, so that publishes waiting for it get in between and a prune of many users
/// never stalls them for long.
const PRUNE_USERS_PER_LOCK: usize = 1_000;

/// A store that keeps everything in memory and loses it all when dropped.
#[derive(Debug)]
pub struct MemoryStore {
    retention: Retention,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserLog>,
    idempotency: HashMap<String, IdempotencyRecord>,
}

#[derive(Debug, Default)]
struct UserLog {
    head: LogHead,
    /// Seqs `head.pruned_through + 1 ..= head.last_seq`, oldest first, no gap.
    entries: VecDeque<Arc<Notification>>,
}

impl UserLog {
    /// Removes every entry with seq <= `through` and raises `pruned_through` to `through`
    /// (never lowers it). Returns how many entries went.
    fn prune_through(&mut self, through: Seq) -> u64 {
        if through <= self.head.pruned_through {
            return 0;
        }
        let keep_from = self.entries.partition_point(|n| n.seq.unwrap_or(0) <= through);
        self.entries.drain(..keep_from);
        self.head.pruned_through = through;
        keep_from as u64
    }
}

#[derive(Debug)]
struct IdempotencyRecord {
    created_at_ms: i64,
    receipt: Receipt,
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        Self { retention, inner: Mutex::new(Inner::default()) }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        let now = now_ms();
        let key_valid_from = crate::cutoff_ms(now, self.retention.idempotency_window);
        let mut inner = self.inner.lock();
        if let Some(key) = idempotency_key
            && let Some(record) = inner.idempotency.get(key)
            && record.created_at_ms >= key_valid_from
        {
            return Ok(Appended::Duplicate(record.receipt.clone()));
        }

        let mut stored = Vec::with_capacity(entries.len());
        for entry in entries {
            let log = inner.users.entry(entry.user.clone()).or_default();
            log.head.last_seq += 1;
            let notification = Arc::new(Notification::new(
                entry.user,
                Some(log.head.last_seq),
                entry.kind,
                entry.data,
                entry.created_at_ms,
                entry.audience,
            ));
            log.entries.push_back(Arc::clone(&notification));
            // Enforced per entry rather than per user at the end: a log never holds more than
            // `max_per_user`, even for a moment, and the result is the same.
            let bound = log.head.last_seq.saturating_sub(self.retention.max_per_user);
            log.prune_through(bound);
            stored.push(notification);
        }

        if let Some(key) = idempotency_key {
            let receipt = Receipt {
                notifications: stored
                    .iter()
                    .map(|n| ReceiptEntry { user: n.user.clone(), seq: n.seq.unwrap_or(0) })
                    .collect(),
                delivered: 0,
            };
            inner.idempotency.insert(key.to_owned(), IdempotencyRecord { created_at_ms: now, receipt });
        }
        Ok(Appended::Stored(stored))
    }

    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        // A key already pruned has nothing to complete; a later repeat is then a new publish,
        // which is what the window promises anyway.
        if let Some(record) = self.inner.lock().idempotency.get_mut(idempotency_key) {
            record.receipt = receipt.clone();
        }
        Ok(())
    }

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.users.get(user) else {
            return Ok(LogPage::default());
        };
        let from = log.entries.partition_point(|n| n.seq.unwrap_or(0) <= after);
        let notifications = log.entries.iter().skip(from).take(limit).cloned().collect();
        Ok(LogPage { notifications, head: log.head })
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        Ok(self.inner.lock().users.get(user).map(|log| log.head).unwrap_or_default())
    }

    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let mut report = PruneReport::default();

        let users: Vec<UserId> = self.inner.lock().users.keys().cloned().collect();
        for chunk in users.chunks(PRUNE_USERS_PER_LOCK) {
            let mut inner = self.inner.lock();
            for user in chunk {
                let Some(log) = inner.users.get_mut(user) else { continue };
                // The newest expired entry, not the first unexpired one: `created_at` need not
                // grow with seq (clocks step back), and retention only removes a prefix, so
                // everything up to the newest expired entry goes with it.
                let through = log
                    .entries
                    .iter()
                    .rev()
                    .find(|n| n.created_at_ms < notifications_before)
                    .and_then(|n| n.seq);
                if let Some(through) = through {
                    report.notifications += log.prune_through(through);
                }
            }
        }

        let mut inner = self.inner.lock();
        let before = inner.idempotency.len();
        inner.idempotency.retain(|_, record| record.created_at_ms >= keys_before);
        report.idempotency_keys = (before - inner.idempotency.len()) as u64;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn make(retention: Retention) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new(retention))
    }

    crate::conformance_tests!(make);
}

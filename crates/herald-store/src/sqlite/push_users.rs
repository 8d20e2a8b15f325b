//! Which users may have a push subscription: a fixed bit set in memory, so that a publish to
//! users who have none (most users, most of the time) does no push work at all on the writer
//! thread: no push request serialized, no marker statement, no look-up of
//! `push_subscriptions`.
//!
//! Why: with push on (a VAPID key), the append's marker statement (`mark_pushes`: a JSON array
//! of the entries, `json_each`, one index look-up per entry) cost 4–12 % of the server's CPU per
//! delivery at full load and 2–8 % at 1,000 publishes/s with no user subscribed (docs/BENCHMARKS.md,
//! "What Web Push costs a publish").
//!
//! A user's bit is set before its subscription is written, and never cleared while the store is
//! open (an unsubscribe, a subscription evicted or removed on 404/410 leaves it set); the set
//! is rebuilt from `push_subscriptions` when the store opens. So a clear bit proves the user
//! has no subscription, and a set one (that, another user hashing to the same bit, or a user
//! who unsubscribed) only means "ask the database", which the marker statement does anyway:
//! the filter can cost a look-up, never a push. Exact for SQLite because this process is the
//! only writer of the file (the lock file); PostgreSQL, written by every node, has none.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the filter: 128 KiB, whatever the number of users. With `n` users subscribed, a
/// user without a subscription finds its bit set (and costs a look-up) with probability about
/// `n / 2^20`: 1 % at 10,000 subscribed users, 10 % at 100,000.
pub const PUSH_USERS_FILTER_BITS: usize = 1 << 20;

pub(super) struct PushUsers {
    bits: Box<[AtomicU64]>,
    /// Keyed at random per store: user ids cannot be chosen to collide on purpose (which would
    /// only cost look-ups anyway).
    hasher: RandomState,
}

impl std::fmt::Debug for PushUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: u32 = self.bits.iter().map(|word| word.load(Ordering::Relaxed).count_ones()).sum();
        f.debug_struct("PushUsers").field("bits_set", &set).finish()
    }
}

impl Default for PushUsers {
    fn default() -> Self {
        let bits = (0..PUSH_USERS_FILTER_BITS / 64).map(|_| AtomicU64::new(0)).collect();
        Self { bits, hasher: RandomState::new() }
    }
}

impl PushUsers {
    fn slot(&self, user: &str) -> (usize, u64) {
        let bit = (self.hasher.hash_one(user) as usize) & (PUSH_USERS_FILTER_BITS - 1);
        (bit / 64, 1 << (bit % 64))
    }

    /// `user` may have a subscription from now on. Called before the subscription is written:
    /// a publish whose check comes after it sees the bit (a subscribe that fails leaves it set,
    /// which costs a look-up, nothing more).
    pub fn insert(&self, user: &str) {
        let (word, mask) = self.slot(user);
        self.bits[word].fetch_or(mask, Ordering::Relaxed);
    }

    /// `false`: `user` has no push subscription. `true`: it may have one.
    pub fn may_have(&self, user: &str) -> bool {
        let (word, mask) = self.slot(user);
        self.bits[word].load(Ordering::Relaxed) & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_in_once_inserted_and_most_others_are_not() {
        let users = PushUsers::default();
        assert!(!users.may_have("alice"));
        users.insert("alice");
        assert!(users.may_have("alice"));
        // 1,000 users who never subscribed, with one subscribed: at most a handful share its bit.
        let false_positives = (0..1_000).filter(|i| users.may_have(&format!("user-{i}"))).count();
        assert!(false_positives <= 2, "{false_positives} of 1,000 users share alice's bit");
    }
}

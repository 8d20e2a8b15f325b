//! Sign-out is revocation: [`Revocations`], the deny-list of closed sessions that every
//! subscriber request is checked against.
//!
//! Closing a session (`DELETE /v1/users/{u}/sessions/{s}`) or all of a user's sessions ends the
//! clients connected now; a revocation makes it stick: from then on a token of that user (and
//! session) *issued at or before the close* is refused, while a token issued later (a new
//! sign-in) works. A token's issue time is its `iat` claim, in whole seconds; so is the close
//! time. A token issued in the same second as the close is refused too (`iat <= closed_at`):
//! one second cannot tell which came first, and refusing errs on the safe side. A new sign-in in
//! that second with the same session id is refused until the app mints it a fresh token (or uses
//! a new session id, which a close of another session does not touch).
//!
//! Revocations live in the [`Store`] (they survive restarts and every node sees them), and are
//! forgotten by retention once every token they refuse has expired anyway (the longest token
//! lifetime is bounded: [`crate::Retention::revocation_window`]). Reading them costs a store read,
//! so each user's list is cached here; the cache is bounded ([`REVOCATION_CACHE_USERS_MAX`]) and
//! exact on one node: a revocation made through this handle replaces its user's entry. In a
//! cluster, a revocation made on another node reaches this one with that node's session close
//! (over the bus), which makes the server call [`Revocations::forget`]; when such a message may
//! have been lost (the bus was away), it calls [`Revocations::forget_all`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ids::{SessionId, UserId};
use crate::store::{Revocation, Store, StoreError};

/// Users whose revocations are cached (signed out or not: "none" is cached too). At the bound an
/// arbitrary entry is dropped to make room; that user's next request reads the store again. At
/// about 100 bytes an entry (more for users with many closed sessions), 100,000 users take
/// about 10 MB.
pub const REVOCATION_CACHE_USERS_MAX: usize = 100_000;

/// The deny-list of closed sessions, cached over a [`Store`]. Cheap to share (`Arc` it).
pub struct Revocations {
    store: Arc<dyn Store>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("cached_users", &self.cache.lock().users.len()).finish()
    }
}

#[derive(Default)]
struct Cache {
    users: HashMap<UserId, Arc<[Revocation]>>,
    /// While set, nothing is cached: every check reads the store (closes made on other nodes
    /// may not be heard of now, see [`Revocations::pause_cache`]).
    paused: bool,
    /// Grows with every revocation made here. A reader that missed the cache notes it before
    /// reading the store and fills the cache only if it has not moved since: otherwise its read
    /// may predate a revocation that already replaced the entry, and must not put it back.
    version: u64,
}

impl Revocations {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, cache: Mutex::new(Cache::default()) }
    }

    /// Records that `user`'s `session` (all sessions with `None`) was closed at `closed_at_secs`;
    /// once this returns, [`Revocations::is_revoked`] refuses the tokens issued until then.
    pub async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        self.store.revoke(user, session, closed_at_secs).await?;
        let mut cache = self.cache.lock();
        cache.version += 1;
        cache.users.remove(user);
        Ok(())
    }

    /// Whether a token of `user` and `session` issued at `issued_at_secs` was revoked: a close
    /// of that session, or of all the user's sessions, at or after the time it was issued.
    pub async fn is_revoked(
        &self,
        user: &UserId,
        session: &SessionId,
        issued_at_secs: u64,
    ) -> Result<bool, StoreError> {
        let revocations = self.of(user).await?;
        Ok(revocations.iter().any(|r| {
            r.session.as_ref().is_none_or(|closed| closed == session) && issued_at_secs <= r.closed_at_secs
        }))
    }

    /// `user`'s revocations, from the cache or else the store.
    async fn of(&self, user: &UserId) -> Result<Arc<[Revocation]>, StoreError> {
        let version = {
            let cache = self.cache.lock();
            if let Some(revocations) = cache.users.get(user) {
                return Ok(Arc::clone(revocations));
            }
            cache.version
        };
        let revocations: Arc<[Revocation]> = self.store.revocations(user).await?.into();
        let mut cache = self.cache.lock();
        if cache.version == version && !cache.paused {
            if cache.users.len() >= REVOCATION_CACHE_USERS_MAX
                && let Some(evicted) = cache.users.keys().next().cloned()
            {
                cache.users.remove(&evicted);
            }
            cache.users.insert(user.clone(), Arc::clone(&revocations));
        }
        Ok(revocations)
    }

    /// Drops `user`'s cached revocations: another node revoked some. The next check reads the
    /// store.
    pub fn forget(&self, user: &UserId) {
        let mut cache = self.cache.lock();
        cache.version += 1;
        cache.users.remove(user);
    }

    /// Drops every cached revocation: revocations made elsewhere may have been missed. Ends a
    /// [`Revocations::pause_cache`].
    pub fn forget_all(&self) {
        let mut cache = self.cache.lock();
        cache.version += 1;
        cache.users = HashMap::new();
        cache.paused = false;
    }

    /// Drops every cached revocation and caches none until [`Revocations::forget_all`]: while
    /// closes made on other nodes may not reach this one (the bus is away, a node is silent),
    /// every check reads the store.
    pub fn pause_cache(&self) {
        let mut cache = self.cache.lock();
        cache.version += 1;
        cache.users = HashMap::new();
        cache.paused = true;
    }

    /// Users cached now (for tests and metrics).
    pub fn cached_users(&self) -> usize {
        self.cache.lock().users.len()
    }
}

//! [`KeyedLimiter`]: a bounded table of keys (client addresses, users), each with a request rate
//! (a token bucket) and a count of open connections.
//!
//! Why not the `governor` crate: its keyed limiters only rate requests; the per-address count
//! of open streams needs a table of its own anyway, and governor's table has no size bound (it
//! must be pruned by hand with `retain_recent`). Both fit in one entry of 16 bytes here, in one
//! table with a hard bound and a stated eviction, and the bucket itself is a dozen lines.
//!
//! The bucket is GCRA (the "generic cell rate algorithm", a token bucket kept as one number):
//! each key keeps `tat`, the time at which its bucket will be full again. A request at `now`
//! moves it to `max(tat, now) + interval` and is allowed if that is at most `burst × interval`
//! ahead of `now`. An entry whose `tat` has passed and that holds no connection is the same as
//! no entry at all, which is what makes forgetting idle entries free.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A sustained rate with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time between two requests at the sustained rate.
    interval_nanos: u64,
    /// How far ahead of now a key's `tat` may be: `burst × interval`.
    tolerance_nanos: u64,
}

impl Rate {
    /// `per_sec` requests a second, `burst` at once after a quiet period; `None` if `per_sec`
    /// is 0 (no limit). A burst below 1 is taken as 1.
    pub fn new(per_sec: u32, burst: u32) -> Option<Self> {
        (per_sec > 0).then(|| {
            let interval_nanos = 1_000_000_000 / u64::from(per_sec);
            Self { interval_nanos, tolerance_nanos: interval_nanos * u64::from(burst.max(1)) }
        })
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over its rate: the next request is allowed after this long.
    Rate { retry_after: Duration },
    /// It already holds the most connections allowed.
    Connections,
    /// The table is full of keys that hold connections; nothing could be forgotten.
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the bucket is full again, in nanoseconds since the limiter's epoch.
    tat_nanos: u64,
    /// Connections open under this key.
    open: u32,
}

impl Entry {
    /// An idle entry is indistinguishable from an absent one.
    fn is_idle(&self, now_nanos: u64) -> bool {
        self.open == 0 && self.tat_nanos <= now_nanos
    }
}

/// A rate and a connection count per key, in a table of at most `entries_max` keys.
///
/// At the bound, entries that are idle (full bucket, no connection) are dropped first, which
/// loses nothing; if that frees less than an eighth of the table, the entries without open
/// connections whose buckets refill soonest go too, until an eighth is free: those keys get a
/// full burst again (a forgiven debt of at most one burst each). Entries that hold connections
/// are never dropped, as their connections must be counted down; if every entry holds one, a
/// new key is refused ([`Refusal::TableFull`]). Eviction scans the table once per eighth of it
/// filled, so it costs O(1) per new key on average.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Option<Rate>,
    /// 0: connections are not counted.
    open_max: u32,
    entries_max: usize,
    epoch: Instant,
    table: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Copy> KeyedLimiter<K> {
    /// A limiter with `rate` (`None`: none) and at most `open_max` connections per key (0: not
    /// counted), keeping at most `entries_max` keys.
    pub fn new(rate: Option<Rate>, open_max: u32, entries_max: usize) -> Arc<Self> {
        Arc::new(Self {
            rate,
            open_max,
            entries_max: entries_max.max(8),
            epoch: Instant::now(),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this limiter limits anything.
    pub fn is_active(&self) -> bool {
        self.rate.is_some() || self.open_max > 0
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one request of `key` against its rate.
    pub fn request(&self, key: K) -> Result<(), Refusal> {
        if self.rate.is_none() {
            return Ok(());
        }
        self.take(key, false)
    }

    /// Counts one request of `key` against its rate and opens a connection under it: the
    /// connection is counted until the returned [`OpenSlot`] is dropped.
    pub fn open(self: &Arc<Self>, key: K) -> Result<Option<OpenSlot<K>>, Refusal> {
        if !self.is_active() {
            return Ok(None);
        }
        let counted = self.open_max > 0;
        self.take(key, counted)?;
        Ok(counted.then(|| OpenSlot { limiter: self.clone(), key }))
    }

    fn take(&self, key: K, open_one: bool) -> Result<(), Refusal> {
        let now = self.now_nanos();
        let mut table = self.table.lock();
        if table.len() >= self.entries_max && !table.contains_key(&key) {
            self.make_room(&mut table, now);
            if table.len() >= self.entries_max {
                return Err(Refusal::TableFull);
            }
        }
        let entry = table.entry(key).or_insert(Entry { tat_nanos: 0, open: 0 });
        if open_one && entry.open >= self.open_max {
            return Err(Refusal::Connections);
        }
        if let Some(rate) = self.rate {
            let tat = entry.tat_nanos.max(now) + rate.interval_nanos;
            if tat - now > rate.tolerance_nanos {
                let retry_after = Duration::from_nanos(tat - now - rate.tolerance_nanos);
                return Err(Refusal::Rate { retry_after });
            }
            entry.tat_nanos = tat;
        }
        if open_one {
            entry.open += 1;
        }
        Ok(())
    }

    fn release(&self, key: K) {
        let now = self.now_nanos();
        let mut table = self.table.lock();
        if let Some(entry) = table.get_mut(&key) {
            entry.open = entry.open.saturating_sub(1);
            if entry.is_idle(now) {
                table.remove(&key);
            }
        }
    }

    /// Frees at least an eighth of the table if it can (see the type's doc).
    fn make_room(&self, table: &mut HashMap<K, Entry>, now: u64) {
        table.retain(|_, entry| !entry.is_idle(now));
        let target = self.entries_max - self.entries_max / 8;
        if table.len() <= target {
            return;
        }
        let mut candidates: Vec<(u64, K)> =
            table.iter().filter(|(_, e)| e.open == 0).map(|(k, e)| (e.tat_nanos, *k)).collect();
        let excess = (table.len() - target).min(candidates.len());
        if excess == 0 {
            return;
        }
        candidates.select_nth_unstable_by_key(excess - 1, |(tat, _)| *tat);
        for (_, key) in &candidates[..excess] {
            table.remove(key);
        }
    }

    /// Drops every idle entry (they are the same as absent ones); run periodically so the
    /// table stays small when the load is gone.
    pub fn sweep(&self) {
        let now = self.now_nanos();
        self.table.lock().retain(|_, entry| !entry.is_idle(now));
    }

    /// Keys in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().len()
    }
}

/// A connection counted under a key; dropping it counts it down.
#[derive(Debug)]
pub struct OpenSlot<K: Hash + Eq + Copy> {
    limiter: Arc<KeyedLimiter<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for OpenSlot<K> {
    fn drop(&mut self) {
        self.limiter.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = KeyedLimiter::<u32>::new(Rate::new(1, 3), 0, 100);
        for _ in 0..3 {
            limiter.request(1).unwrap();
        }
        match limiter.request(1) {
            Err(Refusal::Rate { retry_after }) => {
                assert!(
                    retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        // Another key has its own bucket.
        limiter.request(2).unwrap();
    }

    #[test]
    fn connections_are_counted_until_their_slot_drops() {
        let limiter = KeyedLimiter::<u32>::new(None, 2, 100);
        let a = limiter.open(1).unwrap();
        let b = limiter.open(1).unwrap();
        assert_eq!(limiter.open(1).unwrap_err(), Refusal::Connections);
        drop(a);
        let c = limiter.open(1).unwrap();
        drop((b, c));
        // No connection and no rate: the entry is gone.
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn a_full_table_forgets_keys_without_connections_and_never_those_with() {
        let limiter = KeyedLimiter::<u32>::new(Rate::new(1, 1), 1, 16);
        let held: Vec<_> = (0..8).map(|k| limiter.open(k).unwrap()).collect();
        for k in 8..16 {
            limiter.request(k).unwrap(); // each now owes a second: not idle
        }
        assert_eq!(limiter.len(), 16);
        // A new key evicts rate-only entries (the soonest to refill first), never connections.
        limiter.request(100).unwrap();
        assert!(limiter.len() <= 16);
        for k in 0..8 {
            assert_eq!(limiter.open(k).unwrap_err(), Refusal::Connections, "key {k} was forgotten");
        }
        drop(held);
        let limiter = KeyedLimiter::<u32>::new(None, 1, 8);
        let _held: Vec<_> = (0..8).map(|k| limiter.open(k).unwrap()).collect();
        assert_eq!(limiter.open(99).unwrap_err(), Refusal::TableFull);
    }

    #[test]
    fn an_inactive_limiter_keeps_nothing() {
        let limiter = KeyedLimiter::<u32>::new(Rate::new(0, 10), 0, 8);
        assert!(!limiter.is_active());
        for k in 0..100 {
            limiter.request(k).unwrap();
            assert!(limiter.open(k).unwrap().is_none());
        }
        assert_eq!(limiter.len(), 0);
    }
}

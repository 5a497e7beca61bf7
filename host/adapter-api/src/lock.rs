//! The lock adapter (PROTOCOL.md §8.6): named leases with a time to live, so that several
//! engines sharing one lock backend run a cron tick once.
//!
//! Contract, for every implementation:
//! * `try_acquire(key, owner, ttl_ms)` is `true` when `key` is free, its lease has lapsed, or
//!   `owner` already holds it; the lease then belongs to `owner` for `ttl_ms` from now (a
//!   holder's acquire renews). It is `false`, changing nothing, while another owner's lease is
//!   live.
//! * `release(key, owner)` ends the lease only if `owner` holds it, so a late release after a
//!   lapse cannot free a lease someone else took since. It returns whether it ended one.
//! * Owners are opaque strings; an engine uses one per process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{AdapterError, AdapterWorld};

/// A lock adapter. Calls may run concurrently.
#[async_trait]
pub trait LockStore: Send + Sync {
    /// Takes or renews the lease on `key` for `owner` (see the module docs).
    async fn try_acquire(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, AdapterError>;
    /// Ends `owner`'s lease on `key`; `false` when `owner` did not hold it.
    async fn release(&self, key: &str, owner: &str) -> Result<bool, AdapterError>;
}

/// The `lock-adapter` world of `iii:lock@0.1.0`.
pub struct LockWorld;
impl AdapterWorld for LockWorld {
    const WORLD: &'static str = "iii:lock/lock-adapter@0.1.0";
    type Store = dyn LockStore;
}

/// Leases in a map of this process: the builtin cron lock (`kv` / `local`). It coordinates the
/// callers of one engine only; engines that must fire a job once between them need a shared
/// backend.
#[derive(Default)]
pub struct LocalLocks {
    leases: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLocks {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leases are live now (lapsed ones are dropped on the way).
    pub fn live(&self) -> usize {
        let now = Instant::now();
        let mut m = self.leases.lock();
        m.retain(|_, (_, until)| *until > now);
        m.len()
    }
}

#[async_trait]
impl LockStore for LocalLocks {
    async fn try_acquire(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, AdapterError> {
        let now = Instant::now();
        let until = now + Duration::from_millis(ttl_ms);
        let mut m = self.leases.lock();
        // Lapsed leases are swept here so a table of one-off keys does not grow forever.
        if m.len() > 1024 {
            m.retain(|_, (_, u)| *u > now);
        }
        match m.get_mut(key) {
            Some((holder, u)) if *u > now && holder != owner => Ok(false),
            Some((holder, u)) => {
                owner.clone_into(holder);
                *u = until;
                Ok(true)
            }
            None => {
                m.insert(key.to_string(), (owner.to_string(), until));
                Ok(true)
            }
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, AdapterError> {
        let now = Instant::now();
        let mut m = self.leases.lock();
        match m.get(key) {
            Some((holder, until)) if holder == owner && *until > now => {
                m.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_owner_at_a_time_until_release_or_lapse() {
        let l = LocalLocks::new();
        assert!(l.try_acquire("cron:a", "e1", 60_000).await.unwrap());
        assert!(!l.try_acquire("cron:a", "e2", 60_000).await.unwrap());
        // The holder renews; other keys are independent.
        assert!(l.try_acquire("cron:a", "e1", 60_000).await.unwrap());
        assert!(l.try_acquire("cron:b", "e2", 60_000).await.unwrap());
        // Only the holder releases.
        assert!(!l.release("cron:a", "e2").await.unwrap());
        assert!(!l.try_acquire("cron:a", "e2", 60_000).await.unwrap());
        assert!(l.release("cron:a", "e1").await.unwrap());
        assert!(l.try_acquire("cron:a", "e2", 60_000).await.unwrap());
        assert_eq!(l.live(), 2);
    }

    #[tokio::test]
    async fn a_lapsed_lease_goes_to_the_next_owner_and_the_old_release_is_refused() {
        let l = LocalLocks::new();
        assert!(l.try_acquire("k", "e1", 20).await.unwrap());
        assert!(!l.try_acquire("k", "e2", 20).await.unwrap());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(l.live(), 0);
        assert!(l.try_acquire("k", "e2", 60_000).await.unwrap());
        assert!(
            !l.release("k", "e1").await.unwrap(),
            "e1's lease had lapsed"
        );
        assert!(!l.try_acquire("k", "e1", 60_000).await.unwrap());
    }
}

//! One async lock per key (branch name), so operations on one branch serialise while
//! different branches proceed in parallel.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::Mutex;

/// A lock per key, created on first use.
pub struct KeyedLocks<K> {
    locks: StdMutex<HashMap<K, Arc<Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            locks: StdMutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// The lock of `key`; hold its guard for the duration of the operation.
    pub fn of(&self, key: &K) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_same_lock() {
        let l = KeyedLocks::<String>::default();
        let a = l.of(&"dev".to_string());
        let _g = a.lock().await;
        assert!(l.of(&"dev".to_string()).try_lock().is_err());
        assert!(l.of(&"main".to_string()).try_lock().is_ok());
    }
}

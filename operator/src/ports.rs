//! Proxy listener ports: one per branch, stable for its life, unique in the cluster.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// First proxy listener port.
pub const FIRST: u16 = 20000;
/// Number of ports in the range (20000–29999).
pub const COUNT: u16 = 10000;

/// Hands out ports not used by any branch. Allocations are remembered until the branch's
/// status records them, so two branches reconciled at once never get the same port.
#[derive(Default)]
pub struct Ports {
    reserved: Mutex<BTreeSet<u16>>,
}

impl Ports {
    /// A free port for the branch with this uid, given the ports branches' statuses
    /// already hold. The search starts at a point derived from the uid, so a branch
    /// usually gets the same port again if its status was lost.
    pub fn allocate(&self, uid: &str, in_use: &BTreeSet<u16>) -> Option<u16> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let start = (fnv1a(uid.as_bytes()) % COUNT as u64) as u16;
        let port = (0..COUNT)
            .map(|i| FIRST + (start + i) % COUNT)
            .find(|p| !in_use.contains(p) && !reserved.contains(p))?;
        reserved.insert(port);
        Some(port)
    }

    /// Forgets reservations the branches' statuses now hold (or no longer need).
    pub fn settle(&self, in_use: &BTreeSet<u16>) {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| !in_use.contains(p));
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_in_range() {
        let ports = Ports::default();
        let mut in_use = BTreeSet::new();
        let a = ports.allocate("uid-a", &in_use).unwrap();
        // The same uid before its status is written gets another port, never a clash.
        let b = ports.allocate("uid-a", &in_use).unwrap();
        assert_ne!(a, b);
        assert!((FIRST..FIRST + COUNT).contains(&a));
        in_use.insert(a);
        ports.settle(&in_use);
        let c = ports.allocate("uid-a", &in_use).unwrap();
        assert!(c != a && c != b);
    }

    #[test]
    fn exhaustion_is_reported() {
        let ports = Ports::default();
        let in_use: BTreeSet<u16> = (FIRST..FIRST + COUNT).collect();
        assert_eq!(ports.allocate("x", &in_use), None);
    }
}

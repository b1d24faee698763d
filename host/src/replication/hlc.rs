//! Hybrid logical clocks: wall-clock milliseconds plus a counter.
//!
//! A timestamp issued after a node has seen another timestamp is always later than it, even when the
//! two nodes' wall clocks disagree; between nodes whose clocks agree, the order is the wall-clock
//! order. Ties (same wall time and counter on two nodes) are broken by node id, so every pair of
//! writes is ordered the same way everywhere: that is what makes last-writer-wins converge.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Mutex;

/// A hybrid logical timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest wall time seen).
    pub wall_ms: u64,
    /// Orders events within one millisecond.
    pub counter: u32,
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall_ms, self.counter).cmp(&(other.wall_ms, other.counter))
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.counter)
    }
}

/// The version of a value: its timestamp, then its origin node for ties.
pub fn newer(a: (Hlc, &str), b: (Hlc, &str)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// Issues timestamps for one node.
#[derive(Debug, Default)]
pub struct HlcClock {
    last: Mutex<Hlc>,
}

impl HlcClock {
    /// A clock that has seen `last` (e.g. the newest timestamp in the store).
    pub fn new(last: Hlc) -> HlcClock {
        HlcClock { last: Mutex::new(last) }
    }

    /// A timestamp for a local event at wall time `wall_ms`: later than every timestamp issued or
    /// observed before.
    pub fn now(&self, wall_ms: u64) -> Hlc {
        let mut last = self.last.lock().expect("hlc lock");
        let next = if wall_ms > last.wall_ms {
            Hlc { wall_ms, counter: 0 }
        } else {
            Hlc { wall_ms: last.wall_ms, counter: last.counter.saturating_add(1) }
        };
        *last = next;
        next
    }

    /// Take note of a timestamp from elsewhere, so later local events come after it.
    pub fn observe(&self, remote: Hlc) {
        let mut last = self.last.lock().expect("hlc lock");
        if remote > *last {
            *last = remote;
        }
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        *self.last.lock().expect("hlc lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_increase_even_when_the_wall_clock_does_not() {
        let c = HlcClock::default();
        let a = c.now(1000);
        let b = c.now(1000);
        let d = c.now(999); // the clock stepped back
        assert!(a < b && b < d);
        assert_eq!(d, Hlc { wall_ms: 1000, counter: 2 });
        assert_eq!(c.now(2000), Hlc { wall_ms: 2000, counter: 0 });
    }

    #[test]
    fn a_write_that_has_seen_another_is_later_despite_a_slow_clock() {
        let fast = HlcClock::default();
        let slow = HlcClock::default();
        let w1 = fast.now(10_000); // a node whose clock is 5 s ahead
        slow.observe(w1);
        let w2 = slow.now(5_000);
        assert!(w2 > w1, "{w2} must be later than {w1}");
    }

    #[test]
    fn ties_break_by_origin() {
        let t = Hlc { wall_ms: 5, counter: 0 };
        assert!(newer((t, "b"), (t, "a")));
        assert!(!newer((t, "a"), (t, "b")));
        assert!(!newer((t, "a"), (t, "a")));
    }
}

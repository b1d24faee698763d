//! Hybrid logical clocks: wall-clock milliseconds plus a counter.
//!
//! A timestamp issued after a node has seen another timestamp is always later than it, even when the
//! two nodes' wall clocks disagree; between nodes whose clocks agree, the order is the wall-clock
//! order. Ties (same wall time and counter on two nodes) are broken by node id, so every pair of
//! writes is ordered the same way everywhere: that is what makes last-writer-wins converge.
//!
//! The clock never runs away: a remote timestamp more than [`MAX_FUTURE_MS`] ahead of this node's
//! wall clock, or with a counter over [`MAX_COUNTER`], is refused rather than observed (a far-future
//! version would win every later write), a counter at its maximum moves the wall part instead, a
//! timestamp more than [`MAX_FUTURE_MS`] ahead of the wall clock is never issued, and a node whose
//! clock runs ahead of its peers' dates its writes by theirs (see [`HlcClock`]).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Mutex;

/// How far ahead of the local wall clock a timestamp may be, issued or observed.
pub const MAX_FUTURE_MS: u64 = 10 * 60 * 1000;
/// The largest counter: a clock whose counter reaches it moves its wall part on by a millisecond.
/// Ten million events within one millisecond only come from a broken or hostile peer.
pub const MAX_COUNTER: u32 = 10_000_000;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error("timestamp {stamp} is {ahead_s} s ahead of this node's clock (over the limit of {} s): a broken clock", MAX_FUTURE_MS / 1000)]
    TooFarAhead { stamp: Hlc, ahead_s: u64 },
    #[error("timestamp {0} has an absurd counter (over {MAX_COUNTER})")]
    AbsurdCounter(Hlc),
}

/// Whether `stamp` may be observed at wall time `wall_ms`.
pub fn check(stamp: Hlc, wall_ms: u64) -> Result<(), HlcError> {
    if stamp.wall_ms > wall_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(HlcError::TooFarAhead { stamp, ahead_s: (stamp.wall_ms - wall_ms) / 1000 });
    }
    if stamp.counter > MAX_COUNTER {
        return Err(HlcError::AbsurdCounter(stamp));
    }
    Ok(())
}

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
///
/// Two things keep a wrong wall clock from dating writes into the future:
/// - the *issue limit*: when peers' clocks can be measured (heartbeats), the wall part of a new
///   timestamp is at most their median plus the tolerated skew ([`HlcClock::set_peer_clock`]): a node
///   whose clock runs fast dates its writes by its peers' time, which they accept;
/// - timestamps more than [`MAX_FUTURE_MS`] ahead of the wall clock (the clock was fast and has been
///   put right) no longer bound new ones: peers refused them, so a write dated after them would be
///   refused too and never replicate. New timestamps follow the wall clock instead. (Nearer future
///   timestamps were accepted by peers: they keep bounding new ones, which is what keeps every node
///   ordering a write after the versions it has seen.)
#[derive(Debug, Default)]
pub struct HlcClock {
    last: Mutex<Hlc>,
    /// How far this node's wall clock may be ahead of its peers' median before new timestamps are
    /// held back to it, and that median's offset from this node's clock (ms; negative: peers behind).
    peer_clock: Mutex<Option<PeerClock>>,
}

#[derive(Debug, Clone, Copy)]
struct PeerClock {
    offset_ms: i64,
    tolerance_ms: u64,
}

impl HlcClock {
    /// A clock that has seen `last` (e.g. the newest timestamp in the store).
    pub fn new(last: Hlc) -> HlcClock {
        HlcClock { last: Mutex::new(last), peer_clock: Mutex::new(None) }
    }

    /// Peers' clocks measured: `offsets_ms` are each peer's clock minus this node's (from heartbeats);
    /// `tolerance_ms` the skew tolerated (`sync.max_clock_skew_ms`). An empty list keeps the last
    /// measure (a clock's offset does not change when a peer goes away).
    pub fn set_peer_clock(&self, offsets_ms: &[i64], tolerance_ms: u64) {
        if offsets_ms.is_empty() {
            return;
        }
        let mut sorted = offsets_ms.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2 };
        *self.peer_clock.lock().expect("peer clock lock") = Some(PeerClock { offset_ms: median, tolerance_ms });
    }

    /// How far this node's wall clock is ahead of its peers' median beyond the tolerance: what new
    /// timestamps are held back by (0 when in tolerance, behind, or not measured).
    pub fn held_back_ms(&self) -> u64 {
        self.peer_clock.lock().expect("peer clock lock").map_or(0, |p| (-p.offset_ms).max(0).unsigned_abs().saturating_sub(p.tolerance_ms))
    }

    /// The wall part for a local event at `at_ms`, now being `now_ms`: never past the issue limit.
    fn physical(&self, at_ms: u64, now_ms: u64) -> u64 {
        at_ms.min(now_ms.saturating_sub(self.held_back_ms()))
    }

    /// Whether `h` still bounds new timestamps at wall time `now_ms` (see the type's docs).
    fn bounds(h: Hlc, now_ms: u64) -> bool {
        h.wall_ms <= now_ms.saturating_add(MAX_FUTURE_MS)
    }

    /// A timestamp for a local event at wall time `wall_ms`: later than every timestamp issued or
    /// observed before (but those peers refused, see the type's docs).
    pub fn now(&self, wall_ms: u64) -> Result<Hlc, HlcError> {
        self.stamp(wall_ms, wall_ms)
    }

    /// A timestamp for a local event dated `at_ms` (a file's modification time, at most `now_ms`),
    /// checked against the wall clock `now_ms`.
    pub fn stamp(&self, at_ms: u64, now_ms: u64) -> Result<Hlc, HlcError> {
        let wall_ms = self.physical(at_ms, now_ms);
        let mut last = self.last.lock().expect("hlc lock");
        let next = if wall_ms > last.wall_ms || !Self::bounds(*last, now_ms) {
            Hlc { wall_ms, counter: 0 }
        } else if last.counter >= MAX_COUNTER {
            Hlc { wall_ms: last.wall_ms + 1, counter: 0 }
        } else {
            Hlc { wall_ms: last.wall_ms, counter: last.counter + 1 }
        };
        check(next, now_ms.max(at_ms))?;
        *last = next;
        Ok(next)
    }

    /// A timestamp for a local change of one key dated `at_ms` (when a file was written or went away,
    /// at most `now_ms`): `at_ms` itself unless the key's current version `after` is not earlier, then
    /// just after it. Only the key's own history bounds it from below — a change made after seeing a
    /// version of this key is later than it — so unrelated changes observed since do not push the
    /// date of this one forward past a later write of it on another node.
    pub fn stamp_after(&self, at_ms: u64, now_ms: u64, after: Option<Hlc>) -> Result<Hlc, HlcError> {
        let own = Hlc { wall_ms: self.physical(at_ms, now_ms), counter: 0 };
        let next = match after.filter(|h| Self::bounds(*h, now_ms)) {
            Some(h) if h >= own => {
                if h.counter >= MAX_COUNTER {
                    Hlc { wall_ms: h.wall_ms + 1, counter: 0 }
                } else {
                    Hlc { wall_ms: h.wall_ms, counter: h.counter + 1 }
                }
            }
            _ => own,
        };
        check(next, now_ms.max(at_ms))?;
        let mut last = self.last.lock().expect("hlc lock");
        if next > *last || !Self::bounds(*last, now_ms) {
            *last = next;
        }
        Ok(next)
    }

    /// Take note of a timestamp from elsewhere at wall time `wall_ms`, so later local events come
    /// after it; refused (not observed) when [`check`] refuses it.
    pub fn observe(&self, remote: Hlc, wall_ms: u64) -> Result<(), HlcError> {
        check(remote, wall_ms)?;
        let mut last = self.last.lock().expect("hlc lock");
        if remote > *last {
            *last = remote;
        }
        Ok(())
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
        let a = c.now(1000).unwrap();
        let b = c.now(1000).unwrap();
        let d = c.now(999).unwrap(); // the clock stepped back
        assert!(a < b && b < d);
        assert_eq!(d, Hlc { wall_ms: 1000, counter: 2 });
        assert_eq!(c.now(2000).unwrap(), Hlc { wall_ms: 2000, counter: 0 });
    }

    #[test]
    fn a_write_that_has_seen_another_is_later_despite_a_slow_clock() {
        let fast = HlcClock::default();
        let slow = HlcClock::default();
        let w1 = fast.now(10_000).unwrap(); // a node whose clock is 5 s ahead
        slow.observe(w1, 5_000).unwrap();
        let w2 = slow.now(5_000).unwrap();
        assert!(w2 > w1, "{w2} must be later than {w1}");
    }

    #[test]
    fn the_clock_never_runs_away() {
        let now = 1_000_000_000;
        let c = HlcClock::new(Hlc { wall_ms: now, counter: 0 });
        // A peer stamp a day ahead is refused, not observed: local stamps stay at the wall clock.
        let far = Hlc { wall_ms: now + 86_400_000, counter: 0 };
        assert!(matches!(c.observe(far, now), Err(HlcError::TooFarAhead { .. })));
        assert_eq!(c.now(now + 1).unwrap(), Hlc { wall_ms: now + 1, counter: 0 });
        // Absurd counters are refused too.
        assert!(matches!(c.observe(Hlc { wall_ms: now, counter: u32::MAX }, now), Err(HlcError::AbsurdCounter(_))));
        // A counter at its maximum moves the wall part on.
        let c = HlcClock::new(Hlc { wall_ms: now, counter: MAX_COUNTER });
        assert_eq!(c.now(now).unwrap(), Hlc { wall_ms: now + 1, counter: 0 });
        // A stamp within the limit is observed; one that would be issued beyond it is refused.
        let c = HlcClock::default();
        c.observe(Hlc { wall_ms: now + MAX_FUTURE_MS, counter: 0 }, now).unwrap();
        assert_eq!(c.now(now).unwrap(), Hlc { wall_ms: now + MAX_FUTURE_MS, counter: 1 });
        // A clock that ran fast and was put right: what it issued then (peers refused it) no longer
        // bounds new stamps, which follow the wall clock, for every key.
        let put_right = HlcClock::new(Hlc { wall_ms: now + MAX_FUTURE_MS + 1, counter: 0 });
        assert_eq!(put_right.now(now).unwrap(), Hlc { wall_ms: now, counter: 0 });
        assert_eq!(put_right.now(now).unwrap(), Hlc { wall_ms: now, counter: 1 });
        let future = Hlc { wall_ms: now + 15 * 60_000, counter: 0 };
        assert_eq!(put_right.stamp_after(now, now, Some(future)).unwrap(), Hlc { wall_ms: now, counter: 0 });
    }

    #[test]
    fn a_node_ahead_of_its_peers_dates_its_writes_by_their_clocks() {
        let now = 1_000_000_000;
        let c = HlcClock::default();
        // Not measured: the wall clock.
        assert_eq!(c.now(now).unwrap().wall_ms, now);
        // Peers 15 minutes behind (median of three): new stamps at their time plus the tolerance.
        c.set_peer_clock(&[-900_000, -900_100, 20], 2_000);
        assert_eq!(c.held_back_ms(), 898_000);
        let later = now + 1_000;
        assert_eq!(c.stamp_after(later, later, None).unwrap().wall_ms, later - 898_000);
        // Within the tolerance, or behind its peers: its own clock.
        c.set_peer_clock(&[-1_500], 2_000);
        assert_eq!(c.held_back_ms(), 0);
        c.set_peer_clock(&[60_000], 2_000);
        assert_eq!(c.held_back_ms(), 0);
        // No peer measured this round: the last measure stands.
        c.set_peer_clock(&[], 2_000);
        assert_eq!(c.held_back_ms(), 0);
    }

    #[test]
    fn ties_break_by_origin() {
        let t = Hlc { wall_ms: 5, counter: 0 };
        assert!(newer((t, "b"), (t, "a")));
        assert!(!newer((t, "a"), (t, "b")));
        assert!(!newer((t, "a"), (t, "a")));
    }

    #[test]
    fn a_dated_change_is_bounded_by_its_own_key_only() {
        let c = HlcClock::default();
        c.observe(Hlc { wall_ms: 9_000, counter: 0 }, 9_000).unwrap(); // another key, seen later
        assert_eq!(c.stamp_after(5_000, 9_500, None).unwrap(), Hlc { wall_ms: 5_000, counter: 0 }, "dated when it happened");
        let own = Hlc { wall_ms: 6_000, counter: 3 };
        assert_eq!(c.stamp_after(5_000, 9_500, Some(own)).unwrap(), Hlc { wall_ms: 6_000, counter: 4 }, "after the version it replaces");
        assert_eq!(c.stamp_after(7_000, 9_500, Some(own)).unwrap(), Hlc { wall_ms: 7_000, counter: 0 });
        assert!(c.now(9_600).unwrap() > Hlc { wall_ms: 9_000, counter: 0 }, "writes through the API still come after everything seen");
    }
}

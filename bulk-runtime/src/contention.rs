//! Whether a call tries the plain insert first.
//!
//! Every call's insert can run in two forms: the plain anti-join insert, and
//! the same with `ON CONFLICT (key) DO NOTHING`. Both skip the keys the
//! statement's snapshot shows as stored, insert in key order and keep the
//! first offered row of a key. They differ only when another writer stores
//! one of the batch's keys after the snapshot was taken (or is storing it):
//! then the plain insert fails with `unique_violation` and writes nothing,
//! while `ON CONFLICT` skips the key. The plain form is cheaper by about a
//! quarter of the insert (no speculative insertion: one index probe and one
//! WAL record fewer per new row), so a call runs it first and, on
//! `unique_violation`, runs the `ON CONFLICT` form on the same rows.
//!
//! When writers keep meeting each other's keys, the failed first attempts
//! would cost more than they save. So each model keeps a count, shared by
//! every connection of the process: after a call whose plain attempt met a
//! conflict, the next calls go straight to `ON CONFLICT` (4 calls after the
//! first conflict, doubling with each conflict in a row up to 256), and each
//! plain attempt that succeeds halves that number again. The count only
//! steers speed: both forms give the same result.

use std::sync::atomic::{AtomicU32, Ordering};

/// Calls to run with `ON CONFLICT` after the first conflict.
const FIRST_PENALTY: u32 = 4;

/// At most this many calls in a row skip the plain attempt.
const MAX_PENALTY: u32 = 256;

/// The state of one model; see the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    /// Calls still to run with `ON CONFLICT` directly.
    skip: AtomicU32,
    /// How many calls the next conflict makes skip the plain attempt, halved.
    penalty: AtomicU32,
}

impl Contention {
    pub(crate) const fn new() -> Contention {
        Contention { skip: AtomicU32::new(0), penalty: AtomicU32::new(0) }
    }

    /// Whether this call tries the plain insert first (otherwise it counts
    /// one of the calls that go straight to `ON CONFLICT`).
    pub(crate) fn try_plain(&self) -> bool {
        self.skip.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1)).is_err()
    }

    /// The plain attempt met a key stored meanwhile.
    pub(crate) fn conflicted(&self) {
        let update = |p: u32| Some(p.saturating_mul(2).clamp(FIRST_PENALTY, MAX_PENALTY));
        let previous = self.penalty.fetch_update(Ordering::Relaxed, Ordering::Relaxed, update).unwrap_or(0);
        self.skip.store(update(previous).unwrap_or(FIRST_PENALTY), Ordering::Relaxed);
    }

    /// The plain attempt went through.
    pub(crate) fn succeeded(&self) {
        let _ = self.penalty.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| (p > 0).then_some(p / 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of the next `n` calls try the plain insert.
    fn plain_of(c: &Contention, n: usize) -> usize {
        (0..n).filter(|_| c.try_plain()).count()
    }

    #[test]
    fn without_conflicts_every_call_tries_the_plain_insert() {
        let c = Contention::new();
        assert_eq!(plain_of(&c, 100), 100);
        c.succeeded();
        assert_eq!(plain_of(&c, 10), 10);
    }

    #[test]
    fn conflicts_in_a_row_double_the_calls_that_skip_it() {
        let c = Contention::new();
        c.conflicted();
        // 4 calls skip it, the 5th tries it again.
        assert_eq!((0..5).map(|_| c.try_plain()).collect::<Vec<_>>(), [false, false, false, false, true]);
        c.conflicted();
        assert_eq!(plain_of(&c, 8), 0);
        assert!(c.try_plain());
        for _ in 0..20 {
            c.conflicted();
        }
        assert_eq!(plain_of(&c, MAX_PENALTY as usize), 0, "capped at {MAX_PENALTY}");
        assert!(c.try_plain());
    }

    #[test]
    fn successes_halve_the_penalty_again() {
        let c = Contention::new();
        for _ in 0..4 {
            c.conflicted();
        }
        // penalty 32 now; three successes bring it to 4, so the next
        // conflict makes 8 calls skip the plain insert.
        for _ in 0..3 {
            c.succeeded();
        }
        assert_eq!(plain_of(&c, 32), 0, "the skips already counted still run");
        c.conflicted();
        assert_eq!(plain_of(&c, 8), 0);
        assert!(c.try_plain());
        // Many successes forget every conflict.
        for _ in 0..10 {
            c.succeeded();
        }
        c.conflicted();
        assert_eq!(plain_of(&c, 5), 1, "4 calls skip it again, as after a first conflict");
    }
}

//! Layer 2 (one instance): the passive health state machine of one instance, pure and
//! lock-free. The request path reports each exchange's outcome ([`Health::success`],
//! [`Health::failure`]); 5 failures in a row eject the instance for 10 s, doubling on each
//! repeat up to 5 min. `control::probe` probes ejected instances when their time is up.
//!
//! A failure is a refused or broken connection or a timeout; an instance's own 5xx answers are
//! the model's business and do not count. After an ejection the instance takes traffic again on
//! probation: one more failure ejects it for twice as long, a success clears it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures in a row that eject an instance.
pub(crate) const FAILURES_TO_EJECT: u32 = 5;
/// First ejection time; doubled on each repeat.
pub(crate) const BASE_EJECTION: Duration = Duration::from_secs(10);
/// Longest ejection.
pub(crate) const MAX_EJECTION: Duration = Duration::from_secs(300);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One instance's failure count and ejection state. Lock-free: the request path only does
/// relaxed atomic loads and stores.
#[derive(Debug, Default)]
pub(crate) struct Health {
    consecutive: AtomicU32,
    /// Ejections since the last success (0: not on probation).
    level: AtomicU32,
    /// Process-relative ms until which the instance is ejected; 0 when it takes traffic.
    ejected_until: AtomicU64,
}

/// What a reported outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The instance was ejected for this long.
    Ejected(Duration),
}

impl Health {
    /// True while the instance takes traffic.
    pub(crate) fn is_up(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    /// An exchange got an answer.
    pub(crate) fn success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.level.load(Ordering::Relaxed) != 0 {
            self.level.store(0, Ordering::Relaxed);
        }
    }

    /// An exchange failed; ejects after [`FAILURES_TO_EJECT`] in a row, or at once on
    /// probation.
    pub(crate) fn failure(&self) -> Change {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = self.level.load(Ordering::Relaxed) > 0;
        if self.is_up() && (n >= FAILURES_TO_EJECT || on_probation) {
            return Change::Ejected(self.eject());
        }
        Change::None
    }

    /// Ejects for the current level's time and raises the level.
    pub(crate) fn eject(&self) -> Duration {
        let level = self.level.fetch_add(1, Ordering::Relaxed).min(16);
        let time = BASE_EJECTION.saturating_mul(1 << level).min(MAX_EJECTION);
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        time
    }

    /// True when the instance is ejected and its time is up.
    pub(crate) fn probe_due(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() >= until
    }

    /// Takes traffic again (on probation).
    pub(crate) fn reinstate(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_eject_a_success_resets() {
        let h = Health::default();
        for _ in 0..4 {
            assert_eq!(h.failure(), Change::None);
        }
        h.success();
        for _ in 0..4 {
            assert_eq!(h.failure(), Change::None);
        }
        assert!(h.is_up());
        assert_eq!(h.failure(), Change::Ejected(BASE_EJECTION));
        assert!(!h.is_up());
        assert!(!h.probe_due());
        // Further failures of requests already in flight do not extend it.
        assert_eq!(h.failure(), Change::None);
    }

    #[test]
    fn on_probation_one_failure_ejects_for_twice_as_long_up_to_five_minutes() {
        let h = Health::default();
        for _ in 0..5 {
            h.failure();
        }
        h.reinstate();
        assert!(h.is_up());
        assert_eq!(h.failure(), Change::Ejected(Duration::from_secs(20)));
        h.reinstate();
        assert_eq!(h.failure(), Change::Ejected(Duration::from_secs(40)));
        for _ in 0..10 {
            h.reinstate();
            h.failure();
        }
        h.reinstate();
        assert_eq!(h.failure(), Change::Ejected(MAX_EJECTION));
        // A success clears the probation: 5 failures are needed again.
        h.reinstate();
        h.success();
        for _ in 0..4 {
            assert_eq!(h.failure(), Change::None);
        }
        assert_eq!(h.failure(), Change::Ejected(BASE_EJECTION));
    }
}

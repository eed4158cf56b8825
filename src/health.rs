//! Passive health of instances, beside the data path: the request path reports each exchange's
//! outcome ([`Health::success`], [`Health::failure`]); 5 failures in a row eject the instance
//! for 10 s, doubling on each repeat up to 5 min. A background task ([`run`]) probes ejected
//! instances when their time is up and sweeps idle pooled connections.
//!
//! A failure is a refused or broken connection or a timeout; an instance's own 5xx answers are
//! the model's business and do not count. After an ejection the instance takes traffic again on
//! probation: one more failure ejects it for twice as long, a success clears it.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::reload::Loader;
use crate::routing::Instance;

/// Failures in a row that eject an instance.
pub const FAILURES_TO_EJECT: u32 = 5;
/// First ejection time; doubled on each repeat.
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// Longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// How often ejected instances are checked and idle connections swept.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take to connect.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One instance's failure count and ejection state. Lock-free: the request path only does
/// relaxed atomic loads and stores.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    /// Ejections since the last success (0: not on probation).
    level: AtomicU32,
    /// Process-relative ms until which the instance is ejected; 0 when it takes traffic.
    ejected_until: AtomicU64,
}

/// What a reported outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The instance was ejected for this long.
    Ejected(Duration),
}

impl Health {
    /// True while the instance takes traffic.
    pub fn is_up(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    /// An exchange got an answer.
    pub fn success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.level.load(Ordering::Relaxed) != 0 {
            self.level.store(0, Ordering::Relaxed);
        }
    }

    /// An exchange failed; ejects after [`FAILURES_TO_EJECT`] in a row, or at once on
    /// probation.
    pub fn failure(&self) -> Change {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = self.level.load(Ordering::Relaxed) > 0;
        if self.is_up() && (n >= FAILURES_TO_EJECT || on_probation) {
            return Change::Ejected(self.eject());
        }
        Change::None
    }

    /// Ejects for the current level's time and raises the level.
    pub fn eject(&self) -> Duration {
        let level = self.level.fetch_add(1, Ordering::Relaxed).min(16);
        let time = BASE_EJECTION.saturating_mul(1 << level).min(MAX_EJECTION);
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected_until
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        time
    }

    /// True when the instance is ejected and its time is up.
    pub fn probe_due(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() >= until
    }

    /// Takes traffic again (on probation).
    pub fn reinstate(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
    }
}

/// Can a TCP connection to the instance be opened now?
async fn probe(instance: &Instance) -> bool {
    let connect = crate::upstream::tcp_connect(instance.authority.as_str());
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

/// Probes ejected instances whose time is up and sweeps idle connections, until the process
/// ends.
pub async fn run(loader: Arc<Loader>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let table = loader.table().load_full();
        // Probes run side by side, so one unreachable instance does not delay the others.
        let mut probes = tokio::task::JoinSet::new();
        for d in table.deployments.iter() {
            for i in d.instances.iter() {
                i.pool.sweep();
                if i.health.probe_due() {
                    let (name, i) = (d.name.clone(), i.clone());
                    probes.spawn(async move {
                        if probe(&i).await {
                            i.reinstate();
                            tracing::info!(deployment = %name, instance = %i.addr, "instance answers again: back in rotation (on probation)");
                        } else {
                            let time = i.health.eject();
                            tracing::warn!(deployment = %name, instance = %i.addr, ejected_for = ?time, "instance still unreachable: ejected again");
                        }
                    });
                }
            }
        }
        while probes.join_next().await.is_some() {}
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

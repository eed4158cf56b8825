//! What the comparisons found, for `GET /shadow` and the status page: counts per mirror
//! target, the mismatch ratio over the last minute, and the last mismatches (bounded). Written
//! by the comparison task only, never on the request path; holds no header, key or
//! `Authorization` value (only method, path, statuses and bodies cut short).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::compare::{Outcome, Verdict};

/// Mismatches kept for `/shadow`.
pub const KEPT_MISMATCHES: usize = 50;
/// Bytes of each body kept with a mismatch.
pub const KEPT_BODY_BYTES: usize = 4096;
/// The window of the recent ratio, in one-second buckets.
const WINDOW_SECS: u64 = 60;

/// One mismatch, as shown.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub at: SystemTime,
    pub deployment: String,
    pub method: String,
    pub path: String,
    pub live_status: u16,
    pub copy_status: u16,
    pub pointer: String,
    pub live_value: String,
    pub copy_value: String,
    pub live_body: String,
    pub copy_body: String,
}

/// Counts of one mirror target: all time, and per second over the last minute.
#[derive(Debug, Clone)]
struct Target {
    deployment: String,
    /// match, mismatch, incomparable.
    total: [u64; 3],
    /// (second since the epoch, counts) for the last [`WINDOW_SECS`] seconds.
    recent: VecDeque<(u64, [u64; 3])>,
}

#[derive(Debug, Default)]
struct Inner {
    targets: Vec<Target>,
    mismatches: VecDeque<Mismatch>,
}

/// The evidence of every comparison made by this process.
#[derive(Debug, Default)]
pub struct Evidence {
    inner: Mutex<Inner>,
}

/// A request's side of a comparison: what may be shown of it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub deployment: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub live_status: u16,
    pub copy_status: u16,
    pub live_body: &'a [u8],
    pub copy_body: &'a [u8],
}

impl Target {
    /// Mismatches over comparisons in the minute before second `sec`.
    fn recent_ratio(&self, sec: u64) -> Option<f64> {
        let mut counts = [0u64; 3];
        for (_, c) in self.recent.iter().filter(|(s, _)| *s + WINDOW_SECS > sec) {
            for k in 0..3 {
                counts[k] += c[k];
            }
        }
        let compared = counts[0] + counts[1];
        (compared > 0).then(|| counts[1] as f64 / compared as f64)
    }
}

fn index(v: &Verdict) -> usize {
    match v {
        Verdict::Match => 0,
        Verdict::Mismatch(_) => 1,
        Verdict::Incomparable(_) => 2,
    }
}

/// A body cut to [`KEPT_BODY_BYTES`], as text.
fn cut(body: &[u8]) -> String {
    let end = body.len().min(KEPT_BODY_BYTES);
    let mut s = String::from_utf8_lossy(&body[..end]).into_owned();
    if body.len() > end {
        s.push('…');
    }
    s
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Evidence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain counters and a queue: a panic elsewhere cannot leave them half-updated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one comparison made at `now`.
    pub fn record(&self, seen: Seen<'_>, outcome: &Outcome, now: SystemTime) {
        let i = index(&outcome.verdict);
        let sec = epoch_secs(now);
        let mut inner = self.lock();
        let pos = match inner
            .targets
            .iter()
            .position(|t| t.deployment == seen.deployment)
        {
            Some(p) => p,
            None => {
                inner.targets.push(Target {
                    deployment: seen.deployment.to_string(),
                    total: [0; 3],
                    recent: VecDeque::new(),
                });
                inner.targets.len() - 1
            }
        };
        let t = &mut inner.targets[pos];
        t.total[i] += 1;
        match t.recent.back_mut() {
            Some((s, counts)) if *s == sec => counts[i] += 1,
            _ => {
                let mut counts = [0; 3];
                counts[i] = 1;
                t.recent.push_back((sec, counts));
            }
        }
        while t
            .recent
            .front()
            .is_some_and(|(s, _)| *s + WINDOW_SECS <= sec)
        {
            t.recent.pop_front();
        }
        if let Verdict::Mismatch(d) = &outcome.verdict {
            if inner.mismatches.len() == KEPT_MISMATCHES {
                inner.mismatches.pop_front();
            }
            inner.mismatches.push_back(Mismatch {
                at: now,
                deployment: seen.deployment.to_string(),
                method: seen.method.to_string(),
                path: seen.path.to_string(),
                live_status: seen.live_status,
                copy_status: seen.copy_status,
                pointer: d.pointer.clone(),
                live_value: d.live.clone(),
                copy_value: d.copy.clone(),
                live_body: cut(seen.live_body),
                copy_body: cut(seen.copy_body),
            });
        }
    }

    /// The mismatch ratio of `deployment` over the minute before `now`: mismatches over
    /// comparisons (incomparable ones excluded), `None` without comparisons.
    pub fn recent_ratio(&self, deployment: &str, now: SystemTime) -> Option<f64> {
        let inner = self.lock();
        let t = inner.targets.iter().find(|t| t.deployment == deployment)?;
        t.recent_ratio(epoch_secs(now))
    }

    /// `GET /shadow`: per target the counts and the last minute's ratio, then the last
    /// mismatches, newest first.
    pub fn report(&self, now: SystemTime) -> Value {
        let sec = epoch_secs(now);
        let inner = self.lock();
        let targets: Vec<Value> = inner
            .targets
            .iter()
            .map(|t| {
                json!({
                    "deployment": t.deployment,
                    "match": t.total[0],
                    "mismatch": t.total[1],
                    "incomparable": t.total[2],
                    "mismatch_ratio_last_minute": t.recent_ratio(sec),
                })
            })
            .collect();
        let mismatches: Vec<Value> = inner
            .mismatches
            .iter()
            .rev()
            .map(|m| {
                json!({
                    "time": humantime::format_rfc3339_millis(m.at).to_string(),
                    "deployment": m.deployment,
                    "method": m.method,
                    "path": m.path,
                    "live_status": m.live_status,
                    "copy_status": m.copy_status,
                    "pointer": m.pointer,
                    "live_value": m.live_value,
                    "copy_value": m.copy_value,
                    "live_body": m.live_body,
                    "copy_body": m.copy_body,
                })
            })
            .collect();
        json!({ "targets": targets, "mismatches": mismatches })
    }
}

/// How old a second bucket may be and still count (for tests and docs).
pub const WINDOW: Duration = Duration::from_secs(WINDOW_SECS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::Difference;

    fn seen(body: &[u8]) -> Seen<'_> {
        Seen {
            deployment: "green",
            method: "POST",
            path: "/score",
            live_status: 200,
            copy_status: 200,
            live_body: body,
            copy_body: body,
        }
    }

    fn outcome(mismatch: bool) -> Outcome {
        Outcome {
            verdict: if mismatch {
                Verdict::Mismatch(Difference {
                    pointer: "/predictions/0".into(),
                    live: "6.0".into(),
                    copy: "7.0".into(),
                })
            } else {
                Verdict::Match
            },
            max_difference: 1.0,
        }
    }

    #[test]
    fn the_ratio_covers_the_last_minute_and_mismatches_are_bounded() {
        let e = Evidence::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i * 100);
            e.record(seen(b"{}"), &outcome(i % 4 == 0), at);
        }
        let ratio = e
            .recent_ratio("green", t0 + Duration::from_secs(10))
            .unwrap();
        assert!((ratio - 0.25).abs() < 1e-9, "{ratio}");
        // A minute later, nothing recent.
        assert_eq!(
            e.recent_ratio("green", t0 + WINDOW + Duration::from_secs(11)),
            None
        );
        let report = e.report(t0 + Duration::from_secs(10));
        assert_eq!(report["targets"][0]["mismatch"], 25);
        assert_eq!(report["targets"][0]["match"], 75);
        assert_eq!(report["mismatches"].as_array().unwrap().len(), 25);
        for _ in 0..100 {
            e.record(seen(&[b'x'; 10_000]), &outcome(true), t0);
        }
        let report = e.report(t0);
        let kept = report["mismatches"].as_array().unwrap();
        assert_eq!(kept.len(), KEPT_MISMATCHES);
        assert!(kept[0]["live_body"].as_str().unwrap().len() <= KEPT_BODY_BYTES + 3);
        assert_eq!(kept[0]["pointer"], "/predictions/0");
    }
}

//! Layer 6 (tools): `scoregate rollout`, a staged canary driven from outside the data path. Each step rewrites
//! the endpoint file's weights (`ops`), waits for the running proxy to apply them (admin
//! `/config`), watches the step's window through the admin `/metrics` and judges the target
//! deployment's error ratio (HTTP 5xx, and gRPC UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
//! INTERNAL, UNAVAILABLE, DATA_LOSS) and p99 latency from counter and histogram deltas. A breach, a window
//! with too little traffic, a "no" at `--confirm` or Ctrl-C restores the weights from before the
//! rollout. A step (or the shadow step) that fails names the target's failed requests since it
//! began by request id, from the admin `/failures`, so that they can be found in the access log.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config;
use crate::metrics::quantile;
use crate::ops::{self, OpsError};

/// What `rollout` was asked to do (also its command-line flags).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// The deployment that takes the traffic.
    #[arg(long)]
    pub(crate) to: String,
    /// Its weight at each step, in percent.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    pub(crate) steps: Vec<u8>,
    /// How long each step is watched, like 60s, 2m or 500ms.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// Largest share of 5xx answers of the target in a step.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) max_error_rate: f64,
    /// Largest p99 latency of the target in a step, in ms.
    #[arg(long, default_value_t = 500.0)]
    pub max_p99_ms: f64,
    /// Fewest requests to the target in a step to judge it.
    #[arg(long, default_value_t = 20)]
    pub(crate) min_requests: u64,
    /// The proxy's admin URL (default: the file's admin_listen).
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// Ask before each step.
    #[arg(long)]
    pub(crate) confirm: bool,
    /// Before any live step, mirror unpinned requests to the target (at 0% live) for this
    /// long, like 2m, and judge its answers against the live ones: a breach removes the mirror
    /// and stops before any user has seen the target. Default: no shadow step.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) shadow: Option<Duration>,
    /// The share of unpinned requests mirrored in the shadow step, in percent.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub(crate) shadow_percent: u8,
    /// Largest share of compared answers that may disagree with the live ones in the shadow
    /// step.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) max_mismatch: f64,
}

/// A duration flag like `60s`, `2m` or `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 60s or 2m: {e}"))
}

/// How a rollout ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Every step passed.
    Completed,
    /// A step failed its checks; the original weights are back.
    RolledBack(String),
    /// Stopped by the operator (a "no" or Ctrl-C); the original weights are back.
    Aborted(String),
}

/// A rollout that could not run at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RolloutError {
    #[error("{0}")]
    Ops(#[from] OpsError),
    #[error("{0}")]
    Setup(String),
}

/// One scrape of the target's numbers.
#[derive(Debug, Clone, Default)]
struct Sample {
    requests: u64,
    errors: u64,
    /// (le, cumulative count), le ascending, +Inf last as f64::INFINITY.
    buckets: Vec<(f64, u64)>,
}

/// Label values of one sample line, and its value.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        map.insert(k, v.trim_matches('"'));
    }
    Some((name, map, value))
}

/// The target's requests, failed answers (HTTP 5xx, and gRPC calls whose status means the
/// server failed: a gRPC answer's HTTP status is always 200) and latency buckets in a
/// `/metrics` text.
fn sample(text: &str, deployment: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines().filter(|l| l.starts_with("scoregate_")) {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        if labels.get("deployment") != Some(&deployment) {
            continue;
        }
        match name {
            "scoregate_requests_total" => {
                s.requests += value as u64;
                if labels.get("code").is_some_and(|c| c.starts_with('5')) {
                    s.errors += value as u64;
                }
            }
            "scoregate_grpc_responses_total" => {
                let failed = labels.get("grpc_code").is_some_and(|c| {
                    crate::metrics::GRPC_SERVER_FAILURES
                        .iter()
                        .any(|&i| crate::metrics::GRPC_CODES[i as usize] == *c)
                });
                if failed {
                    s.errors += value as u64;
                }
            }
            "scoregate_request_duration_seconds_bucket" => s.bucket(&labels, value),
            _ => {}
        }
    }
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

impl Sample {
    /// One histogram bucket line (`le` and its cumulative count).
    fn bucket(&mut self, labels: &BTreeMap<&str, &str>, value: f64) {
        let le = match labels.get("le") {
            Some(&"+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::INFINITY),
            None => return,
        };
        self.buckets.push((le, value as u64));
    }
}

/// The target's mirrored copies (answered `ok`/`error`, with their answer-time buckets) as a
/// [`Sample`], and its comparisons: match, mismatch, incomparable.
fn shadow_sample(text: &str, deployment: &str) -> (Sample, [u64; 3]) {
    let mut s = Sample::default();
    let mut compared = [0u64; 3];
    for line in text.lines().filter(|l| l.starts_with("scoregate_")) {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        if labels.get("deployment") != Some(&deployment) {
            continue;
        }
        let result = labels.get("result").copied().unwrap_or("");
        match name {
            "scoregate_mirror_requests_total" if result != "dropped" => {
                s.requests += value as u64;
                if result == "error" {
                    s.errors += value as u64;
                }
            }
            "scoregate_shadow_comparisons_total" => {
                if let Some(i) = crate::metrics::SHADOW_RESULTS
                    .iter()
                    .position(|r| *r == result)
                {
                    compared[i] += value as u64;
                }
            }
            "scoregate_mirror_duration_seconds_bucket" => s.bucket(&labels, value),
            _ => {}
        }
    }
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (s, compared)
}

/// The window between two samples: requests, error ratio, p99 in ms.
fn window(then: &Sample, now: &Sample) -> (u64, f64, Option<f64>) {
    let n = now.requests.saturating_sub(then.requests);
    let e = now.errors.saturating_sub(then.errors);
    let ratio = if n == 0 { 0.0 } else { e as f64 / n as f64 };
    let bounds: Vec<f64> = now
        .buckets
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .collect();
    let counts = |s: &Sample| -> Vec<u64> {
        now.buckets
            .iter()
            .map(|(le, _)| {
                s.buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, c)| *c)
            })
            .collect()
    };
    let p99 = quantile(0.99, &bounds, &counts(now), &counts(then)).map(|s| s * 1000.0);
    (n, ratio, p99)
}

/// How many failed requests a failed step names.
const FAILED_LISTED: usize = 20;

/// The request ids of the failed requests on `deployment` at `since` or later in a `/failures`
/// text, oldest first; `None` when the text is not such a list. The times are the proxy's
/// clock and `since` this process's: a rollout run on another host trusts the two to agree.
fn failed_since(text: &str, deployment: &str, since: SystemTime) -> Option<Vec<String>> {
    // `/failures` writes whole milliseconds.
    let since = since.duration_since(UNIX_EPOCH).map_or(UNIX_EPOCH, |d| {
        UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64)
    });
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let ids = v["failures"]
        .as_array()?
        .iter()
        .filter(|f| f["deployment"].as_str() == Some(deployment))
        .filter(|f| {
            f["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .is_some_and(|t| t >= since)
        })
        .filter_map(|f| f["request_id"].as_str().map(str::to_string))
        .collect();
    Some(ids)
}

/// The line naming the failed requests on `deployment` `during` a step (the last
/// [`FAILED_LISTED`] of `ids`), or nothing without any.
fn failed_line(deployment: &str, during: &str, ids: &[String]) -> Option<String> {
    if ids.is_empty() {
        return None;
    }
    let shown = &ids[ids.len().saturating_sub(FAILED_LISTED)..];
    let kept = if shown.len() < ids.len() {
        format!("the last {} of {} the proxy kept; ", shown.len(), ids.len())
    } else {
        String::new()
    };
    Some(format!(
        "failed requests on {deployment} during {during} ({kept}find them in the access log by request_id): {}",
        shown.join(", ")
    ))
}

struct Admin {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Admin {
    async fn get(&self, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad admin URL {url}: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), self.client.get(uri))
            .await
            .map_err(|_| format!("{url} did not answer within 5 s"))?
            .map_err(|e| format!("cannot reach {url}: {}", crate::error::describe(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits up to 10 s for `/config`'s `key` map (`traffic`, `mirror`) to be `want` (sorted):
    /// `Some(true)` once it is, `Some(false)` when it never was, `None` on Ctrl-C.
    async fn applied(&self, key: &str, want: &[(String, u8)]) -> Option<bool> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.percents(key).await {
                Ok(m) if m == want => return Some(true),
                _ if Instant::now() > deadline => return Some(false),
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = tokio::signal::ctrl_c() => return None,
                    }
                }
            }
        }
    }

    /// The line naming the failed requests on `deployment` since `since` by request id, from
    /// `/failures`. Nothing when there are none, or when the proxy cannot say (an older proxy
    /// without `/failures`, an admin listener that does not answer).
    async fn failed_requests(
        &self,
        deployment: &str,
        during: &str,
        since: SystemTime,
    ) -> Option<String> {
        let text = self.get("/failures").await.ok()?;
        failed_line(deployment, during, &failed_since(&text, deployment, since)?)
    }

    /// Prints [`Admin::failed_requests`], if any.
    async fn print_failed(&self, deployment: &str, during: &str, since: SystemTime) {
        if let Some(line) = self.failed_requests(deployment, during, since).await {
            println!("{line}");
        }
    }

    /// A map of deployment to percent of `/config` (`traffic`, `mirror`), sorted.
    async fn percents(&self, key: &str) -> Result<Vec<(String, u8)>, String> {
        let text = self.get("/config").await?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut out: Vec<(String, u8)> = v[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, w)| (k.clone(), w.as_u64().unwrap_or(0) as u8))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }
}

fn show(weights: &[(String, u8)]) -> String {
    ops::show(weights, "%")
}

fn fmt_p99(p: Option<f64>) -> String {
    p.map_or("–".into(), |p| format!("{p:.0} ms"))
}

/// Puts the weights from before the rollout back: the file's exact earlier text when nobody
/// else changed it meanwhile, else the earlier weights.
fn restore(
    path: &Path,
    original: &str,
    written: &Option<String>,
    weights: &[(String, u8)],
) -> Result<(), OpsError> {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if written.as_deref() == Some(now.as_str()) || now == original {
        if now != original {
            ops::write_atomically(path, original.as_bytes())?;
        }
        Ok(())
    } else {
        ops::set_weights(path, weights).map(|_| ())
    }
}

/// The shadow step: mirrors `opts.shadow_percent` of unpinned requests to the target for
/// `period`, then judges its answers (mismatch ratio), its errors and its p99 from the proxy's
/// metrics. The file is back to `original_text` when it returns, whatever happened; `Some`
/// is why the target failed.
async fn shadow_step(
    path: &Path,
    opts: &Options,
    admin: &Admin,
    original_text: &str,
    period: Duration,
) -> Result<Option<String>, RolloutError> {
    let mirror = [(opts.to.clone(), opts.shadow_percent)];
    let (text, _) = config::rewrite_mirror(original_text, path, &mirror, true)
        .map_err(|e| RolloutError::Setup(format!("cannot add the shadow mirror: {e}")))?;
    ops::write_atomically(path, text.as_bytes())?;
    let put_back = || ops::write_atomically(path, original_text.as_bytes());
    println!(
        "shadow: {}% of unpinned requests copied to {} for {} s, its answers compared with the live ones",
        opts.shadow_percent,
        opts.to,
        period.as_secs_f64()
    );
    match admin.applied("mirror", &mirror).await {
        Some(true) => {}
        Some(false) => {
            put_back()?;
            return Ok(Some(format!(
                "the proxy at {} did not apply the shadow mirror within 10 s (is it serving {}?)",
                admin.base,
                path.display()
            )));
        }
        None => {
            put_back()?;
            return Ok(Some("interrupted".into()));
        }
    }
    let began_at = SystemTime::now();
    let start_text = admin.get("/metrics").await.map_err(RolloutError::Setup);
    let (start, start_cmp) = match start_text {
        Ok(t) => shadow_sample(&t, &opts.to),
        Err(e) => {
            put_back()?;
            return Err(e);
        }
    };
    let began = Instant::now();
    let judged = loop {
        let left = period.saturating_sub(began.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(left.min(Duration::from_secs(5))) => {}
            _ = tokio::signal::ctrl_c() => {
                put_back()?;
                return Ok(Some("interrupted".into()));
            }
        }
        let Ok(text) = admin.get("/metrics").await else {
            continue;
        };
        let (now, cmp) = shadow_sample(&text, &opts.to);
        let (n, errors, p99) = window(&start, &now);
        let [m, mm, inc] = [0, 1, 2].map(|i| cmp[i].saturating_sub(start_cmp[i]));
        let mismatch = if m + mm == 0 {
            0.0
        } else {
            mm as f64 / (m + mm) as f64
        };
        println!(
            "  shadow | {:>3} s left | {}: {n} copies, {} compared, mismatch {:.2}%, {inc} incomparable, errors {:.1}%, p99 {}",
            period.saturating_sub(began.elapsed()).as_secs(),
            opts.to,
            m + mm,
            mismatch * 100.0,
            errors * 100.0,
            fmt_p99(p99)
        );
        if began.elapsed() >= period {
            break (n, m + mm, mismatch, errors, p99);
        }
    };
    put_back()?;
    let (n, compared, mismatch, errors, p99) = judged;
    let breach = if compared < opts.min_requests {
        Some(format!(
            "not enough answers compared to judge: {compared} of {n} copies to {} (need at least {})",
            opts.to, opts.min_requests
        ))
    } else if mismatch > opts.max_mismatch {
        Some(format!(
            "{:.1}% of {compared} answers of {} disagree with the live ones, above the limit of {}% (see /shadow on the admin listener)",
            mismatch * 100.0,
            opts.to,
            opts.max_mismatch * 100.0
        ))
    } else if errors > opts.max_error_rate {
        Some(format!(
            "error ratio {:.1}% of {n} copies to {} is above the limit of {}%",
            errors * 100.0,
            opts.to,
            opts.max_error_rate * 100.0
        ))
    } else if p99.is_some_and(|p| p > opts.max_p99_ms) {
        Some(format!(
            "p99 latency {} of {}'s copies is above the limit of {} ms",
            fmt_p99(p99),
            opts.to,
            opts.max_p99_ms
        ))
    } else {
        None
    };
    match &breach {
        Some(reason) => {
            println!("shadow FAILED: {reason}; mirror removed");
            admin
                .print_failed(&opts.to, "the shadow step", began_at)
                .await;
        }
        None => println!(
            "shadow passed: {compared} answers compared, mismatch {:.2}%, errors {:.2}%, p99 {}; mirror removed",
            mismatch * 100.0,
            errors * 100.0,
            fmt_p99(p99)
        ),
    }
    Ok(breach)
}

/// Runs the rollout, printing progress on stdout.
pub(crate) async fn run(path: &Path, opts: &Options) -> Result<Outcome, RolloutError> {
    let loaded = config::load_file(path).map_err(OpsError::from)?;
    let cfg = &loaded.config;
    if !cfg.deployments.iter().any(|d| d.name == opts.to) {
        let known: Vec<&str> = cfg.deployments.iter().map(|d| d.name.as_str()).collect();
        return Err(RolloutError::Setup(format!(
            "{}: `{}` is not a deployment (deployments: {})",
            path.display(),
            opts.to,
            known.join(", ")
        )));
    }
    if opts.steps.is_empty() || opts.steps.iter().any(|s| *s > 100) {
        return Err(RolloutError::Setup(
            "--steps must be percentages from 0 to 100, like 10,50,100".into(),
        ));
    }
    let original_text = std::fs::read_to_string(path)
        .map_err(|e| RolloutError::Setup(format!("{}: {e}", path.display())))?;
    let original = ops::weights(cfg);
    let base = opts.admin.clone().unwrap_or_else(|| {
        let a = cfg.admin_listen;
        if a.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", a.port())
        } else {
            format!("http://{a}")
        }
    });
    let admin = Admin {
        base: base.trim_end_matches('/').to_string(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    admin
        .get("/metrics")
        .await
        .map_err(|e| RolloutError::Setup(format!("the proxy's admin listener is not reachable: {e} (is `scoregate run` serving this file? set --admin)")))?;
    println!(
        "rollout of {} on {}: steps {:?}, {} s each; checks: 5xx ratio <= {}%, p99 <= {} ms, at least {} requests per step",
        opts.to,
        path.display(),
        opts.steps,
        opts.interval.as_secs_f64(),
        opts.max_error_rate * 100.0,
        opts.max_p99_ms,
        opts.min_requests
    );
    println!("start: {}", show(&original));
    if let Some(period) = opts.shadow {
        if original.iter().any(|(d, w)| *d == opts.to && *w > 0) {
            return Err(RolloutError::Setup(format!(
                "--shadow needs {} at 0% live (a mirror takes no live traffic); it is at {}",
                opts.to,
                show(&original)
            )));
        }
        if let Some(reason) = shadow_step(path, opts, &admin, &original_text, period).await? {
            println!("rolled back: {} (the file is as before)", show(&original));
            return Ok(Outcome::RolledBack(format!("shadow: {reason}")));
        }
    }
    let written_cell = std::cell::RefCell::new(None::<String>);
    let result: Result<Outcome, RolloutError> = async {
        let tty = std::io::stdout().is_terminal();
        let written = &written_cell;
        let mut current = original.clone();
        let total = opts.steps.len();
        let abort = |reason: String, written: &Option<String>| -> Result<Outcome, RolloutError> {
            restore(path, &original_text, written, &original)?;
            println!("restored {}", show(&original));
            Ok(Outcome::Aborted(reason))
        };
        for (i, &pct) in opts.steps.iter().enumerate() {
            let next = ops::step_weights(&current, &opts.to, pct);
            if opts.confirm {
                print!("step {}/{total}: set {}? [y/N] ", i + 1, show(&next));
                let _ = std::io::stdout().flush();
                let answer = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line)
                });
                let answer = tokio::select! {
                    a = answer => a.ok().and_then(Result::ok).unwrap_or_default(),
                    _ = tokio::signal::ctrl_c() => return abort("interrupted".into(), &written.borrow()),
                };
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return abort(format!("step {} not confirmed", i + 1), &written.borrow());
                }
            }
            let applied = ops::set_weights(path, &next)?;
            *written.borrow_mut() = std::fs::read_to_string(path).ok();
            current = applied;
            println!("step {}/{total}: {}", i + 1, show(&current));
            // Wait for the proxy to serve the new weights.
            let mut want = current.clone();
            want.sort();
            match admin.applied("traffic", &want).await {
                Some(true) => {}
                Some(false) => {
                    restore(path, &original_text, &written.borrow(), &original)?;
                    return Ok(Outcome::RolledBack(format!(
                        "step {}: the proxy at {} did not apply the new weights within 10 s (is it serving {}?); restored {}",
                        i + 1,
                        admin.base,
                        path.display(),
                        show(&original)
                    )));
                }
                None => return abort("interrupted".into(), &written.borrow()),
            }
            let began_at = SystemTime::now();
            let start_text = admin.get("/metrics").await.map_err(RolloutError::Setup)?;
            let start = sample(&start_text, &opts.to);
            let began = Instant::now();
            let mut last_print = Instant::now() - Duration::from_secs(60);
            loop {
                let elapsed = began.elapsed();
                if elapsed >= opts.interval {
                    break;
                }
                let wait = (opts.interval - elapsed).min(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => {
                        println!();
                        return abort("interrupted".into(), &written.borrow());
                    }
                }
                let every = if tty {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(5)
                };
                if last_print.elapsed() >= every {
                    if let Ok(text) = admin.get("/metrics").await {
                        let (n, ratio, p99) = window(&start, &sample(&text, &opts.to));
                        let left = opts.interval.saturating_sub(began.elapsed()).as_secs();
                        let line = format!(
                            "  step {}/{total} {} | {left:>3} s left | {}: {n} requests, 5xx {:.1}%, p99 {}",
                            i + 1,
                            show(&current),
                            opts.to,
                            ratio * 100.0,
                            fmt_p99(p99)
                        );
                        if tty {
                            print!("\r{line}   ");
                            let _ = std::io::stdout().flush();
                        } else {
                            println!("{line}");
                        }
                    }
                    last_print = Instant::now();
                }
            }
            if tty {
                println!();
            }
            let end_text = admin.get("/metrics").await.map_err(RolloutError::Setup)?;
            let (n, ratio, p99) = window(&start, &sample(&end_text, &opts.to));
            let breach = if n < opts.min_requests {
                Some(format!(
                    "not enough traffic to judge: {n} requests to {} in {} s (need at least {})",
                    opts.to,
                    opts.interval.as_secs_f64(),
                    opts.min_requests
                ))
            } else if ratio > opts.max_error_rate {
                Some(format!(
                    "5xx ratio {:.1}% of {n} requests to {} is above the limit of {}%",
                    ratio * 100.0,
                    opts.to,
                    opts.max_error_rate * 100.0
                ))
            } else if p99.is_some_and(|p| p > opts.max_p99_ms) {
                Some(format!(
                    "p99 latency {} of {} is above the limit of {} ms",
                    fmt_p99(p99),
                    opts.to,
                    opts.max_p99_ms
                ))
            } else {
                None
            };
            if let Some(reason) = breach {
                restore(path, &original_text, &written.borrow(), &original)?;
                println!("step {}/{total} FAILED: {reason}", i + 1);
                admin.print_failed(&opts.to, "the step", began_at).await;
                println!("rolled back: {}", show(&original));
                return Ok(Outcome::RolledBack(format!("step {}: {reason}", i + 1)));
            }
            println!(
                "step {}/{total} passed: {n} requests to {}, 5xx {:.2}%, p99 {}",
                i + 1,
                opts.to,
                ratio * 100.0,
                fmt_p99(p99)
            );
        }
        println!("rollout complete: {}", show(&current));
        Ok(Outcome::Completed)

    }
    .await;
    if let Err(e) = &result {
        // Whatever stopped the rollout, the weights from before it come back.
        if restore(path, &original_text, &written_cell.borrow(), &original).is_ok() {
            println!("stopped ({e}); restored {}", show(&original));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
scoregate_requests_total{code="200",deployment="green",pinned="false"} 90
scoregate_requests_total{code="503",deployment="green",pinned="false"} 10
scoregate_requests_total{code="200",deployment="blue",pinned="false"} 1000
scoregate_requests_total{code="200",deployment="teal",pinned="false"} 50
scoregate_grpc_responses_total{deployment="teal",grpc_code="OK"} 40
scoregate_grpc_responses_total{deployment="teal",grpc_code="NOT_FOUND"} 4
scoregate_grpc_responses_total{deployment="teal",grpc_code="UNAVAILABLE"} 5
scoregate_grpc_responses_total{deployment="teal",grpc_code="INTERNAL"} 1
scoregate_request_duration_seconds_bucket{deployment="green",le="0.1"} 50
scoregate_request_duration_seconds_bucket{deployment="green",le="1"} 100
scoregate_request_duration_seconds_bucket{deployment="green",le="+Inf"} 100
"#;

    #[test]
    fn samples_and_windows_from_metrics_text() {
        let s = sample(TEXT, "green");
        assert_eq!((s.requests, s.errors), (100, 10));
        assert_eq!(s.buckets.len(), 3);
        let (n, ratio, p99) = window(&Sample::default(), &s);
        assert_eq!(n, 100);
        assert!((ratio - 0.1).abs() < 1e-9);
        // 99th of 100: in (0.1, 1], 49/50 of the way.
        assert!((p99.unwrap() - 982.0).abs() < 1e-6, "{p99:?}");
        let (n, _, p99) = window(&s, &s);
        assert_eq!((n, p99), (0, None));
        // gRPC: every answer is HTTP 200; UNAVAILABLE and INTERNAL are the server's failures,
        // NOT_FOUND is the caller's.
        let g = sample(TEXT, "teal");
        assert_eq!((g.requests, g.errors), (50, 6));
    }

    #[test]
    fn failed_requests_of_the_target_since_the_step_began() {
        let text = r#"{"failures": [
            {"time": "2026-01-01T10:00:00.500Z", "request_id": "before", "deployment": "green", "status": 503},
            {"time": "2026-01-01T10:00:01.000Z", "request_id": "g1", "deployment": "green", "status": 503},
            {"time": "2026-01-01T10:00:01.200Z", "request_id": "b1", "deployment": "blue", "status": 500},
            {"time": "2026-01-01T10:00:01.300Z", "request_id": "none", "deployment": null, "status": 502},
            {"time": "not a time", "request_id": "bad", "deployment": "green", "status": 503},
            {"time": "2026-01-01T10:00:02.000Z", "request_id": "g2", "deployment": "green", "status": 200, "grpc_status": 14}
        ]}"#;
        let since = humantime::parse_rfc3339("2026-01-01T10:00:01Z").unwrap();
        assert_eq!(
            failed_since(text, "green", since),
            Some(vec!["g1".to_string(), "g2".to_string()])
        );
        // A failure in the millisecond the step began in counts.
        assert_eq!(
            failed_since(text, "green", since + Duration::from_micros(400)),
            Some(vec!["g1".to_string(), "g2".to_string()])
        );
        assert_eq!(failed_since(text, "teal", since), Some(vec![]));
        // An older proxy's 404 body, or anything else: nothing to say.
        assert_eq!(
            failed_since(r#"{"error":"not found"}"#, "green", since),
            None
        );
        assert_eq!(failed_since("<html>", "green", since), None);
    }

    /// An admin listener on 127.0.0.1 whose `/failures` answers `status` with `body`.
    async fn admin_answering(status: u16, body: &'static str) -> Admin {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(
                        if req.uri().path() == "/failures" {
                            body
                        } else {
                            ""
                        },
                    )));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Admin {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    #[tokio::test]
    async fn the_failed_requests_come_from_the_admin_failures_or_not_at_all() {
        let since = humantime::parse_rfc3339("2026-01-01T10:00:00Z").unwrap();
        let admin = admin_answering(
            200,
            r#"{"failures":[{"time":"2026-01-01T10:00:01.000Z","request_id":"3f2a","deployment":"green","instance":"127.0.0.1:9101","status":503,"grpc_status":null,"error":null}]}"#,
        )
        .await;
        assert_eq!(
            admin
                .failed_requests("green", "the step", since)
                .await
                .as_deref(),
            Some(
                "failed requests on green during the step (find them in the access log by request_id): 3f2a"
            )
        );
        assert_eq!(admin.failed_requests("blue", "the step", since).await, None);
        // An older proxy: 404.
        let old = admin_answering(404, r#"{"error":"not found"}"#).await;
        assert_eq!(old.failed_requests("green", "the step", since).await, None);
        // Nobody listening.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let gone = Admin {
            base: format!("http://{dead_addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        assert_eq!(gone.failed_requests("green", "the step", since).await, None);
    }

    #[test]
    fn the_failed_line_names_at_most_the_last_20() {
        assert_eq!(failed_line("green", "the step", &[]), None);
        let two = ["a".to_string(), "b".to_string()];
        assert_eq!(
            failed_line("green", "the step", &two).as_deref(),
            Some(
                "failed requests on green during the step (find them in the access log by request_id): a, b"
            )
        );
        let many: Vec<String> = (0..25).map(|i| format!("id{i}")).collect();
        let line = failed_line("green", "the shadow step", &many).unwrap();
        assert!(
            line.starts_with(
                "failed requests on green during the shadow step (the last 20 of 25 the proxy kept; find them in the access log by request_id): id5, id6, "
            ),
            "{line}"
        );
        assert!(line.ends_with(", id24"), "{line}");
    }
}

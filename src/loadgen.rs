//! Layer 6 (tools): `scoregate load`, a small sustained load generator for an endpoint. Keep-alive clients send
//! requests for a duration and the report gives throughput, latency percentiles, status codes
//! and the split per deployment (from `x-deployment`), with a progress line every second.
//! Beside the data path: it is a client of it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What `load` sends.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) url: String,
    /// How long. Default 10 s.
    pub(crate) duration: Duration,
    /// Clients sending at once, each on its own keep-alive connection. Default 8.
    pub(crate) concurrency: usize,
    /// Extra request headers (a pin, a sticky key, a key).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// A POST body (JSON); GET without it.
    pub(crate) body: Option<Bytes>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    by_deployment: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
}

/// The outcome of a load run.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) failed: u64,
    pub(crate) text: String,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Runs the load and returns the report (also printing progress on stderr).
pub(crate) async fn run(opts: Options) -> Result<Report, String> {
    let uri: http::Uri = opts
        .url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", opts.url))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{}`: only http:// URLs are supported", opts.url));
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, uri, stop, done, opts) = (
            client.clone(),
            uri.clone(),
            stop.clone(),
            done.clone(),
            opts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut b = Request::builder()
                    .method(if opts.body.is_some() {
                        Method::POST
                    } else {
                        Method::GET
                    })
                    .uri(uri.clone());
                for (k, v) in &opts.headers {
                    b = b.header(k, v);
                }
                if opts.body.is_some() {
                    b = b.header(http::header::CONTENT_TYPE, "application/json");
                }
                let Ok(req) = b.body(Full::new(opts.body.clone().unwrap_or_default())) else {
                    break;
                };
                let t0 = Instant::now();
                let (status, dep) = match client.request(req).await {
                    Ok(resp) => {
                        let dep = resp
                            .headers()
                            .get("x-deployment")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(none)")
                            .to_string();
                        let status = resp.status().as_u16().to_string();
                        match resp.into_body().collect().await {
                            Ok(_) => (status, dep),
                            Err(_) => ("broken body".to_string(), dep),
                        }
                    }
                    Err(_) => ("connection error".to_string(), "(none)".to_string()),
                };
                t.latencies_us.push(t0.elapsed().as_micros() as u64);
                *t.by_deployment.entry(dep).or_default() += 1;
                *t.by_status.entry(status).or_default() += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            t
        }));
    }
    let tty = std::io::stderr().is_terminal();
    let mut last = 0;
    while started.elapsed() < opts.duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(opts.duration.saturating_sub(started.elapsed())),
        )
        .await;
        let now = done.load(Ordering::Relaxed);
        let line = format!(
            "{:>5.1} s  {:>8} requests  {:>8} req/s",
            started.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.map_err(|e| e.to_string())?;
        all.latencies_us.extend(t.latencies_us);
        for (k, v) in t.by_deployment {
            *all.by_deployment.entry(k).or_default() += v;
        }
        for (k, v) in t.by_status {
            *all.by_status.entry(k).or_default() += v;
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len() as u64;
    let failed: u64 = all
        .by_status
        .iter()
        .filter(|(s, _)| !s.starts_with('2'))
        .map(|(_, c)| *c)
        .sum();
    let mut text = format!(
        "{n} requests in {:.1} s: {:.0} req/s, {failed} failed\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n\n",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&all.latencies_us, 0.5),
        percentile(&all.latencies_us, 0.9),
        percentile(&all.latencies_us, 0.99),
        percentile(&all.latencies_us, 1.0),
    );
    text.push_str(&format!(
        "{:<20} {:>9} {:>7}\n",
        "deployment", "requests", "share"
    ));
    for (d, c) in &all.by_deployment {
        text.push_str(&format!(
            "{d:<20} {c:>9} {:>6.1}%\n",
            100.0 * *c as f64 / n.max(1) as f64
        ));
    }
    text.push_str(&format!("\n{:<20} {:>9}\n", "status", "requests"));
    for (s, c) in &all.by_status {
        text.push_str(&format!("{s:<20} {c:>9}\n"));
    }
    let _ = std::io::stderr().flush();
    Ok(Report { failed, text })
}

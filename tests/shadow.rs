//! Shadow comparison through the real binary: requests mirrored to a deployment at 0% live,
//! each copy's answer compared with the live answer to the same request, and what a user reads
//! of it — `GET /shadow` on the admin listener, `scoregate_shadow_*` and `scoregate_mirror_*`
//! in `/metrics`, and `rollout --shadow`. Backends are the built-in scoring servers
//! (`score-server --disagree-rate`, `--noise`, `--delay-ms`), on 127.0.0.1 port 0.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

/// A proxy file: `blue` takes all live traffic, every other deployment is at 0% live and
/// mirrored at 100%; `extra` adds top-level lines (`mirror_compare: ...`).
fn mirror_file(blue: SocketAddr, mirrors: &[(&str, SocketAddr)], extra: &str) -> String {
    let names: Vec<String> = mirrors.iter().map(|(n, _)| format!("{n}: 100")).collect();
    let mut f = EndpointFile::new();
    if !names.is_empty() {
        f = f.extra(&format!("mirror_traffic: {{{}}}", names.join(", ")));
    }
    let mut f = f.extra(extra).deployment("blue", &[blue], Some(100));
    for (name, addr) in mirrors {
        f = f.deployment(name, &[*addr], Some(0));
    }
    f.yaml()
}

/// A `/score` body of one row, different for each `i`.
fn row(i: usize) -> String {
    format!(
        "{{\"data\": [[{}, {}, {}]]}}",
        i % 17,
        (i * 7) % 5,
        i as f64 / 8.0
    )
}

/// POSTs `body` to `url` with `headers`.
async fn post(
    c: &TestClient,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(body.into())).unwrap()).await
}

/// POSTs `n` varied rows to the proxy's `/score`, `conns` at a time; asserts every live answer
/// is blue's 200.
async fn score_n(proxy: &Proc, n: usize, conns: usize) {
    let c = client();
    let url = proxy.url("/score");
    let tasks: Vec<_> = (0..conns)
        .map(|k| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                for i in (k..n).step_by(conns) {
                    let a = post(&c, &url, row(i), &[]).await;
                    assert_eq!((a.status, a.deployment()), (StatusCode::OK, "blue"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A proxy mirroring every request to `mirrors` with `compare` (see [`mirror_file`]), after
/// `n` varied POST /score requests from `conns` clients.
async fn scored(
    blue: SocketAddr,
    mirrors: &[(&str, SocketAddr)],
    compare: &str,
    n: usize,
    conns: usize,
) -> Proc {
    let proxy = Proc::proxy(&mirror_file(blue, mirrors, compare));
    score_n(&proxy, n, conns).await;
    proxy
}

/// `GET /shadow` as JSON.
async fn shadow(proxy: &Proc) -> Value {
    admin_get(proxy, "/shadow").await.json()
}

/// `deployment`'s entry in `/shadow`'s targets (`Null` when it has none yet).
fn target<'a>(report: &'a Value, deployment: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["deployment"] == deployment))
        .unwrap_or(&Value::Null)
}

/// (match, mismatch, incomparable) of `deployment` in `/shadow`.
fn counts(report: &Value, deployment: &str) -> [u64; 3] {
    let t = target(report, deployment);
    ["match", "mismatch", "incomparable"].map(|k| t[k].as_u64().unwrap_or(0))
}

/// Waits (up to 20 s) until `n` comparisons of `deployment` are recorded; the report then.
async fn compared(proxy: &Proc, deployment: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = shadow(proxy).await;
        let total: u64 = counts(&report, deployment).iter().sum();
        if total >= n {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {n} comparisons for {deployment}: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `scoregate_shadow_comparisons_total{deployment,result}`.
async fn comparisons(proxy: &Proc, deployment: &str, result: &str) -> f64 {
    proxy
        .metric(&format!(
            "scoregate_shadow_comparisons_total{{deployment=\"{deployment}\",result=\"{result}\"}}"
        ))
        .await
}

/// The recorded mismatches of `deployment`.
fn mismatches<'a>(report: &'a Value, deployment: &str) -> Vec<&'a Value> {
    report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["deployment"] == deployment)
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disagreeing_green_mismatches_at_its_disagree_rate() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &["--disagree-rate", "0.2"]);
    let n = 400;
    let compare = "mirror_compare: {abs_tolerance: 1e-6}";
    let proxy = scored(blue.addr, &[("green", green.addr)], compare, n, 4).await;
    let report = compared(&proxy, "green", n as u64).await;
    let [m, mm, inc] = counts(&report, "green");
    assert_eq!((m + mm, inc), (n as u64, 0), "{report:#}");
    // One prediction per request, each off with p = 0.2: binomial sd sqrt(400 * 0.2 * 0.8) = 8
    // requests (0.02 of the ratio); 4 sd is 0.08.
    let ratio = mm as f64 / n as f64;
    assert!((ratio - 0.2).abs() <= 0.08, "mismatch ratio {ratio}");
    // Every comparison made within this minute: the last minute's ratio is the same.
    let recent = target(&report, "green")["mismatch_ratio_last_minute"]
        .as_f64()
        .unwrap();
    assert!((recent - ratio).abs() < 1e-9, "{recent} vs {ratio}");
    // The metrics agree with /shadow.
    assert_eq!(comparisons(&proxy, "green", "match").await, m as f64);
    assert_eq!(comparisons(&proxy, "green", "mismatch").await, mm as f64);
    assert_eq!(comparisons(&proxy, "green", "incomparable").await, 0.0);
    let ok = "scoregate_mirror_requests_total{deployment=\"green\",result=\"ok\"}";
    assert_eq!(proxy.metric(ok).await, n as f64);
    // Pinned requests are not mirrored.
    let c = client();
    for i in 0..20 {
        let a = post(
            &c,
            &proxy.url("/score"),
            row(i),
            &[("x-api-version", "blue")],
        )
        .await;
        assert_eq!((a.status, a.deployment()), (StatusCode::OK, "blue"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.metric(ok).await, n as f64);
    // The evidence: the last 50, each at the prediction, off by exactly 1.0.
    let kept = mismatches(&report, "green");
    assert_eq!(kept.len(), 50.min(mm as usize));
    for k in kept {
        assert_eq!(
            (&k["method"], &k["path"], &k["pointer"]),
            (
                &Value::from("POST"),
                &Value::from("/score"),
                &Value::from("/predictions/0")
            ),
            "{k:#}"
        );
        assert_eq!(
            (&k["live_status"], &k["copy_status"]),
            (&200.into(), &200.into())
        );
        let (live, copy) = (num(&k["live_value"]), num(&k["copy_value"]));
        assert!((copy - live - 1.0).abs() < 1e-9, "{k:#}");
        let bodies: [Value; 2] = ["live_body", "copy_body"]
            .map(|b| serde_json::from_str(k[b].as_str().unwrap()).unwrap());
        assert_eq!(
            (&bodies[0]["deployment"], &bodies[1]["deployment"]),
            (&"blue".into(), &"green".into())
        );
    }
    eprintln!("disagree-rate 0.2: {mm} of {n} mismatched ({ratio:.3})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_below_the_tolerance_matches_and_noise_above_it_does_not() {
    let blue = Proc::score_server("blue", &[]);
    let quiet = Proc::score_server("quiet", &["--noise", "1e-9"]);
    let noisy = Proc::score_server("noisy", &["--noise", "0.01"]);
    // Default tolerances (abs 1e-6, rel 1e-4); both copies of every request (one tee).
    let n = 100;
    let mirrors = [("quiet", quiet.addr), ("noisy", noisy.addr)];
    let compare = "mirror_compare: {rel_tolerance: 1e-4}";
    let proxy = scored(blue.addr, &mirrors, compare, n, 2).await;
    let report = compared(&proxy, "quiet", n as u64).await;
    assert_eq!(counts(&report, "quiet"), [n as u64, 0, 0], "{report:#}");
    let report = compared(&proxy, "noisy", n as u64).await;
    let [m, mm, inc] = counts(&report, "noisy");
    // Predictions are at most 1 + 0.5 * (16 + 4 + 12.4) = 17.2, so the tolerance is below
    // 1.8e-3 and uniform noise of ±0.01 passes it with p > 0.82 each: 100 requests give 82
    // expected (sd 3.8); 50 is more than 8 sd below.
    assert!(mm >= 50 && m + mm == n as u64 && inc == 0, "{report:#}");
    for k in mismatches(&report, "noisy") {
        assert_eq!(k["pointer"], "/predictions/0", "{k:#}");
        let d = (num(&k["live_value"]) - num(&k["copy_value"])).abs();
        assert!(d <= 0.01 + 1e-9, "{k:#}");
    }
    // The largest difference per comparison: never above the noise.
    let metrics = proxy.metrics().await;
    let sum = |name: &str, d: &str| {
        let series = format!("{name}{{deployment=\"{d}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series}in\n{metrics}"))
    };
    let quiet_sum = sum("scoregate_shadow_max_difference_sum", "quiet");
    let noisy_sum = sum("scoregate_shadow_max_difference_sum", "noisy");
    assert!(quiet_sum <= n as f64 * 1e-9 * 2.0, "{quiet_sum}");
    assert!(
        noisy_sum > 0.0 && noisy_sum <= n as f64 * 0.01 * 2.0,
        "{noisy_sum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_field_is_ignored_by_default_and_compared_with_ignore_empty() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &[]);
    let mirrors = [("green", green.addr)];
    let n = 40;
    // Defaults: the answers differ only in `deployment`, which names who answered.
    let compare = "mirror_compare: {max_body_bytes: 65536}";
    let defaults = scored(blue.addr, &mirrors, compare, n, 2).await;
    let report = compared(&defaults, "green", n as u64).await;
    assert_eq!(counts(&report, "green"), [n as u64, 0, 0], "{report:#}");
    // `ignore: []`: nothing ignored, every answer differs first at /deployment.
    let none = scored(blue.addr, &mirrors, "mirror_compare:\n  ignore: []", n, 2).await;
    let report = compared(&none, "green", n as u64).await;
    assert_eq!(counts(&report, "green"), [0, n as u64, 0], "{report:#}");
    for k in mismatches(&report, "green") {
        assert_eq!(
            (&k["pointer"], &k["live_value"], &k["copy_value"]),
            (
                &"/deployment".into(),
                &"\"blue\"".into(),
                &"\"green\"".into()
            ),
            "{k:#}"
        );
    }
}

/// A `/score` body of one row of `features` numbers (each `0.25`, 5 bytes with its comma).
fn wide_row(features: usize) -> String {
    let mut s = String::with_capacity(features * 5 + 16);
    s.push_str("{\"data\": [[");
    for i in 0..features {
        if i > 0 {
            s.push(',');
        }
        s.push_str("0.25");
    }
    s.push_str("]]}");
    s
}

/// Chunk size of [`post_chunked`]: small, so the proxy reads the body in many small frames.
const CHUNK: usize = 64 << 10;

/// POSTs `body` to `proxy`'s `/score` in chunks of [`CHUNK`] (no content-length) on a fresh
/// connection; the answer's head and body as text.
///
/// With 64 KiB chunks the frames are cut at chunk boundaries, many and small: when the tee held
/// 64 frames per copy rather than a number of bytes, the copy of a 10 MiB body was abandoned in
/// 4 of 6 runs; counted in bytes (4 MiB of lag), it is compared.
async fn post_chunked(proxy: &Proc, body: String) -> String {
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut req = b"POST /score HTTP/1.1\r\nhost: scoring\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        for piece in body.as_bytes().chunks(CHUNK) {
            req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            req.extend_from_slice(piece);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        raw(addr, &req, Duration::from_secs(20))
    })
    .await
    .unwrap()
}

/// The nonzero `scoregate_mirror_dropped_total` lines of `deployment`.
async fn mirror_drops(proxy: &Proc, deployment: &str) -> Vec<String> {
    let label = format!("deployment=\"{deployment}\"");
    proxy
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("scoregate_mirror_dropped_total{") && l.contains(&label))
        .filter(|l| !l.ends_with(" 0"))
        .map(String::from)
        .collect()
}

/// POSTs a wide `/score` body through `proxy`; blue's answer, asserted 200.
async fn score_wide(proxy: &Proc, body: String) -> Answer {
    let a = post(&client(), &proxy.url("/score"), body, &[]).await;
    let text = String::from_utf8_lossy(&a.body).into_owned();
    assert_eq!(
        (a.status, a.deployment()),
        (StatusCode::OK, "blue"),
        "{text}"
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_tensor_is_compared_and_one_over_the_bound_is_dropped() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &[]);
    // The bound of both the copied request and the compared answers: 12 MiB.
    let proxy = Proc::proxy(&mirror_file(
        blue.addr,
        &[("green", green.addr)],
        "mirror_compare: {max_body_bytes: 12582912}",
    ));
    let big = wide_row(2 * 1024 * 1024);
    assert!(big.len() >= 10 * 1024 * 1024, "{}", big.len());
    let a = score_wide(&proxy, big).await;
    // 2 Mi features of 0.25: 1 + 0.5 * 524288.
    assert_eq!(a.json()["predictions"][0], 262145.0);
    let report = compared(&proxy, "green", 1).await;
    assert_eq!(counts(&report, "green"), [1, 0, 0], "{report:#}");
    // 13 MiB: over the copy's bound, dropped before it is sent; the live answer is whole.
    let bigger_row = wide_row(13 * 1024 * 1024 / 5 + 1);
    score_wide(&proxy, bigger_row.clone()).await;
    let dropped = "scoregate_mirror_dropped_total{deployment=\"green\",reason=\"body_too_large\"}";
    assert_eq!(proxy.metric(dropped).await, 1.0);
    let ok = "scoregate_mirror_requests_total{deployment=\"green\",result=\"ok\"}";
    assert_eq!(proxy.metric(ok).await, 1.0);
    assert_eq!(counts(&shadow(&proxy).await, "green"), [1, 0, 0]);

    // The same without content-length: the body is teed as it streams. 10 MiB is compared.
    let live = post_chunked(&proxy, wide_row(2 * 1024 * 1024)).await;
    assert!(
        live.starts_with("HTTP/1.1 200") && live.contains("[262145.0]"),
        "{live}"
    );
    let report = compared(&proxy, "green", 2).await;
    let drops = mirror_drops(&proxy, "green").await;
    assert_eq!(counts(&report, "green"), [2, 0, 0], "{report:#}\n{drops:?}");
    // 13 MiB: the tee gives up on the copy past the bound; the live answer is whole, and the
    // copy is dropped (never a match, an `incomparable` verdict), as `body_too_large` like one
    // with a declared length, though the bound is only known to be passed midway.
    let live = post_chunked(&proxy, bigger_row).await;
    assert!(
        live.starts_with("HTTP/1.1 200") && live.contains("x-deployment: blue"),
        "{live}"
    );
    let report = compared(&proxy, "green", 3).await;
    assert_eq!(counts(&report, "green"), [2, 0, 1], "{report:#}");
    let metrics = proxy.metrics().await;
    let label = "deployment=\"green\"";
    assert_eq!(
        sum_series(&metrics, "scoregate_mirror_dropped_total", label),
        2.0,
        "{metrics}"
    );
    assert_eq!(proxy.metric(dropped).await, 2.0, "{metrics}");
    eprintln!(
        "chunked 13 MiB copy dropped as: {:?}",
        mirror_drops(&proxy, "green").await
    );
}

/// The 99th percentile of `n` sequential POST /score requests through `proxy`, in ms.
async fn live_p99_ms(proxy: &Proc, n: usize) -> f64 {
    let c = client();
    let url = proxy.url("/score");
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let a = post(&c, &url, row(i), &[]).await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((a.status, a.deployment()), (StatusCode::OK, "blue"));
    }
    ms.sort_by(f64::total_cmp);
    ms[(n * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_mirror_never_delays_the_live_answer() {
    let blue = Proc::score_server("blue", &[]);
    let slow = Proc::score_server("slow", &["--delay-ms", "2000"]);
    let n = 200;
    let plain = Proc::proxy(&mirror_file(blue.addr, &[], ""));
    let unmirrored = live_p99_ms(&plain, n).await;
    let compare = "mirror_compare: {abs_tolerance: 1e-6}";
    let to_slow = Proc::proxy(&mirror_file(blue.addr, &[("slow", slow.addr)], compare));
    let with_slow = live_p99_ms(&to_slow, n).await;
    let to_dead = Proc::proxy(&mirror_file(blue.addr, &[("dead", dead_addr())], compare));
    let with_dead = live_p99_ms(&to_dead, n).await;
    eprintln!(
        "live p99 over {n} requests: unmirrored {unmirrored:.2} ms, mirrored to a 2 s mirror {with_slow:.2} ms, to a closed port {with_dead:.2} ms"
    );
    // Generous: within 5x + 50 ms of the unmirrored p99 (shared CI cores), and far below the
    // mirror's 2 s delay.
    for p99 in [with_slow, with_dead] {
        assert!(
            p99 <= unmirrored * 5.0 + 50.0 && p99 < 250.0,
            "{p99} vs {unmirrored}"
        );
    }
    // The copies to the closed port failed (counted), none compared as a match.
    let dead_err = "scoregate_mirror_requests_total{deployment=\"dead\",result=\"error\"}";
    wait_until(
        "the dead mirror's copies failed",
        Duration::from_secs(10),
        async || to_dead.metric(dead_err).await >= 1.0,
    )
    .await;
    assert_eq!(comparisons(&to_dead, "dead", "match").await, 0.0);
}

/// Sums every sample of `name` whose labels include `label` in a `/metrics` text.
fn sum_series(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// POST /score load with varied rows from 2 clients until stopped; (answers per deployment,
/// failures).
struct ScoreLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<String>, usize)>>,
}

impl ScoreLoad {
    fn start(proxy: &Proc) -> ScoreLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = client();
        let tasks = (0..2)
            .map(|k| {
                let (c, url, stop) = (c.clone(), proxy.url("/score"), stop.clone());
                tokio::spawn(async move {
                    let (mut who, mut failed) = (Vec::new(), 0);
                    let mut i = k;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let a = post(&c, &url, row(i), &[]).await;
                        if a.status == StatusCode::OK {
                            who.push(a.deployment().to_string());
                        } else {
                            failed += 1;
                        }
                        i += 2;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    (who, failed)
                })
            })
            .collect();
        ScoreLoad { stop, tasks }
    }

    async fn stop(self) -> (Vec<String>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut who, mut failed) = (Vec::new(), 0);
        for t in self.tasks {
            let (w, f) = t.await.unwrap();
            who.extend(w);
            failed += f;
        }
        (who, failed)
    }
}

/// `rollout FILE --to green --shadow 2s --steps 50,100 --interval 1s` against `proxy`, with
/// POST /score load running meanwhile: (exit code, stdout, stderr, live answers' deployments).
async fn shadow_rollout(proxy: &Proc) -> (i32, String, String, Vec<String>) {
    let load = ScoreLoad::start(proxy);
    let args: Vec<String> = [
        "rollout",
        proxy.config.as_ref().unwrap().to_str().unwrap(),
        "--to",
        "green",
        "--admin",
        &format!("http://{}", proxy.admin.unwrap()),
        "--shadow",
        "2s",
        "--max-mismatch",
        "0.05",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "10",
    ]
    .map(String::from)
    .to_vec();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&a)
    })
    .await
    .unwrap();
    let (who, failed) = load.stop().await;
    assert_eq!(
        failed, 0,
        "live requests failed during the rollout\n{out}\n{err}"
    );
    (code, out, err, who)
}

fn blue_green_live_file(blue: SocketAddr, green: SocketAddr) -> String {
    EndpointFile::new()
        .deployment("blue", &[blue], Some(100))
        .deployment("green", &[green], Some(0))
        .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_shadow_rolls_back_a_disagreeing_green_before_any_user_sees_it() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &["--disagree-rate", "0.3"]);
    let proxy = Proc::proxy(&blue_green_live_file(blue.addr, green.addr));
    let path = proxy.config.clone().unwrap();
    let original = std::fs::read(&path).unwrap();
    let (code, out, err, who) = shadow_rollout(&proxy).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("rolled back"), "{out}");
    assert!(out.contains("disagree with the live ones"), "{out}");
    assert!(!out.contains("step 1/2"), "a live step ran:\n{out}");
    assert_eq!(std::fs::read(&path).unwrap(), original, "the file changed");
    assert!(
        !who.is_empty() && who.iter().all(|d| d == "blue"),
        "{who:?}"
    );
    // Green was compared, and never answered a live request.
    let text = proxy.metrics().await;
    let green = "deployment=\"green\"";
    assert!(
        sum_series(&text, "scoregate_shadow_comparisons_total", green) >= 10.0,
        "{text}"
    );
    assert_eq!(
        sum_series(&text, "scoregate_requests_total", green),
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_shadow_promotes_an_agreeing_green() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &[]);
    let proxy = Proc::proxy(&blue_green_live_file(blue.addr, green.addr));
    let (code, out, err, who) = shadow_rollout(&proxy).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shadow passed"), "{out}");
    assert!(
        out.contains("rollout complete: blue=0% green=100%"),
        "{out}"
    );
    let text = std::fs::read_to_string(proxy.config.as_ref().unwrap()).unwrap();
    assert_eq!(
        text,
        blue_green_live_file(blue.addr, green.addr)
            .replace("blue: 100\n  green: 0", "blue: 0\n  green: 100")
    );
    assert!(who.iter().any(|d| d == "green"), "green never went live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_evidence_holds_no_key_header_or_query() {
    let blue = Proc::score_server("blue", &[]);
    // Every answer disagrees: every request is kept as evidence.
    let green = Proc::score_server("green", &["--disagree-rate", "1.0"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.txt"), "supersecret\n").unwrap();
    let file = mirror_file(
        blue.addr,
        &[("green", green.addr)],
        "auth_mode: key\nkeys_file: keys.txt\nmirror_compare: {abs_tolerance: 1e-6}",
    );
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(&path, file).unwrap();
    let proxy = Proc::spawn(
        &["run", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let c = client();
    let headers = [
        ("authorization", "Bearer supersecret"),
        ("x-api-key", "topsecret"),
    ];
    let n = 20;
    for i in 0..n {
        let a = post(&c, &proxy.url("/score?token=querysecret"), row(i), &headers).await;
        assert_eq!((a.status, a.deployment()), (StatusCode::OK, "blue"));
    }
    let report = compared(&proxy, "green", n as u64).await;
    assert_eq!(counts(&report, "green"), [0, n as u64, 0], "{report:#}");
    let kept = mismatches(&report, "green");
    assert!(kept.iter().all(|k| k["path"] == "/score"), "{report:#}");
    let text = admin_get(&proxy, "/shadow").await.body;
    let text = String::from_utf8_lossy(&text);
    let metrics = proxy.metrics().await;
    for secret in ["supersecret", "topsecret", "querysecret"] {
        assert!(!text.contains(secret), "{secret} in /shadow: {text}");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        assert!(!proxy.log().contains(secret), "{secret} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_model_infer_call_is_compared_as_a_model_infer_response() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let grpc = &["--grpc-listen", "127.0.0.1:0"];
    let blue = Proc::score_server("blue", grpc);
    let green = Proc::score_server(
        "green",
        &["--grpc-listen", "127.0.0.1:0", "--disagree-rate", "0.5"],
    );
    let file = grpc_blue_green_file(
        &blue,
        &green,
        "mirror_traffic: {green: 100}\nmirror_compare: {abs_tolerance: 1e-6}\ntraffic: {blue: 100, green: 0}\n",
    );
    let proxy = Proc::proxy(&file);
    let n = 100;
    let calls = run_grpcio(python, proxy.addr, n as u32, None);
    assert_eq!(
        calls["deployments"],
        serde_json::json!({"blue": n}),
        "{calls}"
    );
    let report = compared(&proxy, "green", n).await;
    let [m, mm, inc] = counts(&report, "green");
    // p = 0.5 per call: sd 5 calls; 4 sd is 20.
    assert!(
        inc == 0 && m + mm == n && mm.abs_diff(50) <= 20,
        "{report:#}"
    );
    for k in mismatches(&report, "green") {
        assert_eq!(k["pointer"], "/outputs/0/data/0", "{k:#}");
        assert_eq!(
            (&k["live_status"], &k["copy_status"]),
            (&0.into(), &0.into()),
            "{k:#}"
        );
        assert!(
            (num(&k["copy_value"]) - num(&k["live_value"]) - 1.0).abs() < 1e-9,
            "{k:#}"
        );
    }
}

//! Metrics and the admin listener, checked by exact counts and against the real tools:
//! promtool, a Prometheus server scraping the proxy, headless Chromium on the status page.
//!
//! The peer tools come from Debian's `prometheus` and `chromium` packages (installed by
//! `.ci/run`). Without them these tests say so and pass, unless SCOREGATE_REQUIRE_PEERS=1 (as in
//! CI), where a missing tool fails the test.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use sha2::{Digest, Sha256};

/// The tool's path, or None (the test is skipped) when it is missing and not required.
fn peer(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("SCOREGATE_REQUIRE_PEERS").is_err(),
            "{tool} is required (SCOREGATE_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install prometheus chromium)");
    }
    found
}

/// Series lines of a `/metrics` text whose name starts with `prefix`.
fn series(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_exactly_by_deployment_code_and_pin() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .deployment("green", &[green.addr], Some(0))
            .deployment("dead", &[dead_addr()], Some(0))
            .yaml(),
    );
    let c = client();
    let url = proxy.url("/score");
    for _ in 0..40 {
        assert_eq!(get(&c, &url, &[]).await.status, StatusCode::OK);
    }
    for _ in 0..7 {
        get(&c, &url, &[("x-api-version", "blue")]).await;
    }
    for _ in 0..13 {
        get(&c, &url, &[("x-api-version", "green")]).await;
    }
    for _ in 0..3 {
        assert_eq!(
            get(&c, &url, &[("x-api-version", "dead")]).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    for _ in 0..2 {
        get(&c, &url, &[("x-api-version", "nobody")]).await;
    }
    let text = proxy.metrics().await;
    let got = series(&text, "scoregate_requests_total");
    let want: BTreeMap<String, f64> = [
        (
            r#"scoregate_requests_total{code="200",deployment="blue",pinned="false"}"#,
            40.0,
        ),
        (
            r#"scoregate_requests_total{code="200",deployment="blue",pinned="true"}"#,
            7.0,
        ),
        (
            r#"scoregate_requests_total{code="200",deployment="green",pinned="true"}"#,
            13.0,
        ),
        (
            r#"scoregate_requests_total{code="502",deployment="dead",pinned="true"}"#,
            3.0,
        ),
        (
            r#"scoregate_requests_total{code="400",deployment="none",pinned="true"}"#,
            2.0,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    let m = |s: &str| series(&text, s).values().next().copied();
    assert_eq!(
        m(r#"scoregate_upstream_errors_total{deployment="dead",kind="connect"}"#),
        Some(3.0)
    );
    assert_eq!(
        m(r#"scoregate_upstream_errors_total{deployment="blue",kind="connect"}"#),
        Some(0.0)
    );
    assert_eq!(
        m(r#"scoregate_request_duration_seconds_count{deployment="blue"}"#),
        Some(47.0)
    );
    assert_eq!(
        m(r#"scoregate_request_duration_seconds_bucket{deployment="blue",le="60"}"#),
        Some(47.0)
    );
    assert_eq!(
        m(r#"scoregate_traffic_weight{deployment="blue"}"#),
        Some(100.0)
    );
    assert_eq!(
        m(r#"scoregate_traffic_weight{deployment="green"}"#),
        Some(0.0)
    );
    assert_eq!(
        m(r#"scoregate_upstream_in_flight{deployment="green"}"#),
        Some(0.0)
    );
    assert_eq!(
        m(&format!(
            r#"scoregate_instance_healthy{{deployment="blue",instance="{}"}}"#,
            blue.addr
        )),
        Some(1.0)
    );
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(
        text.contains(r#"scoregate_request_duration_seconds_bucket{deployment="blue",le="0.001"}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pin_values_add_no_series() {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let c = client();
    let url = proxy.url("/score");
    get(&c, &url, &[("x-api-version", "warmup")]).await;
    let before = series(&proxy.metrics().await, "scoregate_");
    for i in 0..1000u32 {
        let pin = format!("p{:08x}", i.wrapping_mul(2654435761));
        assert_eq!(
            get(&c, &url, &[("x-api-version", &pin)]).await.status,
            StatusCode::BAD_REQUEST
        );
    }
    let after = series(&proxy.metrics().await, "scoregate_");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "client-chosen values added series"
    );
    assert_eq!(
        after[r#"scoregate_requests_total{code="400",deployment="none",pinned="true"}"#],
        1001.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_deployment_or_instance_removes_its_series() {
    let blue = Backend::start("blue").await;
    let blue2 = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr, blue2.addr], Some(50))
            .deployment("green", &[green.addr], Some(50))
            .yaml(),
    );
    let c = client();
    for _ in 0..20 {
        get(&c, &proxy.url("/score"), &[]).await;
    }
    let text = proxy.metrics().await;
    assert!(text.contains(r#"deployment="green""#));
    assert!(text.contains(&blue2.addr.to_string()));
    let path = proxy.config.clone().unwrap();
    std::fs::write(
        &path,
        EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.metric("scoregate_config_generation").await < 2.0 {
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = proxy.metrics().await;
    assert!(
        !text.contains(r#"deployment="green""#),
        "green series remain:\n{text}"
    );
    assert!(
        !text.contains(&blue2.addr.to_string()),
        "removed instance's series remain"
    );
    assert!(text.contains(r#"scoregate_traffic_weight{deployment="blue"} 100"#));
    // Blue's counters carry on across the reload.
    let blue_before = series(
        &text,
        r#"scoregate_requests_total{code="200",deployment="blue""#,
    );
    assert_eq!(blue_before.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_as_the_contract_says() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = EndpointFile::new()
        .extra("name: scoring-prod")
        .deployment("blue", &[blue.addr], Some(90))
        .deployment("green", &[green.addr], Some(10))
        .yaml();
    let proxy = Proc::proxy(&file);
    assert_eq!(admin_get(&proxy, "/healthz").await.status, StatusCode::OK);
    let ready = admin_get(&proxy, "/readyz").await;
    assert_eq!(
        (ready.status, &ready.body[..]),
        (StatusCode::OK, &b"ready\n"[..])
    );

    let cfg = admin_get(&proxy, "/config").await.json();
    let sha: String = Sha256::digest(file.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["sha256"], sha);
    assert_eq!(
        cfg["file"],
        proxy.config.as_ref().unwrap().display().to_string()
    );
    assert_eq!(cfg["traffic"], serde_json::json!({"blue": 90, "green": 10}));
    assert_eq!(cfg["mirror"], serde_json::json!({}));
    assert_eq!(
        cfg["deployments"]["green"]["instances"][0]["instance"],
        green.addr.to_string()
    );
    assert_eq!(cfg["deployments"]["green"]["instances"][0]["healthy"], true);
    assert_eq!(cfg["last_reload_error"], serde_json::Value::Null);
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with('Z'));

    // A bad write shows in /config, and clears on the next success.
    let path = proxy.config.clone().unwrap();
    std::fs::write(&path, "traffic: {blue: 101}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        let cfg = admin_get(&proxy, "/config").await.json();
        if let Some(e) = cfg["last_reload_error"].as_str() {
            break e.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the reload error never showed in /config"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.starts_with(&format!("{}:1:", path.display())), "{err}");
    std::fs::write(
        &path,
        file.replace("blue: 90", "blue: 80")
            .replace("green: 10", "green: 20"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cfg = admin_get(&proxy, "/config").await.json();
        if cfg["generation"] == 2 {
            assert_eq!(cfg["last_reload_error"], serde_json::Value::Null);
            assert_eq!(cfg["traffic"], serde_json::json!({"blue": 80, "green": 20}));
            break;
        }
        assert!(Instant::now() < deadline, "the valid write never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = admin_get(&proxy, "/status.json").await.json();
    assert_eq!(status["endpoint"], "scoring-prod");
    assert_eq!(status["deployments"][1]["weight"], 20);
    let page = admin_get(&proxy, "/").await;
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&page.body).contains("status.json"));
    // No request has failed: the list of the last failed requests is empty.
    let failures = admin_get(&proxy, "/failures").await;
    assert_eq!(failures.headers["content-type"], "application/json");
    assert_eq!(failures.json(), serde_json::json!({"failures": []}));
    assert_eq!(
        admin_get(&proxy, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

/// A proxy on blue/green/red backends (red answers 500) with traffic of known size.
struct Traffic {
    proxy: Proc,
    _backends: Vec<Backend>,
    sent: BTreeMap<&'static str, usize>,
}

async fn traffic() -> Traffic {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let red = Backend::answering("red", StatusCode::INTERNAL_SERVER_ERROR).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(90))
            .deployment("green", &[green.addr], Some(10))
            .deployment("red", &[red.addr], Some(0))
            // red is also judged by its answers (always 500: every one disagrees).
            .extra("mirror_traffic: {red: 10}\nmirror_compare: {}")
            .yaml(),
    );
    let mut t = Traffic {
        proxy,
        _backends: vec![blue, green, red],
        sent: BTreeMap::new(),
    };
    t.send(200).await;
    t
}

impl Traffic {
    /// Sends `n` unpinned requests and n/10 pinned to red; tallies by `x-deployment`.
    async fn send(&mut self, n: usize) {
        let c = client();
        let url = self.proxy.url("/score");
        for _ in 0..n {
            let a = get(&c, &url, &[]).await;
            let d = if a.deployment() == "blue" {
                "blue"
            } else {
                "green"
            };
            *self.sent.entry(d).or_default() += 1;
        }
        for _ in 0..n / 10 {
            get(&c, &url, &[("x-api-version", "red")]).await;
            *self.sent.entry("red").or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_wrong_with_a_scrape_under_traffic() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let t = traffic().await;
    let text = t.proxy.metrics().await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.trim().is_empty(),
        "promtool: {printed}"
    );
}

/// A Prometheus server on loopback scraping `admin` every second; stopped on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: PathBuf, admin: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        // honor_labels keeps scoregate's own `instance` label (the scoring instance) on
        // scoregate_instance_healthy instead of renaming it to exported_instance.
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: scoregate\n    honor_labels: true\n    static_configs:\n      - targets: ['{admin}']\n"
            ),
        )
        .unwrap();
        let addr = dead_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn query(&self, expr: &str) -> serde_json::Value {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            url_encode(expr)
        );
        let a = get(&client(), &url, &[]).await;
        let j = a.json();
        assert_eq!(j["status"], "success", "{expr}: {j}");
        j["data"]["result"].clone()
    }

    /// Waits until Prometheus answers and has scraped the target at least twice.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = client();
            let url = format!("http://{}/-/ready", self.addr);
            let ok = match tokio::time::timeout(
                Duration::from_secs(2),
                c.request(
                    http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                ),
            )
            .await
            {
                Ok(Ok(r)) => r.status() == StatusCode::OK,
                _ => false,
            };
            if ok
                && !self
                    .query("scoregate_config_generation")
                    .await
                    .as_array()
                    .unwrap()
                    .is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not start scraping"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_counts_and_every_dashboard_query_returns_data() {
    let Some(bin) = peer("prometheus") else {
        return;
    };
    let mut t = traffic().await;
    let prom = Prometheus::start(bin, t.proxy.admin.unwrap());
    prom.ready().await;
    // Traffic across several scrapes, so rates over [1m] have points.
    for _ in 0..3 {
        t.send(100).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let result = prom
        .query("sum by (deployment) (scoregate_requests_total)")
        .await;
    let got: BTreeMap<String, usize> = result
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["deployment"].as_str().unwrap().to_string(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, usize> = t.sent.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(
        got, want,
        "Prometheus' counts differ from the requests sent"
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("config/grafana/scoregate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = target["expr"].as_str() {
                exprs.push((
                    panel["title"].as_str().unwrap_or("").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    for (title, expr) in exprs {
        let result = prom.query(&expr).await;
        assert!(
            !result.as_array().unwrap().is_empty(),
            "panel {title:?}: {expr} returned no data"
        );
    }
    // The error ratio panel's expression sees red's 500s.
    let ratio = prom
        .query(r#"(sum by (deployment) (rate(scoregate_requests_total{code=~"5.."}[1m])) or sum by (deployment) (rate(scoregate_requests_total[1m])) * 0) / sum by (deployment) (rate(scoregate_requests_total[1m]))"#)
        .await;
    let red = ratio
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"]["deployment"] == "red")
        .expect("red in the error ratio");
    assert_eq!(red["value"][1], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_live_status_page() {
    let Some(chromium) = peer("chromium") else {
        return;
    };
    let mut t = traffic().await;
    let admin = t.proxy.admin.unwrap();
    // Keep traffic flowing while the browser loads and refreshes the page.
    let load = Load::start(t.proxy.url("/score"), 2);
    t.send(50).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{admin}/"))
        .output()
        .unwrap();
    load.stop().await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in ["blue", "green", "red"] {
        assert!(
            dom.contains(&format!("data-deployment=\"{d}\"")),
            "no card for {d}:\n{dom}"
        );
    }
    // The rendered request rate of blue is a number above zero.
    let card = &dom[dom.find("data-deployment=\"blue\"").unwrap()..];
    let rate_at = card.find("class=\"rate").expect("a rate element");
    let text: String = card[rate_at..]
        .split_once('>')
        .unwrap()
        .1
        .chars()
        .take_while(|c| *c != '<')
        .collect();
    let number: f64 = text
        .trim()
        .trim_end_matches("req/s")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("rate text {text:?}"));
    assert!(number > 0.0, "blue's rendered rate is {number}");
    assert!(dom.contains("id=\"generation\""));
    // The mirror's agreement: red answers 500 to everything, so none of its answers agree.
    assert!(
        dom.contains(
            "mirroring 10% of unpinned requests to red · answers agree 0.0% (last minute)"
        ),
        "no agreement line for the mirror:\n{dom}"
    );
}

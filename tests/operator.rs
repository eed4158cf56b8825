//! The operator's tools: `traffic`, `swap`, `rollout`, `load`, and the seeds' canary flow
//! replayed with them against real scoring processes under load.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const COMMENTED: &str = r#"# Endpoint for the fraud model — «détection» (multi-byte text before the weights).
name: fraud   # shown by check
traffic:
  # live weights
  blue: 100   # v1
  'green': 0  # v2, quoted on purpose
deployments:
  blue:
    instances: ["127.0.0.1:9001"]   # pod a
  green:
    instances: [127.0.0.1:9101]
# trailing comment without newline"#;

#[test]
fn traffic_rewrites_only_the_weights_and_keeps_everything_else() {
    let (_dir, path) = temp_file("endpoint.yaml", COMMENTED);
    let p = path.to_str().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out, err) = run_cli(&["traffic", p, "blue=90", "green=10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("traffic set: blue=90 green=10"), "{out}");
    let after = std::fs::read_to_string(&path).unwrap();
    let before_lines: Vec<&str> = COMMENTED.lines().collect();
    let after_lines: Vec<&str> = after.lines().collect();
    assert_eq!(before_lines.len(), after_lines.len());
    let changed: Vec<(usize, &str)> = after_lines
        .iter()
        .enumerate()
        .filter(|(i, l)| before_lines[*i] != **l)
        .map(|(i, l)| (i + 1, *l))
        .collect();
    assert_eq!(
        changed,
        vec![
            (5, "  blue: 90   # v1"),
            (6, "  'green': 10  # v2, quoted on purpose")
        ]
    );
    assert!(
        !after.ends_with('\n'),
        "the missing final newline was added"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "permissions changed");
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1);

    // Show mode.
    let (code, out, _) = run_cli(&["traffic", p]);
    assert_eq!(code, 0);
    assert!(
        out.contains("blue           90%") && out.contains("green          10%"),
        "{out}"
    );

    // A deployment not yet in `traffic:` is added after the last entry, in the same style.
    let (_d2, path2) = temp_file(
        "e.yaml",
        "traffic:\n  blue: 100\ndeployments:\n  blue: {instances: [127.0.0.1:1]}\n  green: {instances: [127.0.0.1:2]}\n",
    );
    let (code, _, err) = run_cli(&["traffic", path2.to_str().unwrap(), "blue=70", "green=30"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&path2).unwrap(),
        "traffic:\n  blue: 70\n  green: 30\ndeployments:\n  blue: {instances: [127.0.0.1:1]}\n  green: {instances: [127.0.0.1:2]}\n"
    );
}

#[test]
fn traffic_refuses_a_bad_result_without_touching_the_file() {
    let (_dir, path) = temp_file("endpoint.yaml", COMMENTED);
    let p = path.to_str().unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    for (args, msg) in [
        (
            vec!["blue=90"],
            "traffic weights sum to 90 (blue=90 + green=0)",
        ),
        (
            vec!["purple=10"],
            "`purple` is not a deployment (deployments: blue, green)",
        ),
        (
            vec!["blue=101"],
            "weight `101` of `blue` is not an integer from 0 to 100",
        ),
        (vec!["blue:90"], "`blue:90` is not name=weight"),
        (
            vec!["green=100", "green=5", "blue=50"],
            "`green` is named twice",
        ),
    ] {
        let mut a = vec!["traffic", p];
        a.extend(args.iter());
        let (code, _, err) = run_cli(&a);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(err.starts_with(p), "the error names the file: {err}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn swap_trades_0_and_100_and_refuses_other_shapes() {
    let (_dir, path) = temp_file("endpoint.yaml", COMMENTED);
    let p = path.to_str().unwrap();
    let (code, out, err) = run_cli(&["swap", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("swapped: blue=0 green=100"), "{out}");
    let (code, _, _) = run_cli(&["swap", p]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);

    run_cli(&["traffic", p, "blue=50", "green=50"]);
    let before = std::fs::read_to_string(&path).unwrap();
    let (code, _, err) = run_cli(&["swap", p]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "swap needs one deployment at 100% and the other at 0%; the file has blue=50 green=50"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

/// Blue (v1) and green (v2) scoring processes, a proxy on an endpoint file, background load.
struct Canary {
    blue: Proc,
    green: Proc,
    proxy: Proc,
    load: Load,
}

fn canary_file(blue: SocketAddr, green: SocketAddr, bw: u8, gw: u8) -> String {
    format!(
        "# canary endpoint\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic:\n  blue: {bw}\n  green: {gw}\ndeployments:\n  blue:\n    instances: [{blue}]\n  green:\n    instances: [{green}]\n"
    )
}

impl Canary {
    async fn start(green_args: &[&str]) -> Canary {
        let blue = Proc::score_server("blue", &["--model", "v1"]);
        let mut args = vec!["--model", "v2"];
        args.extend_from_slice(green_args);
        let green = Proc::score_server("green", &args);
        let proxy = Proc::proxy(&canary_file(blue.addr, green.addr, 100, 0));
        let load = Load::start(proxy.url("/score"), 4);
        load.wait_for_only("blue", Instant::now(), Duration::from_secs(5))
            .await;
        Canary {
            blue,
            green,
            proxy,
            load,
        }
    }

    fn path(&self) -> String {
        self.proxy.config.as_ref().unwrap().display().to_string()
    }

    async fn rollout(&self, extra: &[&str]) -> (i32, String, String) {
        let mut args: Vec<String> = vec![
            "rollout".into(),
            self.path(),
            "--to".into(),
            "green".into(),
            "--admin".into(),
            format!("http://{}", self.proxy.admin.unwrap()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&a)
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_a_healthy_green_ends_at_100() {
    let c = Canary::start(&[]).await;
    let (code, out, err) = c
        .rollout(&[
            "--steps",
            "10,50,100",
            "--interval",
            "1s",
            "--min-requests",
            "5",
        ])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("step 1/3 passed"), "{out}");
    assert!(
        out.contains("rollout complete: blue=0% green=100%"),
        "{out}"
    );
    let text = std::fs::read_to_string(c.path()).unwrap();
    assert_eq!(text, canary_file(c.blue.addr, c.green.addr, 0, 100));
    c.load
        .wait_for_only("green", Instant::now(), Duration::from_secs(5))
        .await;
    c.load
        .stop_without_failures(0, "load through the rollout")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_a_failing_green_is_rolled_back_with_exit_2() {
    let c = Canary::start(&["--error-rate", "0.3"]).await;
    let original = std::fs::read_to_string(c.path()).unwrap();
    let (code, out, err) = c
        .rollout(&[
            "--steps",
            "20,50,100",
            "--interval",
            "2s",
            "--min-requests",
            "10",
        ])
        .await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("step 1/3 FAILED: 5xx ratio"), "{out}");
    assert!(out.contains("is above the limit of 1%"), "{out}");
    assert!(err.contains("rollout rolled back"), "{err}");
    // The step's failed requests on green are named by request id (from the proxy's
    // /failures), right after the verdict.
    let named = out
        .lines()
        .skip_while(|l| !l.starts_with("step 1/3 FAILED"))
        .nth(1)
        .and_then(|l| {
            l.strip_prefix("failed requests on green during the step (")
                .and_then(|l| l.split_once("find them in the access log by request_id): "))
        })
        .map(|(_, ids)| ids.split(", ").map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no failed request ids after the verdict:\n{out}"));
    assert!((1..=20).contains(&named.len()), "{out}");
    assert!(named.iter().all(|id| is_uuid_v4(id)), "{out}");
    assert_eq!(
        std::fs::read_to_string(c.path()).unwrap(),
        original,
        "weights not restored exactly"
    );
    // The proxy serves the original weights again (generation 3: start, step 1, restore).
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.proxy.metric("scoregate_config_generation").await < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the restored file was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    c.load.assert_only_after("blue", t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_traffic_is_not_a_pass() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &[]);
    let proxy = Proc::proxy(&canary_file(blue.addr, green.addr, 100, 0));
    let path = proxy.config.as_ref().unwrap().display().to_string();
    let admin = format!("http://{}", proxy.admin.unwrap());
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "rollout",
            &path,
            "--to",
            "green",
            "--steps",
            "50",
            "--interval",
            "500ms",
            "--admin",
            &admin,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        out.contains("not enough traffic to judge: 0 requests to green"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_throughput_latency_and_the_split() {
    let c = Canary::start(&[]).await;
    let url = c.proxy.url("/score");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "load",
            &url,
            "--duration",
            "2s",
            "--concurrency",
            "4",
            "--pin",
            "green",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("req/s, 0 failed"), "{out}");
    assert!(!out.contains("failed requests"), "{out}");
    assert!(out.contains("latency ms: p50"), "{out}");
    let green_line = out
        .lines()
        .find(|l| l.starts_with("green"))
        .expect("a green line");
    assert!(green_line.ends_with("100.0%"), "{out}");
    assert!(err.contains("requests"), "progress lines: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_names_its_failed_requests_by_request_id() {
    let blue = Proc::score_server("blue", &[]);
    let green = Proc::score_server("green", &["--error-rate", "0.5"]);
    let proxy = Proc::proxy(&canary_file(blue.addr, green.addr, 100, 0));
    let url = proxy.url("/score");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "load",
            &url,
            "--duration",
            "1s",
            "--concurrency",
            "2",
            "--pin",
            "green",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    let (failed, listed) = load_failures(&out);
    assert!(failed > 0, "{out}");
    for (id, rest) in &listed {
        assert!(is_uuid_v4(id), "{id}: {out}");
        // The status, then the deployment that answered.
        let (status, deployment) = rest.split_once("  ").unwrap_or((rest, ""));
        assert!(status.starts_with('5') && status.len() == 3, "{out}");
        assert_eq!(deployment, "green", "{out}");
    }
    let ids: std::collections::HashSet<_> = listed.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), listed.len(), "an id twice: {out}");
}

/// Seed 000/001, steps 1–6, with scoregate's tools, under load, without one failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_canary_flow_end_to_end_without_a_failed_request() {
    let blue = Proc::score_server("blue", &["--model", "v1"]);
    let green = Proc::score_server("green", &["--model", "v2"]);
    // Steps 1-2: blue (v1) takes all the traffic.
    let blue_only = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [{}]\n",
        blue.addr
    );
    let proxy = Proc::proxy(&blue_only);
    let path = proxy.config.clone().unwrap();
    let p = path.to_str().unwrap().to_string();
    let load = Load::start(proxy.url("/score"), 4);
    load.wait_for_only("blue", Instant::now(), Duration::from_secs(5))
        .await;
    let c = client();
    let generation = |n: f64| {
        let proxy = &proxy;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while proxy.metric("scoregate_config_generation").await < n {
                assert!(Instant::now() < deadline, "generation {n} never went live");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Step 3: green (v2) is added at 0%: no live traffic, but it answers when invoked directly.
    ops_write(
        &path,
        &canary_file(blue.addr, green.addr, 100, 0).replace("# canary endpoint\n", ""),
    );
    generation(2.0).await;
    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "green")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["model"], "v2");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.assert_only_after("blue", t).await;

    // Step 4: 90/10.
    let (code, _, err) = run_cli(&["traffic", &p, "blue=90", "green=10"]);
    assert_eq!(code, 0, "{err}");
    generation(3.0).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let window: Vec<_> = load
        .samples()
        .into_iter()
        .filter(|s| s.started > t)
        .collect();
    let green_share = window
        .iter()
        .filter(|s| matches!(&s.result, Ok((_, d)) if d == "green"))
        .count() as f64
        / window.len() as f64;
    assert!(
        (0.03..0.2).contains(&green_share),
        "green share at 90/10: {green_share}"
    );

    // Step 5: all traffic to green.
    let (code, _, err) = run_cli(&["traffic", &p, "blue=0", "green=100"]);
    assert_eq!(code, 0, "{err}");
    generation(4.0).await;
    load.assert_only_after("green", Instant::now()).await;

    // Step 6: blue is deleted from the endpoint.
    ops_write(
        &path,
        &format!(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic:\n  green: 100\ndeployments:\n  green:\n    instances: [{}]\n",
            green.addr
        ),
    );
    generation(5.0).await;
    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "blue")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "blue is gone");
    load.assert_only_after("green", Instant::now()).await;

    load.stop_without_failures(200, "load through the canary flow")
        .await;
}

/// Writes a file the way an operator's editor or GitOps tool would: atomically.
fn ops_write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

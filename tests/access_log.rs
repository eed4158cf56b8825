//! The access log, request ids and trace context through the real binary: every field of a
//! logged request checked against what the test sent and which backend answered, ids kept and
//! made, `traceparent` continued and started, secrets absent, sampling that keeps every error,
//! logrotate's move (with and without SIGUSR1) under load, a full disk and an unwritable path,
//! and a change of `access_log` applied on reload. Backends are in-process servers on
//! 127.0.0.1 port 0.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

/// The access log's path beside the proxy's endpoint file.
fn log_path(proxy: &Proc, name: &str) -> PathBuf {
    proxy
        .config
        .as_ref()
        .and_then(|c| c.parent())
        .expect("endpoint file dir")
        .join(name)
}

/// A proxy with one deployment `name` (all live traffic, on `backend`) and
/// `access_log: {path: access.log<settings>}`; its log's path.
fn logged_proxy(settings: &str, name: &str, backend: &Backend) -> (Proc, PathBuf) {
    let file = EndpointFile::new()
        .extra(&format!("access_log: {{path: access.log{settings}}}"))
        .deployment(name, &[backend.addr], Some(100))
        .yaml();
    let proxy = Proc::proxy(&file);
    let path = log_path(&proxy, "access.log");
    (proxy, path)
}

/// The lines of `path` (none when it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits up to 5 s for `path` to hold at least `n` lines, and parses them as JSON.
async fn json_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(5),
        async || lines(path).len() >= n,
    )
    .await;
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The line of request `id`.
fn line_of<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == id && l["type"] == "live")
        .unwrap_or_else(|| panic!("no line for {id} in {lines:#?}"))
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn post(client: &TestClient, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut b = Request::post(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        client,
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

#[tokio::test]
async fn every_field_of_a_logged_request_is_what_was_sent_and_who_answered() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dead = dead_addr();
    let file = EndpointFile::new()
        .extra("access_log: {path: access.log}")
        .extra("auth_mode: key\nkeys_file: keys.txt")
        .deployment("blue", &[blue.addr], Some(100))
        .deployment("green", &[green.addr], Some(0))
        .deployment("broken", &[dead], None)
        .yaml();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.txt"), "s3cret-key-123\n").unwrap();
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(&path, file).unwrap();
    let proxy = Proc::spawn(
        &["run", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let log = dir.path().join("access.log");
    let c = client();
    let auth = ("authorization", "Bearer s3cret-key-123");

    // 1. The client's id and trace are kept; the query is not logged; the key is not either.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = r#"{"inputs": [1, 2, 3]}"#;
    let a = post(
        &c,
        &proxy.url("/score?token=abc"),
        &[
            auth,
            ("x-request-id", "client-id-1"),
            ("traceparent", parent),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(header(&a, "x-request-id"), "client-id-1");
    let seen = blue.seen();
    let at_blue = &seen[0].headers;
    assert_eq!(at_blue["x-request-id"], "client-id-1");
    let tp = at_blue["traceparent"].to_str().unwrap().to_string();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(
        &tp[36..52],
        "00f067aa0ba902b7",
        "the proxy's span is the new parent"
    );
    assert!(tp.ends_with("-01"));

    // 2. No id: one is made (a UUIDv4), sent to the instance and back; a trace is started.
    let b = get(
        &c,
        &proxy.url("/score"),
        &[auth, ("x-api-version", "green")],
    )
    .await;
    let made = header(&b, "x-request-id").to_string();
    assert!(is_uuid_v4(&made), "{made:?}");
    let at_green = &green.seen()[0].headers;
    assert_eq!(at_green["x-request-id"], made.as_str());
    let started = at_green["traceparent"].to_str().unwrap().to_string();
    assert_eq!(started.len(), 55, "{started}");

    // 3. Errors scoregate made: an unknown pin (before routing), a dead instance.
    let e = get(
        &c,
        &proxy.url("/score"),
        &[auth, ("x-api-version", "nope"), ("x-request-id", "bad-pin")],
    )
    .await;
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(header(&e, "x-request-id"), "bad-pin");
    let d = get(
        &c,
        &proxy.url("/score"),
        &[
            auth,
            ("x-api-version", "broken"),
            ("x-request-id", "dead-1"),
        ],
    )
    .await;
    assert_eq!(d.status, StatusCode::BAD_GATEWAY);
    assert_eq!(header(&d, "x-request-id"), "dead-1");
    let u = get(&c, &proxy.url("/score"), &[("x-request-id", "no-key")]).await;
    assert_eq!(u.status, StatusCode::UNAUTHORIZED);

    let all = json_lines(&log, 5).await;
    let l = line_of(&all, "client-id-1");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/score", "the query is stripped");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["grpc_status"], Value::Null);
    assert_eq!(l["deployment"], "blue");
    assert_eq!(l["instance"], blue.addr.to_string());
    assert_eq!(l["route"], "weighted");
    assert_eq!(l["bytes_in"], body.len());
    assert_eq!(l["bytes_out"], a.body.len());
    assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(l["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(
        l["span_id"],
        &tp[36..52],
        "the span the instance saw as its parent"
    );
    assert_eq!(l["retried"], false);
    assert_eq!(l["mirrored"], serde_json::json!([]));
    assert_eq!(l["error"], Value::Null);
    assert_eq!(l["completed"], true);
    let client_addr: SocketAddr = l["client"].as_str().unwrap().parse().unwrap();
    assert!(client_addr.ip().is_loopback());
    let (to_headers, total) = (ms(&l["duration_to_headers_ms"]), ms(&l["duration_ms"]));
    assert!(
        to_headers > 0.0 && to_headers <= total && total < 5000.0,
        "{l}"
    );
    // The first request to blue opened a connection.
    let connect = ms(&l["upstream_connect_ms"]);
    assert!(connect > 0.0 && connect <= to_headers, "{l}");
    let when = humantime::parse_rfc3339(l["time"].as_str().unwrap()).expect("RFC 3339 time");
    let age = std::time::SystemTime::now().duration_since(when).unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
    assert!(l["time"].as_str().unwrap().ends_with('Z'));

    let g = line_of(&all, &made);
    assert_eq!(
        (g["deployment"].as_str(), g["route"].as_str()),
        (Some("green"), Some("pinned"))
    );
    assert_eq!(g["method"], "GET");
    assert_eq!(g["bytes_in"], 0);
    assert_eq!(
        g["parent_span_id"],
        Value::Null,
        "a trace started here has no parent"
    );
    assert_eq!(g["trace_id"], &started[3..35]);
    assert_eq!(g["span_id"], &started[36..52]);

    let p = line_of(&all, "bad-pin");
    assert_eq!(
        (p["status"].as_u64(), p["error"].as_str()),
        (Some(400), Some("unknown_pin"))
    );
    assert_eq!(p["deployment"], Value::Null);
    assert_eq!(p["instance"], Value::Null);
    let x = line_of(&all, "dead-1");
    assert_eq!(
        (x["status"].as_u64(), x["error"].as_str()),
        (Some(502), Some("connect"))
    );
    assert_eq!(x["deployment"], "broken");
    assert_eq!(x["instance"], dead.to_string());
    let n = line_of(&all, "no-key");
    assert_eq!(
        (n["status"].as_u64(), n["error"].as_str()),
        (Some(401), Some("unauthorized"))
    );

    // Never the key, the Authorization header or a body.
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        "s3cret-key-123",
        "Bearer",
        "authorization",
        "inputs",
        "token=abc",
    ] {
        assert!(
            !text.to_lowercase().contains(&secret.to_lowercase()),
            "{secret} in the log:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_query_is_logged_only_when_asked_and_sticky_keys_say_sticky() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = EndpointFile::new()
        .extra("access_log: {path: access.log, log_query: true}\nsticky_header: x-user")
        .deployment("blue", &[blue.addr], Some(50))
        .deployment("green", &[green.addr], Some(50))
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    let a = get(
        &c,
        &proxy.url("/score?user=7&x=1"),
        &[("x-user", "u-7"), ("x-request-id", "q-1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let all = json_lines(&log_path(&proxy, "access.log"), 1).await;
    let l = line_of(&all, "q-1");
    assert_eq!(l["path"], "/score?user=7&x=1");
    assert_eq!(l["route"], "sticky");
    assert_eq!(l["deployment"], a.deployment());
}

#[tokio::test]
async fn the_text_format_is_one_line_of_fields_per_request() {
    let blue = Backend::start("blue").await;
    let (proxy, path) = logged_proxy(", format: text", "blue", &blue);
    let c = client();
    for i in 0..3 {
        let id = format!("text-{i}");
        get(&c, &proxy.url("/score"), &[("x-request-id", id.as_str())]).await;
    }
    wait_until("3 text lines", Duration::from_secs(5), async || {
        lines(&path).len() >= 3
    })
    .await;
    let all = lines(&path);
    let counts: Vec<usize> = all.iter().map(|l| l.split(' ').count()).collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{all:#?}");
    let l = &all[1];
    assert!(
        serde_json::from_str::<Value>(l).is_err(),
        "text, not JSON: {l}"
    );
    for field in [
        "text-1",
        "\"GET /score HTTP/1.1\"",
        " 200 ",
        " blue ",
        &blue.addr.to_string(),
        " weighted ",
    ] {
        assert!(l.contains(field), "{field:?} not in {l}");
    }
}

#[tokio::test]
async fn sampling_logs_a_share_of_successes_and_every_error() {
    let ok = Backend::start("fine").await;
    let failing = Backend::answering("failing", StatusCode::INTERNAL_SERVER_ERROR).await;
    let file = EndpointFile::new()
        .extra("access_log: {path: access.log, sample: 0.25}")
        .deployment("fine", &[ok.addr], Some(100))
        .deployment("failing", &[failing.addr], None)
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    let n = 800;
    for i in 0..n {
        let id = format!("ok-{i}");
        let a = get(&c, &proxy.url("/score"), &[("x-request-id", id.as_str())]).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    for i in 0..40 {
        let id = format!("err-{i}");
        let a = get(
            &c,
            &proxy.url("/score"),
            &[("x-request-id", id.as_str()), ("x-api-version", "failing")],
        )
        .await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let path = log_path(&proxy, "access.log");
    let all = json_lines(&path, 40).await;
    // Give the writer time to drain what it has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = if lines(&path).len() > all.len() {
        json_lines(&path, 40).await
    } else {
        all
    };
    let errors = all.iter().filter(|l| l["status"] == 500).count();
    assert_eq!(errors, 40, "every error is logged");
    let logged_ok = all.iter().filter(|l| l["status"] == 200).count() as f64;
    // Binomial(800, 0.25): mean 200, sd 12.2; 4.5 sd either side (p < 1e-5 of a false alarm).
    assert!(
        (logged_ok - 200.0).abs() <= 55.0,
        "{logged_ok} of {n} successes logged at 25 %"
    );
}

#[tokio::test]
async fn a_moved_log_file_is_followed_with_or_without_sigusr1_and_no_line_is_lost() {
    let blue = Backend::start("blue").await;
    let (proxy, path) = logged_proxy("", "blue", &blue);
    let load = Load::start(proxy.url("/score"), 4);
    wait_until("lines", Duration::from_secs(5), async || {
        lines(&path).len() > 200
    })
    .await;
    // logrotate: move, then SIGUSR1 (nginx's postrotate).
    let first = path.with_extension("log.1");
    std::fs::rename(&path, &first).unwrap();
    proxy.signal("USR1");
    wait_until(
        "a new file after SIGUSR1",
        Duration::from_secs(5),
        async || lines(&path).len() > 200,
    )
    .await;
    // Moved again with no signal: the writer notices within a second or so.
    let second = path.with_extension("log.2");
    std::fs::rename(&path, &second).unwrap();
    wait_until(
        "a new file without a signal",
        Duration::from_secs(5),
        async || lines(&path).len() > 200,
    )
    .await;
    let samples = load.stop().await;
    assert!(
        samples.iter().all(|s| s.succeeded()),
        "every request answered"
    );
    let expected = samples.len();
    let count = || lines(&first).len() + lines(&second).len() + lines(&path).len();
    wait_until("every line written", Duration::from_secs(5), async || {
        count() >= expected
    })
    .await;
    let mut ids: Vec<String> = [&first, &second, &path]
        .iter()
        .flat_map(|p| lines(p))
        .map(|l| {
            serde_json::from_str::<Value>(&l).expect("a JSON line")["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (total, ids.len()),
        (expected, expected),
        "each request logged exactly once across the files"
    );
    assert_eq!(
        proxy
            .metric("scoregate_access_log_dropped_total{reason=\"queue_full\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_full_disk_or_an_unwritable_path_drops_lines_counted_and_serving_goes_on() {
    let blue = Backend::start("blue").await;
    for target in ["/dev/full", "/proc/scoregate-no-such-dir/access.log"] {
        let file = EndpointFile::new()
            .extra(&format!("access_log: {{path: {target}}}"))
            .deployment("blue", &[blue.addr], Some(100))
            .yaml();
        let proxy = Proc::proxy(&file);
        let c = client();
        for _ in 0..200 {
            let a = get(&c, &proxy.url("/score"), &[]).await;
            assert_eq!(a.status, StatusCode::OK, "{target}");
        }
        let series = "scoregate_access_log_dropped_total{reason=\"write_error\"}";
        wait_until(
            &format!("200 drops counted for {target}"),
            Duration::from_secs(5),
            async || proxy.metric(series).await >= 200.0,
        )
        .await;
        assert_eq!(proxy.metric("scoregate_access_log_lines_total").await, 0.0);
    }
}

#[tokio::test]
async fn a_change_to_access_log_applies_on_reload() {
    let blue = Backend::start("blue").await;
    let base = EndpointFile::new().deployment("blue", &[blue.addr], Some(100));
    let proxy = Proc::proxy(&base.yaml());
    let config = proxy.config.clone().unwrap();
    let path = log_path(&proxy, "access.log");
    let c = client();
    get(&c, &proxy.url("/score"), &[("x-request-id", "before")]).await;
    assert!(!path.exists(), "no log until the file asks for one");

    std::fs::write(
        &config,
        base.clone().extra("access_log: {path: access.log}").yaml(),
    )
    .unwrap();
    wait_until("the reload", Duration::from_secs(10), async || {
        get(&c, &proxy.url("/score"), &[("x-request-id", "probe")]).await;
        path.exists()
    })
    .await;
    get(&c, &proxy.url("/score"), &[("x-request-id", "json-now")]).await;
    json_lines(&path, 1).await;
    wait_until("json line", Duration::from_secs(5), async || {
        lines(&path).iter().any(|l| l.contains("\"json-now\""))
    })
    .await;

    // The same path in text: the writer (and its file) are kept, the lines change.
    std::fs::write(
        &config,
        base.clone()
            .extra("access_log: {path: access.log, format: text}")
            .yaml(),
    )
    .unwrap();
    wait_until("text lines", Duration::from_secs(10), async || {
        get(&c, &proxy.url("/score"), &[("x-request-id", "text-now")]).await;
        lines(&path)
            .iter()
            .any(|l| l.contains("text-now") && !l.starts_with('{'))
    })
    .await;
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"before\"")
    );
}

#[tokio::test]
async fn a_mirrored_request_names_its_copy_and_the_copy_logs_its_result() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = EndpointFile::new()
        .extra("access_log: {path: access.log}\nmirror_traffic: {green: 100}\nmirror_compare: {}")
        .deployment("blue", &[blue.addr], Some(100))
        .deployment("green", &[green.addr], Some(0))
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    let a = post(&c, &proxy.url("/score"), &[("x-request-id", "m-1")], "{}").await;
    assert_eq!(a.status, StatusCode::OK);
    let path = log_path(&proxy, "access.log");
    let all = json_lines(&path, 2).await;
    let live = line_of(&all, "m-1");
    assert_eq!(live["mirrored"], serde_json::json!(["green"]));
    let copy = all
        .iter()
        .find(|l| l["request_id"] == "m-1" && l["type"] == "mirror")
        .unwrap_or_else(|| panic!("no mirror line: {all:#?}"));
    assert_eq!(copy["deployment"], "green");
    assert_eq!(copy["instance"], green.addr.to_string());
    assert_eq!(copy["status"], 200);
    // The backends answer `{"deployment": NAME}`, which the default `ignore` skips.
    assert_eq!(copy["shadow_result"], "match");
    assert_eq!(copy["trace_id"], live["trace_id"]);
    assert_eq!(green.seen()[0].headers["x-request-id"], "m-1");
}

#[tokio::test]
async fn a_rest_request_over_http2_says_http2() {
    let blue = Backend::start("blue").await;
    let (proxy, path) = logged_proxy("", "blue", &blue);
    // HTTP/2 with prior knowledge (h2c), as tests/grpc.rs speaks it.
    let mut sender = h2c_sender(proxy.addr).await;
    let body = r#"{"inputs": [1]}"#;
    let req = Request::post("http://scoring.example:8080/score?x=1")
        .header("x-request-id", "h2-1")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answer");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "h2-1");
    let answer = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let all = json_lines(&path, 1).await;
    let l = line_of(&all, "h2-1");
    assert_eq!(l["protocol"], "HTTP/2");
    assert_eq!(l["method"], "POST");
    assert_eq!(
        l["path"], "/score",
        "the path, without the authority or the query"
    );
    assert_eq!(l["status"], 200);
    assert_eq!(l["grpc_status"], Value::Null);
    assert_eq!(l["deployment"], "blue");
    assert_eq!(l["instance"], blue.addr.to_string());
    assert_eq!(l["bytes_in"], body.len());
    assert_eq!(l["bytes_out"], answer.len());
    assert_eq!(l["completed"], true);
}

/// A backend that streams its answer as 10 chunks of `chunk;` (60 bytes) over `over`.
async fn streaming(name: &str, over: Duration) -> Backend {
    Backend::with(
        name,
        Behavior {
            stream_for: over,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_streamed_answer_read_to_its_end_is_logged_once_whole() {
    let slow = streaming("slow", Duration::from_millis(300)).await;
    let (proxy, path) = logged_proxy("", "slow", &slow);
    let a = get(
        &client(),
        &proxy.url("/score"),
        &[("x-request-id", "whole-1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), 60, "{:?}", a.body);
    let all = json_lines(&path, 1).await;
    let l = line_of(&all, "whole-1");
    assert_eq!(l["completed"], true, "{l}");
    assert_eq!(l["bytes_out"], 60, "{l}");
    assert_eq!(l["status"], 200);
    // The duration runs to the last byte, well after the head.
    let (to_headers, total) = (ms(&l["duration_to_headers_ms"]), ms(&l["duration_ms"]));
    assert!(total >= 250.0 && to_headers < total, "{l}");
    assert_eq!(
        all.iter().filter(|l| l["request_id"] == "whole-1").count(),
        1
    );
}

#[tokio::test]
async fn a_client_that_goes_away_mid_answer_is_logged_incomplete_with_what_it_was_sent() {
    // One 6-byte chunk every 2 s: the answer would take 20 s.
    let slow = streaming("slow", Duration::from_secs(20)).await;
    let (proxy, path) = logged_proxy("", "slow", &slow);
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        tcp.write_all(b"GET /score HTTP/1.1\r\nhost: x\r\nx-request-id: gone-1\r\n\r\n")
            .await
            .expect("send");
        // Read the head and the first chunk, then hang up.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(6).any(|w| w == b"chunk;") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("the first chunk in time")
                .expect("read");
            assert!(n > 0, "closed before the first chunk: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    }
    // Noticed at the next chunks, long before the instance would have ended its answer.
    let all = json_lines(&path, 1).await;
    let l = line_of(&all, "gone-1");
    assert_eq!(l["completed"], false, "{l}");
    let sent = l["bytes_out"].as_u64().expect("bytes_out");
    assert!((6..60).contains(&sent), "{sent} of 60 bytes: {l}");
    assert_eq!(l["status"], 200);
    assert_eq!(l["deployment"], "slow");
    assert!(ms(&l["duration_ms"]) < 15_000.0, "{l}");
}

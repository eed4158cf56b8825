//! Holding up when instances die, stall or close connections, and when clients misbehave:
//! real scoring processes killed and restarted, real sockets, the real binary.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

async fn instance_healthy(proxy: &Proc, deployment: &str, instance: &str) -> f64 {
    proxy
        .metric(&format!(
            "scoregate_instance_healthy{{deployment=\"{deployment}\",instance=\"{instance}\"}}"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_instances_costs_a_handful_then_it_is_ejected_and_comes_back() {
    let a = Proc::score_server("blue", &[]);
    let b = Proc::score_server("blue", &[]);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[a.addr, b.addr], Some(100))
            .yaml(),
    );
    let load = Load::start(proxy.url("/score"), 4);
    load.wait_for_only("blue", Instant::now(), Duration::from_secs(5))
        .await;

    let killed_at = Instant::now();
    drop(b);
    wait_until(
        "the killed instance to be ejected",
        Duration::from_secs(5),
        || async { instance_healthy(&proxy, "blue", &b_addr).await == 0.0 },
    )
    .await;
    let eject_time = killed_at.elapsed();
    // Once ejected, nothing fails.
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = load.failures();
    let late: Vec<_> = failures.iter().filter(|s| s.started > settled).collect();
    assert!(late.is_empty(), "failures after the ejection: {late:?}");
    assert!(
        failures.len() <= 8,
        "{} failures when an instance died",
        failures.len()
    );
    eprintln!(
        "instance killed: {} failed requests of {}, ejected after {:?}",
        failures.len(),
        load.samples().len(),
        eject_time
    );
    let cfg = get(
        &client(),
        &format!("http://{}/config", proxy.admin.unwrap()),
        &[],
    )
    .await
    .json();
    let inst = &cfg["deployments"]["blue"]["instances"];
    assert_eq!(inst[1]["instance"], b_addr.as_str());
    assert_eq!(inst[1]["healthy"], false);
    assert_eq!(inst[0]["healthy"], true);

    // Restarted on the same address: the background probe puts it back after the 10 s ejection.
    let _b2 = Proc::score_server_on("blue", &b_addr, &[]);
    wait_until(
        "the restarted instance to take traffic again",
        Duration::from_secs(14),
        || async { instance_healthy(&proxy, "blue", &b_addr).await == 1.0 },
    )
    .await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = load.stop().await;
    assert!(samples.iter().filter(|s| s.started > back).count() > 10);
    proxy.wait_log("back in rotation");
    let _ = a_addr;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_instance() {
    let live = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[dead_addr(), live.addr], Some(100))
            .yaml(),
    );
    let c = client();
    for _ in 0..40 {
        let a = get(&c, &proxy.url("/score"), &[]).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "a refused connection reached the client"
        );
    }
    assert_eq!(live.count(), 40);
    proxy.wait_log("cannot connect to instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_dead_answers_are_quick_502_then_503() {
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[dead_addr(), dead_addr()], Some(100))
            .yaml(),
    );
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let a = get(&c, &proxy.url("/score"), &[]).await;
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "took {:?}",
            t.elapsed()
        );
        statuses.push(a.status.as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), 503, "{statuses:?}");
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert!(a.json()["error"].as_str().unwrap().contains("ejected"));
    let ready = get(&c, &format!("http://{}/readyz", proxy.admin.unwrap()), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&ready.body).contains("blue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timing_out_deployment_does_not_slow_the_other() {
    let slow = Backend::delayed("blue", Duration::from_secs(3)).await;
    let fast = Backend::start("green").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[slow.addr], Some(100))
            .request("request_timeout_ms: 1500")
            .deployment("green", &[fast.addr], Some(0))
            .yaml(),
    );
    let c = client();
    let mut slow_tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), proxy.url("/score"));
        slow_tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await.status }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let t = Instant::now();
        let a = get(&c, &proxy.url("/score"), &[("x-api-version", "green")]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "green took {:?}",
            t.elapsed()
        );
    }
    for t in slow_tasks {
        assert_eq!(t.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_until_streamed_bodies_end_also_across_a_reload() {
    let streaming = Backend::with(
        "blue",
        Behavior {
            stream_for: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    let file = |w: u8| {
        EndpointFile::new()
            .deployment("blue", &[streaming.addr], Some(w))
            .request("max_concurrent_requests_per_instance: 2, max_queue_wait_ms: 10000")
            .deployment("green", &[streaming.addr], Some(100 - w))
            .yaml()
    };
    let proxy = Proc::proxy(&file(100));
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, url) = (c.clone(), proxy.url("/score"));
        tasks.push(tokio::spawn(async move {
            let a = get(&c, &url, &[("x-api-version", "blue")]).await;
            (a.status, a.body.len())
        }));
    }
    // Reload while the first two stream and the other two wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(proxy.config.as_ref().unwrap(), file(90)).unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, 60));
    }
    assert_eq!(
        streaming.max_concurrent(),
        2,
        "the instance saw more than 2 at once"
    );
    assert_eq!(streaming.count(), 4);
    assert_eq!(proxy.metric("scoregate_config_generation").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_closing_idle_connections_after_1s_causes_no_errors() {
    let closing = Backend::with(
        "blue",
        Behavior {
            idle_close: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[closing.addr], Some(100))
            .yaml(),
    );
    let c = client();
    // Gaps around the instance's 1 s idle timeout, on both sides of it.
    for i in 0..12u64 {
        let a = get(&c, &proxy.url("/score"), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "request {i} failed: {:?}", a.body);
        let a = send(
            &c,
            Request::post(proxy.url("/score"))
                .body(Full::new(Bytes::from_static(b"{\"data\": [[1, 2]]}")))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "POST {i} failed: {:?}", a.body);
        tokio::time::sleep(Duration::from_millis(940 + (i % 4) * 20)).await;
    }
    assert_eq!(closing.complete(), 24);
    assert!(
        closing
            .seen()
            .iter()
            .all(|s| s.method != http::Method::POST || &s.body[..] == b"{\"data\": [[1, 2]]}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_answer_is_cut_off_at_the_timeout() {
    let stalling = Backend::with(
        "blue",
        Behavior {
            stall: true,
            ..Default::default()
        },
    )
    .await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[stalling.addr], Some(100))
            .request("request_timeout_ms: 500")
            .yaml(),
    );
    let t = Instant::now();
    let out = raw(
        proxy.addr,
        b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    let took = t.elapsed();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("chunk;"), "{out}");
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a cut-off answer must not look complete: {out}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the stalled answer hung for {took:?}"
    );
    proxy.wait_log("answer stalled; cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let slow = Backend::delayed("blue", Duration::from_secs(2)).await;
    let mut proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[slow.addr], Some(100))
            .yaml(),
    );
    let url = proxy.url("/score");
    let addr = proxy.addr;
    let inflight = tokio::spawn(async move {
        let t = Instant::now();
        let a = get(&client(), &url, &[]).await;
        (a.status, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused at once.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    let (status, took) = inflight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(took >= Duration::from_secs(2));
    tokio::task::spawn_blocking(move || {
        let code = proxy.wait_exit(Duration::from_secs(5));
        assert_eq!(code, Some(0), "{}", proxy.log());
        proxy.wait_log("all requests finished");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hardening() {
    let echo = Backend::echo("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .extra("client_header_timeout_ms: 500")
            .deployment("blue", &[echo.addr], Some(100))
            .yaml(),
    );
    // A stalled partial request is closed by the server.
    let t = Instant::now();
    let out = raw(
        proxy.addr,
        b"GET /score HTTP/1.1\r\nHost: x\r\nX-Slow: 1",
        Duration::from_secs(5),
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "slowloris kept the connection {:?}",
        t.elapsed()
    );
    assert!(!out.contains("200 OK"), "{out}");

    // Ambiguous framing. Content-Length with Transfer-Encoding: the body is framed by
    // Transfer-Encoding alone, the instance sees only that framing, and the client connection
    // is closed after the answer (RFC 9112 section 6.1), so nothing can be smuggled behind it.
    let out = raw(
        proxy.addr,
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(500),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "a second request was read: {out}"
    );
    let seen = echo.seen();
    assert_eq!(&seen[0].body[..], b"hello");
    assert!(!seen[0].headers.contains_key("content-length"));
    assert_eq!(seen[0].headers["transfer-encoding"], "chunked");
    assert!(!seen.iter().any(|s| s.uri.contains("smuggled")));
    // Two different lengths: 400.
    let out = raw(
        proxy.addr,
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        Duration::from_millis(500),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // Too many headers, too large a head.
    let mut many = String::from("GET /score HTTP/1.1\r\nHost: x\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw(proxy.addr, many.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let big = format!(
        "GET /score HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let out = raw(proxy.addr, big.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(echo.count(), 1);

    // Expect: 100-continue: the client hears 100 before it sends the body.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"hello").unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !String::from_utf8_lossy(&out).contains("hello") && Instant::now() < deadline {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("200 OK") && out.contains("hello"), "{out}");
    assert!(!echo.seen()[1].headers.contains_key("expect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_gets_less_than_a_fast_one() {
    let fast = Backend::start("blue").await;
    let slow = Backend::delayed("blue", Duration::from_millis(40)).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[fast.addr, slow.addr], Some(100))
            .yaml(),
    );
    let load = Load::start(proxy.url("/score"), 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    let (f, s) = (fast.count(), slow.count());
    assert!(s * 4 < f, "slow instance got {s}, fast {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_abort_or_stall_their_upload_do_not_eject_the_instance() {
    let blue = Backend::echo("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .request("request_timeout_ms: 300")
            .yaml(),
    );
    let head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789";
    for _ in 0..6 {
        // Aborted: the client goes away in the middle of its body.
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
        s.write_all(head).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(s);
        // Stalled: the client sends part of its body and waits past the timeout.
        let out = raw(proxy.addr, head, Duration::from_millis(600));
        assert!(!out.contains("200 OK"), "{out}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        instance_healthy(&proxy, "blue", &blue.addr.to_string()).await,
        1.0
    );
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
}

//! The data plane end to end: real backends, the real binary, real sockets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

/// Chi-square critical value for 1 degree of freedom at p = 0.0001: a correct split fails this
/// test once in 10,000 runs; a split off by 5 points over 4,000 requests scores above 100.
const CHI2_1DF_P0001: f64 = 15.137;

/// Sends `n` unpinned GETs (8 at a time) and counts answers per `x-deployment`.
async fn split(proxy: &Proc, n: usize, names: &[&str]) -> Vec<usize> {
    let client = client();
    let url = proxy.url("/score");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let mut counts = vec![0usize; names.len()];
            for _ in 0..n / 8 {
                let a = get(&client, &url, &[]).await;
                assert_eq!(a.status, StatusCode::OK);
                let i = names
                    .iter()
                    .position(|x| x == a.deployment())
                    .expect("x-deployment");
                // The answer came from the deployment the header names.
                assert_eq!(a.json()["deployment"], names[i].as_str());
                counts[i] += 1;
            }
            counts
        }));
    }
    let mut total = vec![0usize; names.len()];
    for t in tasks {
        for (i, c) in t.await.unwrap().into_iter().enumerate() {
            total[i] += c;
        }
    }
    total
}

async fn check_split(blue_w: u8, green_w: u8) {
    let (blue, green, proxy) = blue_green(blue_w, green_w).await;
    let counts = split(&proxy, 4000, &["blue", "green"]).await;
    let chi2 = chi_square(&counts, &[blue_w as f64, green_w as f64]);
    assert!(
        chi2 < CHI2_1DF_P0001,
        "split {counts:?} is not {blue_w}/{green_w}: chi-square {chi2:.1}"
    );
    assert_eq!((blue.count(), green.count()), (counts[0], counts[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_passes_chi_square() {
    check_split(90, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_70_30_passes_chi_square() {
    check_split(70, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_weight_gets_no_unpinned_request_and_pinning_reaches_it() {
    let (_blue, green, proxy) = blue_green(100, 0).await;
    let counts = split(&proxy, 2000, &["blue", "green"]).await;
    assert_eq!(counts, vec![2000, 0]);
    assert_eq!(green.count(), 0);

    let c = client();
    for _ in 0..50 {
        let a = get(&c, &proxy.url("/score"), &[("x-api-version", "green")]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.deployment(), "green");
        assert_eq!(a.headers["x-backend"], "green");
    }
    assert_eq!(green.count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_missing_from_traffic_is_reachable_only_by_pin() {
    let blue = Backend::start("blue").await;
    let shadow = Backend::start("shadow").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .deployment("shadow", &[shadow.addr], None)
            .yaml(),
    );
    let counts = split(&proxy, 400, &["blue", "shadow"]).await;
    assert_eq!(counts, vec![400, 0]);
    let a = get(
        &client(),
        &proxy.url("/score"),
        &[("x-api-version", "shadow")],
    )
    .await;
    assert_eq!((a.status, a.deployment()), (StatusCode::OK, "shadow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_pin_header_is_honoured() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .extra("pin_header: x-model")
            .deployment("blue", &[blue.addr], Some(100))
            .deployment("green", &[green.addr], Some(0))
            .yaml(),
    );
    let c = client();
    let a = get(&c, &proxy.url("/score"), &[("x-model", "green")]).await;
    assert_eq!(a.deployment(), "green");
    // The default header means nothing now.
    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "green")]).await;
    assert_eq!(a.deployment(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pin_gets_400_listing_the_deployments() {
    let (blue, green, proxy) = blue_green(50, 50).await;
    let a = get(
        &client(),
        &proxy.url("/score"),
        &[("x-api-version", "purple")],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["content-type"], "application/json");
    let j = a.json();
    assert_eq!(j["deployment"], serde_json::Value::Null);
    let msg = j["error"].as_str().unwrap();
    assert!(msg.contains("\"purple\""), "{msg}");
    assert!(msg.contains("known deployments: blue, green"), "{msg}");
    assert_eq!(blue.count() + green.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_traffic_gets_503_but_pins_are_served() {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(0))
            .yaml(),
    );
    let c = client();
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["deployment"], serde_json::Value::Null);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("no deployment takes traffic")
    );
    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "blue")]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_post_arrives_byte_identical_both_ways() {
    let echo = Backend::echo("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[echo.addr], Some(100))
            .yaml(),
    );
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let req = Request::post(proxy.url("/score"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), body.len());
    assert!(a.body == body, "response body differs");
    let seen = echo.seen();
    assert!(seen[0].body == body, "body at the instance differs");
    assert_eq!(seen[0].headers["content-length"], "1048576");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_streams_through_chunked() {
    let echo = Backend::echo("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[echo.addr], Some(100))
            .yaml(),
    );
    let mut req = b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for i in 0..64u8 {
        req.extend_from_slice(b"3e8\r\n");
        req.extend(std::iter::repeat_n(i, 1000));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(proxy.addr, &req, Duration::from_millis(1000));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = echo.seen();
    assert_eq!(seen[0].body.len(), 64_000);
    assert!(
        seen[0]
            .body
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );
    assert_eq!(seen[0].headers["transfer-encoding"], "chunked");
    assert!(!seen[0].headers.contains_key("content-length"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_query_and_headers_arrive_hop_by_hop_do_not() {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let req = "PUT /score/v1?model=a&x=1%202 HTTP/1.1\r\nHost: scoring.example\r\nX-Custom: hello\r\n\
         X-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, x-drop-me\r\nX-Drop-Me: secret\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\n\
         Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello";
    let out = raw(proxy.addr, req.as_bytes(), Duration::from_millis(500));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = blue.seen();
    let s = &seen[0];
    assert_eq!(s.method, http::Method::PUT);
    assert_eq!(s.uri, "/score/v1?model=a&x=1%202");
    assert_eq!(s.headers["host"], "scoring.example");
    assert_eq!(s.headers["x-custom"], "hello");
    assert_eq!(s.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(&s.body[..], b"hello");
    for h in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!s.headers.contains_key(h), "{h} was forwarded");
    }
    // `connection` towards the instance is the proxy's own (keep-alive), never the client's list.
    assert!(
        s.headers
            .get("connection")
            .is_none_or(|v| !v.to_str().unwrap().contains("x-drop-me"))
    );

    // Response direction: the instance's keep-alive header is removed, its own headers kept.
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert!(!a.headers.contains_key("keep-alive"));
    assert_eq!(a.headers["x-upstream-custom"], "kept");
    assert_eq!(a.deployment(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_added_when_absent() {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(blue.seen()[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(blue.seen()[0].method, http::Method::GET);
    assert!(
        !blue.seen()[0].headers.contains_key("content-length"),
        "a GET gained a body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_500_passes_through_unchanged() {
    let bad = Backend::answering("blue", StatusCode::INTERNAL_SERVER_ERROR).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[bad.addr], Some(100))
            .yaml(),
    );
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(&a.body[..], br#"{"deployment":"blue"}"#);
    assert_eq!(a.headers["x-upstream-custom"], "kept");
    assert_eq!(a.deployment(), "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_gives_502() {
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[dead_addr()], Some(100))
            .yaml(),
    );
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["deployment"], "blue");
    assert_eq!(a.deployment(), "blue");
    proxy.wait_log("cannot connect to instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_gives_504_after_the_timeout() {
    let slow = Backend::delayed("blue", Duration::from_secs(3)).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[slow.addr], Some(100))
            .request("request_timeout_ms: 300")
            .yaml(),
    );
    let start = Instant::now();
    let a = get(&client(), &proxy.url("/score"), &[]).await;
    let took = start.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.json()["deployment"], "blue");
    assert!(a.json()["error"].as_str().unwrap().contains("300 ms"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_by_content_length_default_16_mib() {
    let echo = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[echo.addr], Some(100))
            .yaml(),
    );
    let c = client();
    let limit = 16 * 1024 * 1024;
    let a = send(
        &c,
        Request::post(proxy.url("/score"))
            .body(Full::new(Bytes::from(vec![b'x'; limit])))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "exactly 16 MiB is allowed");
    let a = send(
        &c,
        Request::post(proxy.url("/score"))
            .body(Full::new(Bytes::from(vec![b'x'; limit + 1])))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json()["deployment"], serde_json::Value::Null);
    assert_eq!(
        echo.count(),
        1,
        "the too-large body never reached the instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_for_chunked_bodies_while_streaming() {
    let echo = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .extra("max_request_body_bytes: 10000")
            .deployment("blue", &[echo.addr], Some(100))
            .yaml(),
    );
    let chunked = |n: usize| {
        let mut req =
            b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            req.extend_from_slice(format!("{k:x}\r\n").as_bytes());
            req.extend(std::iter::repeat_n(b'y', k));
            req.extend_from_slice(b"\r\n");
            left -= k;
        }
        req.extend_from_slice(b"0\r\n\r\n");
        req
    };
    let ok = raw(proxy.addr, &chunked(10_000), Duration::from_millis(1500));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let too_big = raw(proxy.addr, &chunked(20_000), Duration::from_millis(1500));
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    assert!(too_big.contains("\"deployment\":\"blue\""), "{too_big}");
    assert!(
        too_big.contains("larger than the limit of 10000 bytes"),
        "{too_big}"
    );
    assert_eq!(
        echo.complete(),
        1,
        "the too-large body was cut off, never delivered whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_one_queues_then_429() {
    let slow = Backend::delayed("blue", Duration::from_millis(400)).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[slow.addr], Some(100))
            .request("max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 150")
            .yaml(),
    );
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), proxy.url("/score"));
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let a = get(&c, &url, &[]).await;
            (a, start.elapsed())
        }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        let (a, took) = t.await.unwrap();
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                overloaded += 1;
                assert_eq!(a.json()["deployment"], "blue");
                assert!(
                    took >= Duration::from_millis(150),
                    "429 before the queue wait: {took:?}"
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        slow.max_concurrent(),
        1,
        "the instance saw two requests at once"
    );
    assert!(
        ok >= 1 && overloaded >= 4,
        "ok={ok} overloaded={overloaded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queue_serves_everyone_within_the_wait() {
    let a1 = Backend::delayed("blue", Duration::from_millis(50)).await;
    let a2 = Backend::delayed("blue", Duration::from_millis(50)).await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[a1.addr, a2.addr], Some(100))
            .request("max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 5000")
            .yaml(),
    );
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, url) = (c.clone(), proxy.url("/score"));
        tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(a1.max_concurrent(), 1);
    assert_eq!(a2.max_concurrent(), 1);
    assert_eq!(a1.count() + a2.count(), 10);
    assert!(
        a1.count() >= 2 && a2.count() >= 2,
        "{} / {}",
        a1.count(),
        a2.count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_load() {
    let a1 = Backend::start("blue").await;
    let a2 = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[a1.addr, a2.addr], Some(100))
            .yaml(),
    );
    let counts = split(&proxy, 800, &["blue"]).await;
    assert_eq!(counts, vec![800]);
    let (n1, n2) = (a1.count(), a2.count());
    assert_eq!(n1 + n2, 800);
    assert!(n1 > 200 && n2 > 200, "{n1} / {n2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_scoring_servers_behind_the_proxy() {
    let blue = Proc::score_server("blue", &["--model", "v1"]);
    let green = Proc::score_server("green", &["--model", "v2"]);
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .deployment("green", &[green.addr], Some(0))
            .yaml(),
    );
    let c = client();
    let post = |pin: Option<&'static str>| {
        let mut b = Request::post(proxy.url("/score")).header("content-type", "application/json");
        if let Some(p) = pin {
            b = b.header("x-api-version", p);
        }
        b.body(Full::new(Bytes::from_static(
            br#"{"data": [[1, 2, 3], [10, 20, 30]]}"#,
        )))
        .unwrap()
    };
    let a = send(&c, post(None)).await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(
        (j["deployment"].as_str(), j["model"].as_str()),
        (Some("blue"), Some("v1"))
    );
    assert_eq!(j["predictions"], serde_json::json!([4.0, 31.0]));
    let j = send(&c, post(Some("green"))).await.json();
    assert_eq!(
        (j["deployment"].as_str(), j["model"].as_str()),
        (Some("green"), Some("v2"))
    );
    let p = j["predictions"].as_array().unwrap();
    assert!((p[0].as_f64().unwrap() - 4.1).abs() < 1e-9);
    assert!((p[1].as_f64().unwrap() - 33.8).abs() < 1e-9);

    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "green")]).await;
    assert_eq!(
        a.json(),
        serde_json::json!({"deployment": "green", "model": "v2"})
    );
    let a = get(&c, &blue.url("/health"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let bad = send(
        &c,
        Request::post(proxy.url("/score"))
            .body(Full::new(Bytes::from_static(b"{\"rows\": 1}")))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].as_str().unwrap().contains("data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_server_injects_errors_and_delay() {
    let failing = Proc::score_server("green", &["--error-rate", "1.0"]);
    let c = client();
    let a = get(&c, &failing.url("/score"), &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        get(&c, &failing.url("/health"), &[]).await.status,
        StatusCode::OK
    );

    let half = Proc::score_server("green", &["--error-rate", "0.5"]);
    let mut errors = 0;
    for _ in 0..400 {
        if get(&c, &half.url("/score"), &[]).await.status == StatusCode::INTERNAL_SERVER_ERROR {
            errors += 1;
        }
    }
    // Binomial(400, 0.5): sigma 10; allow 5 sigma.
    assert!((150..=250).contains(&errors), "{errors} of 400");

    let slow = Proc::score_server("blue", &["--delay-ms", "300"]);
    let start = Instant::now();
    assert_eq!(
        get(&c, &slow.url("/score"), &[]).await.status,
        StatusCode::OK
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_instances_are_pooled_and_kept_alive() {
    let blue = Backend::echo("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let c = client();
    for i in 0..100 {
        let a = if i % 2 == 0 {
            get(&c, &proxy.url("/score"), &[]).await
        } else {
            send(
                &c,
                Request::post(proxy.url("/score"))
                    .body(Full::new(Bytes::from(vec![b'x'; 3000])))
                    .unwrap(),
            )
            .await
        };
        assert_eq!(a.status, StatusCode::OK);
    }
    assert_eq!(blue.count(), 100);
    assert_eq!(
        blue.connections(),
        1,
        "sequential requests did not reuse the connection"
    );
    // Concurrent clients share a handful of connections, reused across bursts.
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, url) = (c.clone(), proxy.url("/score"));
            tasks.push(tokio::spawn(async move { get(&c, &url, &[]).await.status }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
    }
    assert!(
        blue.connections() <= 9,
        "{} connections for 8 concurrent clients",
        blue.connections()
    );
}

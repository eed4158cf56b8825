//! Sticky split, traffic mirroring and key auth, end to end with real backends and the binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn sticky_file(blue: &Backend, green: &Backend, green_weight: u8) -> String {
    EndpointFile::new()
        .extra("sticky_header: x-user-id")
        .deployment("blue", &[blue.addr], Some(100 - green_weight))
        .deployment("green", &[green.addr], Some(green_weight))
        .yaml()
}

async fn route_of(c: &TestClient, proxy: &Proc, key: &str) -> String {
    let a = get(c, &proxy.url("/score"), &[("x-user-id", key)]).await;
    assert_eq!(a.status, StatusCode::OK);
    a.deployment().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_lands_on_the_same_deployment_in_every_process() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let file = sticky_file(&blue, &green, 50);
    let p1 = Proc::proxy(&file);
    let p2 = Proc::proxy(&file);
    let c = client();
    let mut seen = BTreeMap::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        let first = route_of(&c, &p1, &key).await;
        for _ in 0..19 {
            assert_eq!(
                route_of(&c, &p1, &key).await,
                first,
                "{key} moved within a process"
            );
        }
        assert_eq!(
            route_of(&c, &p2, &key).await,
            first,
            "{key} differs between processes"
        );
        *seen.entry(first).or_insert(0) += 1;
        if i >= 20 {
            // 20 keys × 20 repeats are enough for the repeat check; the rest checks spread.
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "50/50 keys all went to one deployment: {seen:?}"
    );
    // The documented hash (nginx split_clients' MurmurHash2): alice hashes to 0x1c962259,
    // below 50% of 2^32, so blue; user-42 hashes to 0xe0870305, above, so green.
    assert_eq!(route_of(&c, &p1, "alice").await, "blue");
    assert_eq!(route_of(&c, &p1, "user-42").await, "green");
    // Pin wins over sticky; no key falls back to the weighted random choice.
    let a = get(
        &c,
        &p1.url("/score"),
        &[("x-user-id", "alice"), ("x-api-version", "green")],
    )
    .await;
    assert_eq!(a.deployment(), "green");
    let mut unkeyed = BTreeMap::new();
    for _ in 0..100 {
        let a = get(&c, &p1.url("/score"), &[]).await;
        *unkeyed.entry(a.deployment().to_string()).or_insert(0) += 1;
    }
    assert_eq!(unkeyed.len(), 2, "{unkeyed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_weight_moves_keys_only_towards_green() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let proxy = Proc::proxy(&sticky_file(&blue, &green, 10));
    let c = client();
    let keys: Vec<String> = (0..1000).map(|i| format!("customer-{i:04}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(route_of(&c, &proxy, k).await);
    }
    std::fs::write(
        proxy.config.as_ref().unwrap(),
        sticky_file(&blue, &green, 30),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.metric("scoregate_config_generation").await < 2.0 {
        assert!(Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut after = Vec::new();
    for k in &keys {
        after.push(route_of(&c, &proxy, k).await);
    }
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            !(b == "green" && a == "blue"),
            "{} moved from green to blue",
            keys[i]
        );
    }
    let green_before = before.iter().filter(|d| *d == "green").count();
    let green_after = after.iter().filter(|d| *d == "green").count();
    // Binomial(1000, p): sigma about 9.5 at 10% and 14.5 at 30%; allow about 4 sigma.
    assert!(
        (60..=140).contains(&green_before),
        "{green_before} of 1000 at 10%"
    );
    assert!(
        (240..=360).contains(&green_after),
        "{green_after} of 1000 at 30%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_copies_of_half_the_requests_and_clients_only_live_answers() {
    let blue = Backend::echo("blue").await;
    let purple = Backend::echo("purple").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .extra("mirror_traffic: {purple: 50}")
            .deployment("blue", &[blue.addr], Some(100))
            .deployment("purple", &[purple.addr], None)
            .yaml(),
    );
    let c = client();
    let n = 400;
    for i in 0..n {
        let body = format!(
            "{{\"data\": [[{i}, 1, 2]], \"pad\": \"{}\"}}",
            "x".repeat(i % 700)
        );
        let a = send(
            &c,
            Request::post(proxy.url("/score"))
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.deployment(), "blue");
        assert_eq!(
            a.body,
            body.as_bytes(),
            "the client got something else than the live answer"
        );
    }
    // Pinned requests are never mirrored.
    for _ in 0..50 {
        get(&c, &proxy.url("/score"), &[("x-api-version", "blue")]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok_series = r#"scoregate_mirror_requests_total{deployment="purple",result="ok"}"#;
    let live: Vec<_> = blue.seen();
    loop {
        let copies = purple.seen();
        let done = proxy.metric(ok_series).await as usize;
        if done == copies.len() && Instant::now() > deadline - Duration::from_secs(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirror counter {done} never matched {} copies",
            copies.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copies = purple.seen();
    // Binomial(400, 0.5): sigma 10; allow 5 sigma.
    assert!(
        (150..=250).contains(&copies.len()),
        "{} copies of {n}",
        copies.len()
    );
    assert!(
        copies.iter().all(|c| c.method == http::Method::POST),
        "a pinned GET was mirrored"
    );
    // Every copy is byte-identical to a live request's body.
    for copy in &copies {
        assert!(copy.complete);
        assert!(
            live.iter().any(|l| l.body == copy.body),
            "a copy's body differs from every live body"
        );
    }
    // Copies are not live requests.
    let text = proxy.metrics().await;
    assert!(!text.contains(r#"scoregate_requests_total{code="200",deployment="purple""#));
    assert_eq!(blue.count(), n + 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_mirror_changes_nothing_for_clients() {
    let blue = Backend::start("blue").await;
    let slow = Backend::delayed("purple", Duration::from_secs(2)).await;
    for mirror in [slow.addr, dead_addr()] {
        let proxy = Proc::proxy(
            &EndpointFile::new()
                .extra("mirror_traffic: {purple: 50}")
                .deployment("blue", &[blue.addr], Some(100))
                .deployment("purple", &[mirror], None)
                .request("request_timeout_ms: 3000")
                .yaml(),
        );
        let c = client();
        let mut worst = Duration::ZERO;
        for _ in 0..200 {
            let t = Instant::now();
            let a = get(&c, &proxy.url("/score"), &[]).await;
            worst = worst.max(t.elapsed());
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.deployment(), "blue");
        }
        assert!(
            worst < Duration::from_millis(300),
            "mirror {mirror}: a live request took {worst:?}"
        );
        // Beyond 64 copies in flight (slow mirror) copies are dropped and counted.
        if mirror == slow.addr {
            let dropped = proxy
                .metric(r#"scoregate_mirror_requests_total{deployment="purple",result="dropped"}"#)
                .await;
            assert!(
                dropped > 0.0,
                "no copy was dropped with 2 s copies and a bound of 64"
            );
        } else {
            let deadline = Instant::now() + Duration::from_secs(5);
            while proxy
                .metric(r#"scoregate_mirror_requests_total{deployment="purple",result="error"}"#)
                .await
                < 20.0
            {
                assert!(Instant::now() < deadline, "failed copies were not counted");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_rejects_missing_and_wrong_keys_and_accepts_each_listed_key() {
    let blue = Backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        "# scoring clients\nkey-one-0123456789\n\n  key-two-abcdef  \n",
    )
    .unwrap();
    let file = EndpointFile::new()
        .extra("auth_mode: key\nkeys_file: keys.txt")
        .deployment("blue", &[blue.addr], Some(100))
        .yaml();
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(&path, &file).unwrap();
    let proxy = Proc::spawn(
        &["run", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let c = client();
    let url = proxy.url("/score");
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Bearer key-one-012345678")],
        vec![("authorization", "Basic a2V5LW9uZS0wMTIzNDU2Nzg5")],
        vec![("authorization", "key-one-0123456789")],
    ] {
        let a = get(&c, &url, &headers).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(a.headers["www-authenticate"], "Bearer");
        assert_eq!(a.json()["deployment"], serde_json::Value::Null);
    }
    for key in ["key-one-0123456789", "key-two-abcdef"] {
        let a = get(&c, &url, &[("authorization", &format!("Bearer {key}"))]).await;
        assert_eq!(a.status, StatusCode::OK, "{key}");
    }
    assert_eq!(blue.count(), 2);
    assert!(
        blue.seen()
            .iter()
            .all(|s| !s.headers.contains_key("authorization")),
        "the key reached the instance"
    );
    // No key in the logs or in /config.
    let cfg = get(&c, &format!("http://{}/config", proxy.admin.unwrap()), &[]).await;
    let cfg_text = String::from_utf8_lossy(&cfg.body).to_string();
    assert_eq!(cfg.json()["auth_mode"], "key");
    assert_eq!(cfg.json()["keys"], 2);
    for secret in ["key-one", "key-two"] {
        assert!(!cfg_text.contains(secret));
        assert!(!proxy.log().contains(secret));
    }
    let text = proxy.metrics().await;
    assert!(
        text.contains(r#"scoregate_requests_total{code="401",deployment="none",pinned="false"} 5"#),
        "{text}"
    );

    // The keys file is reloaded with the endpoint file; an empty one is refused and the last
    // good keys keep working.
    std::fs::write(dir.path().join("keys.txt"), "key-three\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while get(&c, &url, &[("authorization", "Bearer key-three")])
        .await
        .status
        != StatusCode::OK
    {
        assert!(
            Instant::now() < deadline,
            "the new keys file was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&c, &url, &[("authorization", "Bearer key-one-0123456789")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    std::fs::write(dir.path().join("keys.txt"), "# nobody\n\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while proxy
        .metric(r#"scoregate_config_reloads_total{result="error"}"#)
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "an empty keys file was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&c, &url, &[("authorization", "Bearer key-three")])
            .await
            .status,
        StatusCode::OK
    );
    proxy.wait_log("holds no key");
}

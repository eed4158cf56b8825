//! TLS on the listeners, with real handshakes: certificates made by a test CA (rcgen), the real
//! binary, and clients nobody here wrote (curl over HTTP/1.1 and HTTP/2, Python's `ssl`) beside a
//! rustls client. Covers mTLS, rotation under keep-alive load, a broken key keeping the old
//! pair, and bad pairs refused at start.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pki::*;
use common::*;

/// The endpoint file's `tls:` block for `leaf` (absolute paths: the certificates live in
/// another directory than the file, as a mounted Secret does).
fn tls_block(leaf: &Leaf, client_ca: Option<&std::path::Path>) -> String {
    let mut s = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!("  client_ca_file: {}\n", ca.display()));
    }
    s
}

async fn tls_proxy(leaf: &Leaf, client_ca: Option<&std::path::Path>) -> (Backend, Proc) {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .extra(&tls_block(leaf, client_ca))
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    (blue, proxy)
}

/// A program on this machine, or None (skipped) unless SCOREGATE_REQUIRE_PEERS is set.
fn tool(program: &str, probe: &[&str]) -> Option<()> {
    let ok = std::process::Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(());
    }
    assert!(
        std::env::var("SCOREGATE_REQUIRE_PEERS").is_err(),
        "{program} is required (SCOREGATE_REQUIRE_PEERS is set) but not installed"
    );
    eprintln!("SKIPPED: {program} is not installed");
    None
}

/// `curl` against the proxy as `scoring.test`: (exit code, body, HTTP version).
fn curl(proxy: &Proc, pki: &Pki, extra: &[&str]) -> (i32, String, String) {
    let port = proxy.addr.port();
    let resolve = format!("scoring.test:{port}:127.0.0.1");
    let url = format!("https://scoring.test:{port}/score");
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "--resolve",
        &resolve,
        "--cacert",
        pki.ca.to_str().unwrap(),
        "-w",
        "\n%{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = std::process::Command::new("curl")
        .args(&args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (
        out.status.code().unwrap_or(-1),
        body.to_string(),
        version.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_are_served_over_https_with_http1_and_http2() {
    let pki = Pki::new("test-ca");
    let leaf = pki.server("server", &["scoring.test", "127.0.0.1"], VALID);
    let (_blue, proxy) = tls_proxy(&leaf, None).await;
    if tool("curl", &["--version"]).is_some() {
        let (code, body, version) = curl(&proxy, &pki, &["--http1.1"]);
        assert_eq!((code, version.as_str()), (0, "1.1"), "{body}");
        assert!(body.contains("\"deployment\":\"blue\""), "{body}");
        let (code, body, version) = curl(&proxy, &pki, &["--http2"]);
        assert_eq!((code, version.as_str()), (0, "2"), "{body}");
        assert!(body.contains("\"deployment\":\"blue\""), "{body}");
        // Another CA's client refuses the certificate; a cleartext client gets nothing.
        let other = Pki::new("other-ca");
        let (code, _, _) = curl(&proxy, &other, &[]);
        assert_eq!(
            code, 60,
            "curl must refuse a certificate from an unknown CA"
        );
        let plain = raw(
            proxy.addr,
            b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_millis(500),
        );
        assert!(
            !plain.contains("200"),
            "a cleartext request was answered: {plain}"
        );
    }
    // Python's ssl module, verifying the IP address in the certificate.
    let script = "import http.client, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        c = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[2]), context=ctx)\n\
        c.request('GET', '/score')\n\
        r = c.getresponse()\n\
        print(r.status, c.sock.version(), r.getheader('x-deployment'))\n";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            pki.ca.to_str().unwrap(),
            &proxy.addr.port().to_string(),
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "200 TLSv1.3 blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_serves_a_client_with_a_certificate_of_the_ca_and_refuses_one_without() {
    let pki = Pki::new("test-ca");
    let leaf = pki.server("server", &["scoring.test"], VALID);
    let good = pki.client("good-client");
    let outsiders = Pki::new("outsider-ca");
    let outsider = outsiders.client("outsider");
    let (blue, proxy) = tls_proxy(&leaf, Some(&pki.ca)).await;
    let with = client_config(&pki.ca, Some(&good), &[b"http/1.1"]);
    let mut conn = TlsConn::open(proxy.addr, "scoring.test", with)
        .await
        .expect("handshake with a client certificate");
    let (status, body) = conn.get("/score").await.expect("answer");
    assert_eq!(status, 200, "{body:?}");
    // Without a certificate, or with one of another CA: no answer (TLS 1.3 reports the refusal
    // after the client's side of the handshake, so the request is where it fails).
    for client in [None, Some(&outsider)] {
        let config = client_config(&pki.ca, client, &[b"http/1.1"]);
        let refused = match TlsConn::open(proxy.addr, "scoring.test", config).await {
            Err(_) => true,
            Ok(mut c) => c.get("/score").await.is_err(),
        };
        assert!(
            refused,
            "served a client presenting {:?}",
            client.map(|c| &c.cert)
        );
    }
    assert_eq!(
        blue.count(),
        1,
        "only the request with a good certificate reached blue"
    );
    if tool("curl", &["--version"]).is_some() {
        let cert = good.cert.to_str().unwrap();
        let key = good.key.to_str().unwrap();
        let (code, body, _) = curl(&proxy, &pki, &["--cert", cert, "--key", key]);
        assert_eq!(code, 0, "{body}");
        let (code, _, _) = curl(&proxy, &pki, &[]);
        assert_ne!(code, 0, "curl without a client certificate was served");
    }
}

/// Replaces `to`'s files with `from`'s by rename, certificate first (as a writer would).
fn rotate(from: &Leaf, to: &Leaf) {
    for (src, dst) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_and_drops_no_request() {
    let pki = Pki::new("test-ca");
    let live = pki.server("live", &["scoring.test"], VALID);
    let next = pki.server("next", &["scoring.test"], VALID);
    let first = live.der();
    let (_blue, proxy) = tls_proxy(&live, None).await;
    let config = client_config(&pki.ca, None, &[b"http/1.1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    // Keep-alive load: two connections kept open throughout, and new connections one after
    // another.
    let mut loads = Vec::new();
    for kept in [true, true, false] {
        let (stop, failed, config) = (stop.clone(), failed.clone(), config.clone());
        let addr = proxy.addr;
        loads.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() || !kept {
                    conn = TlsConn::open(addr, "scoring.test", config.clone())
                        .await
                        .ok();
                }
                let ok = match conn.as_mut() {
                    Some(c) => matches!(c.get("/score").await, Ok((200, _))),
                    None => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rotate(&next, &live);
    // New connections get the new certificate within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let c = TlsConn::open(proxy.addr, "scoring.test", config.clone())
            .await
            .expect("handshake");
        if c.presented != first || Instant::now() > deadline {
            break c.presented;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        served,
        next.der(),
        "new connections still get the old certificate"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut requests = 0;
    for l in loads {
        requests += l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "of {requests} requests");
    assert!(requests > 50, "only {requests} requests");
    proxy.wait_log("TLS certificate changed");
    eprintln!("rotation: {requests} requests, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_keeps_the_last_good_pair_serving() {
    let pki = Pki::new("test-ca");
    let live = pki.server("live", &["scoring.test"], VALID);
    let (_blue, proxy) = tls_proxy(&live, None).await;
    let config = client_config(&pki.ca, None, &[b"http/1.1"]);
    std::fs::write(&live.key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
    proxy.wait_log("not applied");
    assert!(
        proxy.log().contains(live.key.to_str().unwrap()),
        "{}",
        proxy.log()
    );
    let mut c = TlsConn::open(proxy.addr, "scoring.test", config.clone())
        .await
        .expect("the old pair still serves");
    assert_eq!(c.presented, live.der());
    assert_eq!(c.get("/score").await.map(|a| a.0), Ok(200));
    assert_eq!(
        proxy.metric("scoregate_config_last_reload_success").await,
        0.0
    );
    // A key of another certificate is refused the same way.
    let other = pki.server("other", &["scoring.test"], VALID);
    std::fs::copy(&other.key, &live.key).unwrap();
    proxy.wait_log("does not match the certificate");
    let c = TlsConn::open(proxy.addr, "scoring.test", config)
        .await
        .expect("the old pair still serves");
    assert_eq!(c.presented, live.der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pairs_are_refused_at_start_and_a_pair_near_expiry_is_a_warning() {
    let pki = Pki::new("test-ca");
    let expired = pki.server("expired", &["scoring.test"], EXPIRED);
    let (_dir, path) = temp_file(
        "endpoint.yaml",
        &EndpointFile::new()
            .extra(&tls_block(&expired, None))
            .deployment("blue", &[dead_addr()], Some(100))
            .yaml(),
    );
    let (code, _, err) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("expired at") && err.contains(expired.cert.to_str().unwrap()),
        "{err}"
    );
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    // Expiring in two days: valid, with a warning; `check` prints subject, names and expiry.
    let soon = pki.server("soon", &["scoring.test", "10.0.0.5"], EXPIRING);
    std::fs::write(
        &path,
        EndpointFile::new()
            .extra(&tls_block(&soon, None))
            .deployment("blue", &[dead_addr()], Some(100))
            .yaml(),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("CN=soon")
            && out.contains("scoring.test, 10.0.0.5")
            && out.contains("expires"),
        "{out}"
    );
    assert!(
        err.contains("WARNING") && err.contains("expires in"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_its_own_tls_and_the_expiry_is_a_metric() {
    let pki = Pki::new("test-ca");
    let data = pki.server("data", &["scoring.test"], VALID);
    let admin = pki.server("admin", &["scoring.test"], EXPIRING);
    let blue = Backend::start("blue").await;
    let file = EndpointFile::new()
        .extra(&tls_block(&data, None))
        .extra(&tls_block(&admin, None).replacen("tls:", "admin_tls:", 1))
        .deployment("blue", &[blue.addr], Some(100))
        .yaml();
    let proxy = Proc::proxy(&file);
    let config = client_config(&pki.ca, None, &[b"http/1.1"]);
    let admin_addr = proxy.admin.expect("admin address");
    let mut c = TlsConn::open(admin_addr, "scoring.test", config)
        .await
        .expect("admin over TLS");
    assert_eq!(c.presented, admin.der());
    let (status, body) = c.get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let expiry = |listener: &str| -> f64 {
        let series =
            format!("scoregate_tls_certificate_expiry_seconds{{listener=\"{listener}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let left = expiry("admin") - now;
    assert!(
        (86_400.0..3.0 * 86_400.0).contains(&left),
        "admin expires in {left} s"
    );
    assert!(expiry("data") - now > 300.0 * 86_400.0);
}

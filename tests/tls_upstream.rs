//! Upstream TLS, headers and bearer keys, end to end: the real binary forwards to TLS scoring
//! backends on 127.0.0.1 (real rustls handshakes, certificates made by rcgen in the test), REST
//! over HTTP/1.1 and gRPC over HTTP/2 with ALPN.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tls::{Ca, TlsBackend};
use common::*;
use scoregate::grpc::ModelInferRequest;
use scoregate::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::transport::Channel;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// An endpoint file: `traffic` as written, then each deployment's name and YAML body (lines
/// indented by four spaces).
fn file(traffic: &str, deployments: &[(&str, String)]) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic: {traffic}\ndeployments:\n"
    );
    for (name, body) in deployments {
        s.push_str(&format!("  {name}:\n{body}"));
    }
    s
}

/// A deployment's body: its REST and gRPC instances at `addr`, and `more` lines.
fn at(addr: std::net::SocketAddr, more: &str) -> String {
    format!("    instances: [{addr}]\n    grpc_instances: [{addr}]\n{more}")
}

async fn grpc_client(proxy: &Proc) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", proxy.addr))
        .await
        .expect("connect to the proxy")
}

/// A gRPC call, pinned to `deployment`.
async fn call(
    c: &mut GrpcInferenceServiceClient<Channel>,
    deployment: &str,
) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(ModelInferRequest {
        model_name: "scorer".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-api-version", deployment.parse().unwrap());
    c.model_infer(req).await.map(drop)
}

/// A CA written to `ca.crt` in a temp dir, and a backend whose certificate another CA issued.
async fn ca_and_untrusted() -> (tempfile::TempDir, Ca, PathBuf, TlsBackend) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let other_ca = Ca::new("another CA");
    let untrusted = TlsBackend::start("u", &other_ca.issue(&["127.0.0.1"]), None).await;
    (dir, ca, ca_file, untrusted)
}

fn tls_errors(deployment: &str) -> String {
    format!(r#"scoregate_upstream_errors_total{{deployment="{deployment}",kind="tls"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_reach_a_verified_tls_instance_over_few_resumed_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start("blue", &ca.issue(&["localhost", "127.0.0.1"]), None).await;
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let more = format!("    tls: {{ca_file: {}}}\n", ca_file.display());
    let proxy = Proc::proxy(&file("{blue: 100}", &[("blue", at(backend.addr, &more))]));

    // Many requests, from 4 keep-alive clients at once: a handful of pooled connections.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/score");
            tokio::spawn(async move {
                let c = client();
                for _ in 0..50 {
                    let a = get(&c, &url, &[]).await;
                    assert_eq!(a.status, 200, "{:?}", a.body);
                    assert_eq!(a.json()["deployment"], "blue");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (conns, (handshakes, _)) = (backend.connections(), backend.handshakes());
    println!("200 requests: {conns} TCP connections, {handshakes} handshakes");
    assert!(conns <= 8, "200 requests took {conns} connections");
    assert_eq!(handshakes, conns);
    assert!(backend.alpn().iter().all(|a| a == "http/1.1"));

    // Connections the instance closes are replaced by resumed sessions (rustls's cache is
    // shared by every connection of the deployment).
    let c = client();
    for _ in 0..8 {
        let a = get(&c, &proxy.url("/score"), &[("x-close", "1")]).await;
        assert_eq!(a.status, 200);
    }
    let (handshakes, resumed) = backend.handshakes();
    println!("after 8 closed connections: {handshakes} handshakes, {resumed} resumed");
    assert!(resumed >= 3, "{resumed} of {handshakes} handshakes resumed");

    // A gRPC call, over HTTP/2 negotiated by ALPN, with an https target.
    let mut g = grpc_client(&proxy).await;
    call(&mut g, "blue").await.expect("gRPC over TLS");
    assert!(backend.alpn().iter().any(|a| a == "h2"));
    let grpc_seen = backend
        .seen()
        .into_iter()
        .find(|s| s.uri.contains("ModelInfer"));
    let uri = grpc_seen.expect("the call reached the instance").uri;
    assert!(uri.starts_with("https://"), "{uri}");
    assert!(backend.failed().is_empty(), "{:?}", backend.failed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_502_saying_why_and_counted_as_tls() {
    let (_dir, ca, ca_file, untrusted) = ca_and_untrusted().await;
    let misnamed = TlsBackend::start("m", &ca.issue(&["other.example"]), None).await;
    let expired = TlsBackend::start("e", &ca.issue_expired(&["127.0.0.1"]), None).await;
    let tls = format!("    tls: {{ca_file: {}}}\n", ca_file.display());
    let renamed = format!(
        "    tls: {{ca_file: {}, server_name: other.example}}\n",
        ca_file.display()
    );
    let proxy = Proc::proxy(&file(
        "{renamed: 100}",
        &[
            ("untrusted", at(untrusted.addr, &tls)),
            ("misnamed", at(misnamed.addr, &tls)),
            ("expired", at(expired.addr, &tls)),
            ("renamed", at(misnamed.addr, &renamed)),
        ],
    ));
    let c = client();
    let cases = [
        ("untrusted", "untrusted (unknown issuer)"),
        ("misnamed", "certificate name mismatch"),
        ("expired", "certificate has expired"),
    ];
    for (deployment, why) in cases {
        let a = get(&c, &proxy.url("/score"), &[("x-api-version", deployment)]).await;
        assert_eq!(a.status, 502, "{deployment}");
        let error = a.json()["error"].as_str().unwrap().to_string();
        println!("{deployment}: {error}");
        assert!(error.contains("TLS handshake"), "{error}");
        assert!(error.contains(why), "{deployment}: {error}");
        assert_eq!(proxy.metric(&tls_errors(deployment)).await, 1.0);
    }
    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "misnamed")]).await;
    let error = a.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("`127.0.0.1`") && error.contains("other.example"),
        "{error}"
    );
    // The name the certificate has, set as `server_name`, verifies.
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!((a.status.as_u16(), a.deployment()), (200, "renamed"));

    // gRPC: UNAVAILABLE with the same reason.
    let mut g = grpc_client(&proxy).await;
    let status = call(&mut g, "untrusted").await.expect_err("untrusted");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("unknown issuer"), "{status:?}");
    assert_eq!(proxy.metric(&tls_errors("untrusted")).await, 2.0);
    // The other kinds stay untouched; nothing reached the instances, and a failed handshake
    // is not tried again on the same instance.
    let connect = r#"scoregate_upstream_errors_total{deployment="untrusted",kind="connect"}"#;
    assert_eq!(proxy.metric(connect).await, 0.0);
    assert!(untrusted.seen().is_empty() && expired.seen().is_empty());
    assert_eq!(untrusted.connections(), 2);
    assert!(
        untrusted.failed().iter().all(|e| e.contains("UnknownCA")),
        "{:?}",
        untrusted.failed()
    );
    proxy.wait_log("invalid peer certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_requires_a_client_certificate_gets_the_one_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let (cert, key) = ca.issue(&["scoregate.example"]).write(dir.path(), "client");
    let backend = TlsBackend::start("m", &ca.issue(&["127.0.0.1"]), Some(&ca)).await;
    let with = format!(
        "    tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let without = format!("    tls: {{ca_file: {}}}\n", ca_file.display());
    let proxy = Proc::proxy(&file(
        "{with: 100}",
        &[
            ("with", at(backend.addr, &with)),
            ("without", at(backend.addr, &without)),
        ],
    ));
    let c = client();
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let mut g = grpc_client(&proxy).await;
    call(&mut g, "with")
        .await
        .expect("gRPC with a client certificate");

    let a = get(&c, &proxy.url("/score"), &[("x-api-version", "without")]).await;
    assert_eq!(a.status, 502);
    let error = a.json()["error"].as_str().unwrap().to_string();
    println!("without a client certificate: {error}");
    assert!(error.contains("requires a client certificate"), "{error}");
    assert_eq!(proxy.metric(&tls_errors("without")).await, 1.0);
    let status = call(&mut g, "without")
        .await
        .expect_err("no client certificate");
    println!("gRPC without a client certificate: {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backend.seen().len(),
        2,
        "only the calls with a certificate arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_the_bearer_key_reach_the_instances_and_the_key_is_never_shown() {
    const KEY: &str = "sk-live-7f3a9c1e5b2d4f6a8c0e";
    const SHADOW_KEY: &str = "sk-shadow-0d1c2b3a4f5e6d7c";
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let key_file = write(dir.path(), "green.key", &format!("{KEY}\n"));
    let shadow_key = write(dir.path(), "shadow.key", SHADOW_KEY);
    let green = TlsBackend::start("green", &ca.issue(&["127.0.0.1"]), None).await;
    let shadow = Backend::start("shadow").await;
    let expired = TlsBackend::start("e", &ca.issue_expired(&["127.0.0.1"]), None).await;
    let green_body = at(
        green.addr,
        &format!(
            "    tls: {{ca_file: {}}}\n    headers: {{azureml-model-deployment: green, x-team: scoring}}\n    bearer_key_file: {}\n",
            ca_file.display(),
            key_file.display()
        ),
    );
    let shadow_body = format!(
        "    instances: [{}]\n    headers: {{azureml-model-deployment: shadow}}\n    bearer_key_file: {}\n",
        shadow.addr,
        shadow_key.display()
    );
    let broken_body = at(
        expired.addr,
        &format!(
            "    tls: {{ca_file: {}}}\n    bearer_key_file: {}\n",
            ca_file.display(),
            key_file.display()
        ),
    );
    let dead_body = format!(
        "    instances: [{}]\n    bearer_key_file: {}\n",
        dead_addr(),
        key_file.display()
    );
    let mut yaml = file(
        "{green: 100}",
        &[
            ("green", green_body),
            ("shadow", shadow_body),
            ("broken", broken_body),
            ("dead", dead_body),
        ],
    );
    yaml.push_str("mirror_traffic: {shadow: 50}\n");
    let proxy = Proc::proxy(&yaml);
    let c = client();
    let client_headers = [
        ("authorization", "Bearer the-clients-own"),
        ("azureml-model-deployment", "blue"),
        ("x-kept", "1"),
    ];
    for _ in 0..20 {
        let a = get(&c, &proxy.url("/score"), &client_headers).await;
        assert_eq!(a.status, 200);
    }
    let seen = green.seen();
    assert_eq!(seen.len(), 20);
    for s in &seen {
        assert_eq!(s.headers["authorization"], format!("Bearer {KEY}").as_str());
        assert_eq!(s.headers["azureml-model-deployment"], "green");
        assert_eq!(s.headers["x-team"], "scoring");
        // Reached by its own name, as a virtual-hosted HTTPS service needs.
        assert_eq!(s.headers["host"], green.addr.to_string().as_str());
        assert_eq!(s.headers["x-kept"], "1");
        assert_eq!(s.headers.get_all("authorization").iter().count(), 1);
    }
    // Mirrored copies carry the mirror deployment's headers and key, never the live one's.
    wait_until("a mirrored copy", Duration::from_secs(5), async || {
        shadow.count() > 0
    })
    .await;
    for s in shadow.seen() {
        assert_eq!(
            s.headers["authorization"],
            format!("Bearer {SHADOW_KEY}").as_str()
        );
        assert_eq!(s.headers["azureml-model-deployment"], "shadow");
        assert_eq!(s.headers["x-kept"], "1");
    }
    // gRPC calls get them too.
    let mut g = grpc_client(&proxy).await;
    call(&mut g, "green").await.expect("gRPC call");
    let grpc = green
        .seen()
        .into_iter()
        .find(|s| s.uri.contains("ModelInfer"));
    let grpc = grpc.expect("the call reached the instance");
    assert_eq!(
        grpc.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(grpc.headers["azureml-model-deployment"], "green");

    // The key is in no error, no log line and not in /config.
    let mut shown = Vec::new();
    for deployment in ["broken", "dead"] {
        let a = get(&c, &proxy.url("/score"), &[("x-api-version", deployment)]).await;
        assert_eq!(a.status, 502, "{deployment}");
        shown.push(String::from_utf8_lossy(&a.body).into_owned());
        let status = call(&mut g, deployment).await.expect_err(deployment);
        shown.push(format!("{status:?}"));
    }
    let config = admin_get(&proxy, "/config").await;
    assert_eq!(config.status, 200);
    shown.push(String::from_utf8_lossy(&config.body).into_owned());
    shown.push(String::from_utf8_lossy(&admin_get(&proxy, "/status.json").await.body).into_owned());
    shown.push(proxy.metrics().await);
    proxy.wait_log("cannot connect to instance");
    shown.push(proxy.log());
    for text in &shown {
        assert!(!text.contains(KEY) && !text.contains(SHADOW_KEY), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ejected_for_its_certificate_stays_out_as_its_probe_handshakes_too() {
    let (_dir, _, ca_file, untrusted) = ca_and_untrusted().await;
    let more = format!("    tls: {{ca_file: {}}}\n", ca_file.display());
    let proxy = Proc::proxy(&file(
        "{blue: 100}",
        &[(
            "blue",
            format!("    instances: [{}]\n{more}", untrusted.addr),
        )],
    ));
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &proxy.url("/score"), &[]).await.status, 502);
    }
    assert_eq!(get(&c, &proxy.url("/score"), &[]).await.status, 503);
    // A TCP connect alone would succeed and put it back; the probe's handshake fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !proxy.log().contains("ejected again") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = proxy.log();
    let line = log.lines().find(|l| l.contains("ejected again")).unwrap();
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(!log.contains("back in rotation"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_tls_takes_effect_and_one_that_does_not_keeps_the_connections() {
    let (dir, ca, ca_file, _untrusted) = ca_and_untrusted().await;
    let backend = TlsBackend::start("blue", &ca.issue(&["localhost", "127.0.0.1"]), None).await;
    let other_ca = write(dir.path(), "other.crt", &Ca::new("a third CA").pem);
    let yaml = |tls: String| file("{blue: 100}", &[("blue", at(backend.addr, &tls))]);
    let proxy = Proc::proxy(&yaml(format!(
        "    tls: {{ca_file: {}}}\n",
        other_ca.display()
    )));
    let c = client();
    let a = get(&c, &proxy.url("/score"), &[]).await;
    assert_eq!(a.status, 502, "{:?}", a.body);
    let path = proxy.config.clone().unwrap();
    let reload = async |content: String, generation: f64| {
        std::fs::write(&path, content).unwrap();
        wait_until("the reload", Duration::from_secs(5), async || {
            proxy.metric("scoregate_config_generation").await == generation
        })
        .await;
    };
    let trusted = format!("    tls: {{ca_file: {}}}\n", ca_file.display());
    reload(yaml(trusted.clone()), 2.0).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &proxy.url("/score"), &[]).await.status, 200);
    }
    let before = backend.connections();
    // The same tls: the instance and its pooled connection stay.
    reload(yaml(format!("{trusted}    # a comment\n")), 3.0).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &proxy.url("/score"), &[]).await.status, 200);
    }
    assert_eq!(
        backend.connections(),
        before,
        "unchanged tls kept the connection"
    );
    // Another server_name: new instances, new connections, verified for the new name.
    let named = format!(
        "    tls: {{ca_file: {}, server_name: localhost}}\n",
        ca_file.display()
    );
    reload(yaml(named), 4.0).await;
    assert_eq!(get(&c, &proxy.url("/score"), &[]).await.status, 200);
    assert_eq!(backend.connections(), before + 1);
}

//! A gRPC client nobody here wrote: Python `grpcio` (Debian `python3-grpcio`, installed by
//! `.ci/run`) calls V2 ModelInfer through the real binary to the built-in scoring servers.
//! Without grpcio the test says SKIPPED and passes, unless SCOREGATE_REQUIRE_PEERS=1 (as in
//! `.ci/run`).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_model_infer_through_the_proxy() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let blue = Proc::score_server("blue", &["--grpc-listen", "127.0.0.1:0"]);
    let green = Proc::score_server("green", &["--model", "v2", "--grpc-listen", "127.0.0.1:0"]);
    let file = grpc_blue_green_file(&blue, &green, "traffic: {blue: 50, green: 50}\n");
    let proxy = Proc::proxy(&file);

    // 200 calls on one channel: each is split on its own.
    let split = run_grpcio(python, proxy.addr, 200, None);
    assert_eq!(split["errors"], serde_json::json!([]), "{split}");
    let count = |d: &str| split["deployments"][d].as_u64().unwrap_or(0) as usize;
    assert_eq!(count("blue") + count("green"), 200, "{split}");
    // 1 degree of freedom, p = 0.001: 10.83.
    assert!(
        chi_square(&[count("blue"), count("green")], &[50.0, 50.0]) < 10.83,
        "{split}"
    );
    // Each deployment's model answered: v1 is 1 + 0.5 * sum(row), v2 0.8 + 0.55 * sum(row).
    let prediction = |d: &str| split["predictions"][d][0].as_f64().unwrap_or(f64::NAN);
    assert!((prediction("blue") - 6.0).abs() < 1e-9, "{split}");
    assert!((prediction("green") - 6.3).abs() < 1e-9, "{split}");

    // Pinned by metadata.
    let pinned = run_grpcio(python, proxy.addr, 20, Some("green"));
    assert_eq!(
        pinned["deployments"],
        serde_json::json!({"green": 20}),
        "{pinned}"
    );

    // An unknown pin: INVALID_ARGUMENT, saying why.
    let wrong = run_grpcio(python, proxy.addr, 1, Some("purple"));
    assert_eq!(wrong["errors"][0]["code"], "INVALID_ARGUMENT", "{wrong}");
    let details = wrong["errors"][0]["details"].as_str().unwrap_or("");
    assert!(details.contains("unknown deployment \"purple\""), "{wrong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_over_tls_on_the_same_listener_as_https() {
    let Some(python) = python_with_grpcio() else {
        return;
    };
    let pki = common::pki::Pki::new("test-ca");
    let leaf = pki.server("server", &["scoring.test"], common::pki::VALID);
    let blue = Proc::score_server("blue", &["--grpc-listen", "127.0.0.1:0"]);
    let file = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntls:\n  cert_file: {}\n  key_file: {}\ntraffic: {{blue: 100}}\ndeployments:\n  blue:\n    instances: [{}]\n    grpc_instances: [{}]\n",
        leaf.cert.display(),
        leaf.key.display(),
        blue.addr,
        blue.logged_addr("gRPC scoring server listening"),
    );
    let proxy = Proc::proxy(&file);
    let ca = pki.ca.to_str().unwrap();
    let env = [("GRPC_ROOT_CERT", ca), ("GRPC_SERVER_NAME", "scoring.test")];
    // A secure channel (ALPN h2): every call answered by blue's gRPC port.
    let secure = run_grpcio_with(python, proxy.addr, 20, None, &env);
    assert_eq!(secure["errors"], serde_json::json!([]), "{secure}");
    assert_eq!(
        secure["deployments"],
        serde_json::json!({"blue": 20}),
        "{secure}"
    );
    // Another CA: the channel never connects.
    let other = common::pki::Pki::new("other-ca");
    let env = [
        ("GRPC_ROOT_CERT", other.ca.to_str().unwrap()),
        ("GRPC_SERVER_NAME", "scoring.test"),
    ];
    let refused = run_grpcio_with(python, proxy.addr, 1, None, &env);
    assert_eq!(refused["errors"][0]["code"], "UNAVAILABLE", "{refused}");
}

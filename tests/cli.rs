//! The command line as a user meets it: `check`, `run` refusing bad input, `demo`.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};

#[test]
fn check_prints_the_traffic_table_and_exits_0() {
    let (code, out, err) = run_cli(&["check", repo_path("config/demo.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        out.contains("blue           90%  127.0.0.1:9001, 127.0.0.1:9002"),
        "{out}"
    );
    assert!(
        out.contains("green          10%  127.0.0.1:9101, 127.0.0.1:9102"),
        "{out}"
    );
    assert_eq!(err, "");
}

#[test]
fn check_reports_every_error_as_file_line_col_and_exits_1() {
    let (_dir, path) = temp_file(
        "bad.yaml",
        "traffic:\n  blue: 90\n  green: 20\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n  green:\n    instances: [nohost]\n",
    );
    let p = path.to_str().unwrap();
    let (code, out, err) = run_cli(&["check", p]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "{p}:1:1: traffic weights sum to 110 (blue=90 + green=20); they must sum to exactly 100, or all be 0"
            ),
            format!("{p}:8:17: instance `nohost`: expected host:port, like 127.0.0.1:9001"),
        ]
    );
}

#[test]
fn check_a_misspelt_key_names_the_line_and_suggests() {
    let (_dir, path) = temp_file(
        "typo.yaml",
        "traffic: {blue: 100}\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request:\n      request_timeout: 100\n",
    );
    let p = path.to_str().unwrap();
    let (code, _, err) = run_cli(&["check", p]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!(
            "{p}:6:7: deployments.blue.request: unknown key `request_timeout` in request settings (did you mean `request_timeout_ms`?)"
        )
    );
}

#[test]
fn check_a_missing_file_is_a_clear_error() {
    let (code, _, err) = run_cli(&["check", "/nonexistent/endpoint.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("/nonexistent/endpoint.yaml:1:1: cannot read the file:"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn check_warns_on_azure_keys_and_aml_token() {
    let (_dir, path) = temp_file(
        "azure.yaml",
        "$schema: http://azureml/sdk-2-0/OnlineEndpoint.json\nname: myEndpoint\ntype: OnlineEndpoint\nauth_mode: aml_token\ntraffic:\n  blue: 100\ndeployments:\n  blue:\n    model: aml:models/my-model-m1:1\n    sku: Standard_FS4_v2\n    instances: [127.0.0.1:9001]\n",
    );
    let p = path.to_str().unwrap();
    let (code, out, err) = run_cli(&["check", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue          100%"), "{out}");
    assert!(
        err.contains(&format!(
            "{p}:1:1: warning: `$schema` is an Azure ML setting"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:4:1: warning: WARNING: auth_mode `aml_token` is NOT enforced"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{p}:9:5: warning: `model`")), "{err}");
}

#[test]
fn every_shipped_endpoint_file_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo_path("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, _, err) = run_cli(&["check", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {err}", path.display());
            n += 1;
        }
    }
    assert!(
        n >= 6,
        "expected demo.yaml and the five canary steps, found {n}"
    );
}

#[test]
fn run_with_an_invalid_file_prints_the_errors_and_exits_1() {
    let (_dir, path) = temp_file("bad.yaml", "traffic: {blue: \"100\"}\n");
    let p = path.to_str().unwrap();
    let (code, _, err) = run_cli(&["run", "--config", p]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{p}:1:17: traffic.blue: weight \"100\" is a string"
        )),
        "{err}"
    );
}

#[test]
fn run_refuses_a_live_mirror_and_a_missing_keys_file() {
    let (_dir, path) = temp_file(
        "bad.yaml",
        "auth_mode: key\nkeys_file: keys.txt\nmirror_traffic: {blue: 10}\ntraffic: {blue: 100}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n",
    );
    let (code, _, err) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:1: keys_file `"), "{err}");
    assert!(err.contains("keys.txt` cannot be read"), "{err}");
    assert!(
        err.contains(":3:18: `blue` takes 100% of live traffic: a mirror must be a deployment at 0% live weight"),
        "{err}"
    );
}

#[test]
fn run_on_a_port_in_use_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = temp_file(
        "e.yaml",
        &format!(
            "listen: {addr}\ntraffic: {{blue: 100}}\ndeployments:\n  blue: {{instances: [127.0.0.1:9001]}}\n"
        ),
    );
    let (code, _, err) = run_cli(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on {addr} (data plane):")),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_flags_are_refused_without_a_panic() {
    let (code, _, err) = run_cli(&[
        "score-server",
        "--name",
        "x",
        "--listen",
        "127.0.0.1:0",
        "--error-rate",
        "2",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("`2` is not a rate from 0.0 to 1.0"), "{err}");
    let (code, _, err) = run_cli(&["score-server", "--name", "x", "--listen", "nowhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'nowhere'"), "{err}");
}

/// A free loopback port (bound, then released for the child to take).
fn free_addr() -> std::net::SocketAddr {
    dead_addr()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_blue_and_green_with_pinning() {
    let (b1, b2, g1, g2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let file = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic:\n  blue: 50\n  green: 50\ndeployments:\n  blue:\n    instances: [{b1}, {b2}]\n  green:\n    instances: [{g1}, {g2}]\n"
    );
    let (_dir, path) = temp_file("demo.yaml", &file);
    let demo = Proc::spawn(
        &["demo", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let c = client();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let a = get(&c, &demo.url("/score"), &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        let j = a.json();
        assert_eq!(j["deployment"].as_str(), Some(a.deployment()));
        *seen
            .entry((
                a.deployment().to_string(),
                j["model"].as_str().unwrap().to_string(),
            ))
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains_key(&("blue".into(), "v1".into())));
    assert!(seen.contains_key(&("green".into(), "v2".into())));
    for _ in 0..20 {
        let a = get(&c, &demo.url("/score"), &[("x-api-version", "green")]).await;
        assert_eq!(a.json()["model"], "v2");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn check_shows_sticky_mirror_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.txt"),
        "secret-key-one\nsecret-key-two\n",
    )
    .unwrap();
    let path = dir.path().join("e.yaml");
    std::fs::write(
        &path,
        "sticky_header: x-user-id\nauth_mode: key\nkeys_file: keys.txt\nmirror_traffic: {purple: 10}\ntraffic: {blue: 100}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n  purple: {instances: [127.0.0.1:9201]}\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sticky split by x-user-id"), "{out}");
    assert!(
        out.contains("mirror: 10% of unpinned requests copied to purple"),
        "{out}"
    );
    assert!(out.contains("auth: key (2 keys from "), "{out}");
    assert!(!out.contains("secret-key"), "a key was printed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_v2_protocol_on_rest_and_grpc_instances() {
    use scoregate::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
    use scoregate::grpc::infer_parameter::ParameterChoice;
    use scoregate::grpc::model_infer_request::InferInputTensor;
    use scoregate::grpc::{InferTensorContents, ModelInferRequest};

    // blue: REST and gRPC paired, one more gRPC; green: gRPC only.
    let (b1, bg1, bg2, gg1) = (free_addr(), free_addr(), free_addr(), free_addr());
    let file = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic:\n  blue: 100\ndeployments:\n  blue:\n    instances: [{b1}]\n    grpc_instances: [{bg1}, {bg2}]\n  green:\n    grpc_instances: [{gg1}]\n"
    );
    let (_dir, path) = temp_file("demo.yaml", &file);
    let _demo = Proc::spawn(
        &["demo", "--config", path.to_str().unwrap()],
        "data plane listening",
    );
    let req = Request::post(format!("http://{b1}/v2/models/scorer/infer"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP64","data":[1,2,3]}]}"#,
        )))
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["outputs"][0]["data"][0], 4.0);
    for (addr, deployment, version, want) in [
        (bg1, "blue", "v1", 4.0),
        (bg2, "blue", "v1", 4.0),
        (gg1, "green", "v2", 0.8 + 0.55 * 6.0),
    ] {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        let r = c
            .model_infer(ModelInferRequest {
                model_name: "scorer".into(),
                inputs: vec![InferInputTensor {
                    name: "input".into(),
                    datatype: "FP64".into(),
                    shape: vec![1, 3],
                    contents: Some(InferTensorContents {
                        fp64_contents: vec![1.0, 2.0, 3.0],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model_version, version);
        assert_eq!(
            r.parameters["deployment"].parameter_choice,
            Some(ParameterChoice::StringParam(deployment.into()))
        );
        let p = r.outputs[0].contents.as_ref().unwrap().fp64_contents[0];
        assert!((p - want).abs() < 1e-9, "{addr}: {p}");
    }
}

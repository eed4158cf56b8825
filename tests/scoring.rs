//! The built-in scoring server speaking the Open Inference Protocol (V2): the real
//! `scoregate score-server` binary with a REST and a gRPC listener on port 0, driven over real
//! sockets by an HTTP/1 client, tonic's generated V2 client and `scoregate load --grpc`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use scoregate::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use scoregate::grpc::infer_parameter::ParameterChoice;
use scoregate::grpc::model_infer_request::InferInputTensor;
use scoregate::grpc::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const GRPC_READY: &str = "gRPC scoring server listening";

/// `score-server --name NAME --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 EXTRA...` and
/// its gRPC address.
fn server(name: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["--grpc-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let p = Proc::score_server(name, &args);
    let grpc = p.logged_addr(GRPC_READY);
    assert_ne!(grpc, p.addr, "REST and gRPC share no listener");
    (p, grpc)
}

async fn connect(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the gRPC listener")
}

/// The v1 model: 1 + 0.5 × sum(row).
fn v1(row: &[f64]) -> f64 {
    1.0 + 0.5 * row.iter().sum::<f64>()
}

const ROWS: [[f64; 3]; 2] = [[1.0, 2.0, 3.0], [4.5, -5.0, 6.25]];

fn flat() -> Vec<f64> {
    ROWS.iter().flatten().copied().collect()
}

fn input(
    datatype: &str,
    shape: Vec<i64>,
    contents: Option<InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: datatype.into(),
        shape,
        contents,
        ..Default::default()
    }
}

/// A `ModelInferRequest` for the two rows as typed FP64 contents.
fn typed_request(id: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "scorer".into(),
        id: id.into(),
        inputs: vec![input(
            "FP64",
            vec![2, 3],
            Some(InferTensorContents {
                fp64_contents: flat(),
                ..Default::default()
            }),
        )],
        ..Default::default()
    }
}

fn predictions(r: &ModelInferResponse) -> Vec<f64> {
    assert_eq!(r.outputs.len(), 1, "{r:?}");
    let out = &r.outputs[0];
    assert_eq!(
        (out.name.as_str(), out.datatype.as_str()),
        ("predictions", "FP64")
    );
    let p = out
        .contents
        .as_ref()
        .expect("contents")
        .fp64_contents
        .clone();
    assert_eq!(out.shape, vec![p.len() as i64]);
    p
}

fn deployment(r: &ModelInferResponse) -> Option<&str> {
    match r.parameters.get("deployment")?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Some(s),
        _ => None,
    }
}

async fn post_json(url: &str, body: &Value) -> Answer {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(&client(), req).await
}

#[tokio::test]
async fn rest_v2_answers_health_metadata_and_the_models_predictions() {
    let (blue, _) = server("blue", &[]);
    let c = client();
    for (path, key) in [("/v2/health/live", "live"), ("/v2/health/ready", "ready")] {
        let a = get(&c, &blue.url(path), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json()[key], true, "{path}");
    }
    let a = get(&c, &blue.url("/v2/models/scorer/ready"), &[]).await;
    assert_eq!(
        (a.status, a.json()["ready"].clone()),
        (StatusCode::OK, json!(true))
    );
    let meta = get(&c, &blue.url("/v2/models/scorer"), &[]).await.json();
    assert_eq!(meta["name"], "scorer");
    assert_eq!(meta["versions"], json!(["v1"]));
    assert_eq!(meta["platform"], "scoregate");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP64", "shape": [-1, -1]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "predictions", "datatype": "FP64", "shape": [-1]}])
    );

    // Nested and flattened data read alike; the answer is the model's formula.
    let want: Vec<f64> = ROWS.iter().map(|r| v1(r)).collect();
    for data in [json!(ROWS), json!(flat())] {
        let a = post_json(
            &blue.url("/v2/models/scorer/infer"),
            &json!({"id": "req-1", "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": data}]}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let j = a.json();
        assert_eq!(j["model_name"], "scorer");
        assert_eq!(j["model_version"], "v1");
        assert_eq!(j["id"], "req-1");
        assert_eq!(j["parameters"]["deployment"], "blue");
        let out = &j["outputs"][0];
        assert_eq!(out["name"], "predictions");
        assert_eq!(out["datatype"], "FP64");
        assert_eq!(out["shape"], json!([2]));
        assert_eq!(out["data"], json!(want));
    }
    // The old /score still answers.
    let a = post_json(&blue.url("/score"), &json!({"data": ROWS})).await;
    assert_eq!(a.json()["predictions"], json!(want));
}

#[tokio::test]
async fn rest_v2_refuses_unknown_models_and_bad_bodies_with_the_reason() {
    let (blue, _) = server("blue", &[]);
    let c = client();
    let a = get(&c, &blue.url("/v2/models/resnet"), &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.json()["error"],
        "model `resnet` is not served here; this server serves `scorer`"
    );
    let ok_body = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]});
    let a = post_json(&blue.url("/v2/models/resnet/infer"), &ok_body).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let cases = [
        (
            json!({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3]}]}),
            "input `input`: shape [2, 3] holds 6 elements but the data has 3",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3]]}]}),
            "input `input`: data[1] has 1 elements where shape [2, 2] wants 2",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, "x"]}]}),
            "input `input`: data[1] is a string; FP64 data must be numbers",
        ),
    ];
    for (body, want) in cases {
        let a = post_json(&blue.url("/v2/models/scorer/infer"), &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(a.json()["error"], want, "{body}");
    }
    let a = post_json(
        &blue.url("/v2/models/scorer/infer"),
        &json!({"data": [[1]]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let e = a.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("missing field `inputs`"), "{e}");
    let a = get(&c, &blue.url("/v2/models/scorer/infer"), &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn grpc_model_infer_gives_the_models_numbers_from_typed_and_raw_contents() {
    let (blue, grpc) = server("blue", &[]);
    let mut c = connect(grpc).await;
    let want: Vec<f64> = ROWS.iter().map(|r| v1(r)).collect();

    let typed = c
        .model_infer(typed_request("t-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(predictions(&typed), want);
    assert_eq!(typed.id, "t-1");
    assert_eq!(typed.model_name, "scorer");
    assert_eq!(typed.model_version, "v1");
    assert_eq!(deployment(&typed), Some("blue"));

    let mut raw = typed_request("r-1");
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![flat().iter().flat_map(|v| v.to_le_bytes()).collect()];
    let raw = c.model_infer(raw).await.unwrap().into_inner();
    assert_eq!(predictions(&raw), want);
    assert_eq!(raw.id, "r-1");

    // FP32 raw, INT64 typed, one row as shape [F].
    let mut fp32 = typed_request("");
    fp32.inputs[0] = input("FP32", vec![3], None);
    fp32.raw_input_contents = vec![
        [1.5f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    ];
    let r = c.model_infer(fp32).await.unwrap().into_inner();
    assert_eq!(predictions(&r), vec![v1(&[1.5, 2.0, 3.0])]);
    let mut int64 = typed_request("");
    int64.inputs[0] = input(
        "INT64",
        vec![1, 2],
        Some(InferTensorContents {
            int64_contents: vec![4, 6],
            ..Default::default()
        }),
    );
    let r = c.model_infer(int64).await.unwrap().into_inner();
    assert_eq!(predictions(&r), vec![6.0]);

    // The same numbers as REST.
    let rest = post_json(
        &blue.url("/v2/models/scorer/infer"),
        &json!({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": flat()}]}),
    )
    .await
    .json();
    assert_eq!(rest["outputs"][0]["data"], json!(predictions(&typed)));
}

#[tokio::test]
async fn grpc_health_and_metadata_calls() {
    let (_blue, grpc) = server("green", &["--model", "v2"]);
    let mut c = connect(grpc).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = c
        .model_ready(ModelReadyRequest {
            name: "scorer".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let m = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (m.name.as_str(), m.version.as_str()),
        ("scoregate", env!("CARGO_PKG_VERSION"))
    );
    let m = c
        .model_metadata(ModelMetadataRequest {
            name: "scorer".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "scorer");
    assert_eq!(m.versions, vec!["v2"]);
    assert_eq!(m.platform, "scoregate");
    assert_eq!(
        (
            m.inputs[0].name.as_str(),
            m.inputs[0].datatype.as_str(),
            m.inputs[0].shape.clone()
        ),
        ("input", "FP64", vec![-1, -1])
    );
    assert_eq!(
        (m.outputs[0].name.as_str(), m.outputs[0].shape.clone()),
        ("predictions", vec![-1])
    );
    let e = c
        .model_metadata(ModelMetadataRequest {
            name: "resnet".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut unknown = typed_request("");
    unknown.model_name = "resnet".into();
    let e = c.model_infer(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "model `resnet` is not served here; this server serves `scorer`"
    );
}

#[tokio::test]
async fn grpc_invalid_input_is_invalid_argument_with_the_reason() {
    let (_blue, grpc) = server("blue", &[]);
    let mut c = connect(grpc).await;
    let mut short = typed_request("");
    short.inputs[0].shape = vec![3, 3];
    let e = c.model_infer(short).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "input `input`: shape [3, 3] holds 9 elements but the data has 6"
    );
    let mut raw = typed_request("");
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![vec![0; 7]];
    let e = c.model_infer(raw).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "raw_input_contents[0] has 7 bytes; shape [2, 3] of FP64 takes 48 (6 elements of 8 bytes)"
    );
    let mut bytes = typed_request("");
    bytes.inputs[0].datatype = "BYTES".into();
    let e = c.model_infer(bytes).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("datatype `BYTES` is not supported"),
        "{e:?}"
    );
    // The connection is still good.
    assert!(c.model_infer(typed_request("")).await.is_ok());
}

#[tokio::test]
async fn grpc_stream_answers_each_request_before_the_client_closes_its_side() {
    let (_blue, grpc) = server("blue", &[]);
    let mut c = connect(grpc).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(typed_request("s-1")).await.unwrap();
    let mut answers = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let want: Vec<f64> = ROWS.iter().map(|r| v1(r)).collect();
    for i in 1..=3 {
        if i > 1 {
            tx.send(typed_request(&format!("s-{i}"))).await.unwrap();
        }
        // The sender is still open: the answer comes while the client's stream goes on.
        let a = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer before the client closed its stream")
            .unwrap()
            .expect("an answer, not the end");
        assert_eq!(a.id, format!("s-{i}"));
        assert_eq!(predictions(&a), want);
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "one answer per request: {end:?}");
}

#[tokio::test]
async fn grpc_injected_failures_are_internal() {
    let (_blue, grpc) = server("blue", &["--error-rate", "1.0"]);
    let mut c = connect(grpc).await;
    let e = c.model_infer(typed_request("")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Internal, "injected failure")
    );
}

/// The first number of the line of `out` that ends in `name` (`OK  123` → 123).
fn count_of(out: &str, name: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
    })
}

#[test]
fn load_grpc_reports_ok_rpcs_and_the_deployment() {
    let (_blue, grpc) = server("blue", &[]);
    let url = format!("http://{grpc}");
    let (code, out, err) = run_cli(&[
        "load",
        "--grpc",
        &url,
        "--duration",
        "1s",
        "--concurrency",
        "8",
        "--connections",
        "2",
        "--pin",
        "blue",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let total: u64 = out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count first: {out}"));
    assert!(total > 10, "{out}");
    assert!(out.contains(&format!("{total} RPCs in ")), "{out}");
    assert!(out.contains(", 0 failed"), "{out}");
    assert_eq!(count_of(&out, "OK"), Some(total), "{out}");
    // Straight from a scoring server: the deployment is the answer's parameter.
    assert_eq!(count_of(&out, "blue"), Some(total), "{out}");
}

#[test]
fn load_grpc_counts_failed_rpcs_by_code_and_exits_1() {
    let (_blue, grpc) = server("blue", &["--error-rate", "1.0"]);
    let (code, out, err) = run_cli(&[
        "load",
        "--grpc",
        &format!("http://{grpc}"),
        "--duration",
        "500ms",
        "--concurrency",
        "2",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(count_of(&out, "INTERNAL").is_some_and(|n| n > 0), "{out}");
    assert_eq!(count_of(&out, "OK"), None, "{out}");
    // The first failed RPCs are named by the request id each one carried.
    let (failed, listed) = load_failures(&out);
    assert_eq!(Some(failed), count_of(&out, "INTERNAL"), "{out}");
    assert!(!listed.is_empty(), "{out}");
    for (id, why) in &listed {
        assert!(is_uuid_v4(id), "{id}: {out}");
        assert_eq!(why, "INTERNAL", "{out}");
    }
    let ids: std::collections::HashSet<_> = listed.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), listed.len(), "an id twice: {out}");
    // Nothing listens: every RPC is UNAVAILABLE.
    let dead = dead_addr();
    let (code, out, _) = run_cli(&[
        "load",
        "--grpc",
        &format!("http://{dead}"),
        "--duration",
        "300ms",
        "--concurrency",
        "1",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        count_of(&out, "UNAVAILABLE").is_some_and(|n| n > 0),
        "{out}"
    );
    let (_, listed) = load_failures(&out);
    assert!(
        listed
            .iter()
            .all(|(id, why)| is_uuid_v4(id) && why == "UNAVAILABLE"),
        "{out}"
    );
}

#[test]
fn load_grpc_refuses_a_rest_url_and_data() {
    let (code, _, err) = run_cli(&[
        "load",
        "--grpc",
        "http://127.0.0.1:9/score",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--grpc takes the server's address without a path"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["load", "--grpc", "http://127.0.0.1:9", "--data", "{}"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run_cli(&["load", "http://127.0.0.1:9", "--connections", "2"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cli(&["load", "--grpc", "http://127.0.0.1:9", "--connections", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("`0` is not a count of 1 or more"), "{err}");
}

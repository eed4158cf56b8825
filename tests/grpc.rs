//! gRPC through the proxy, end to end: real tonic model servers (the Open Inference Protocol's
//! `inference.GRPCInferenceService`) as gRPC instances, the real binary, and a tonic client on
//! one HTTP/2 connection.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use common::*;
use scoregate::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use scoregate::grpc::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use scoregate::grpc::*;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// A model server that names itself in every answer and can be slowed down. A `name` of
/// `deployment/server` also names the server, as the answer's model version.
#[derive(Clone)]
struct Model {
    name: String,
    delay: Duration,
    /// Streams of ModelStreamInfer whose request side has ended (closed or cancelled).
    streams_ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn answer(name: &str, req: &ModelInferRequest) -> ModelInferResponse {
    let (name, server) = name.split_once('/').unwrap_or((name, ""));
    let mut parameters = std::collections::HashMap::new();
    parameters.insert(
        "deployment".to_string(),
        InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(name.into())),
        },
    );
    ModelInferResponse {
        model_name: req.model_name.clone(),
        model_version: server.into(),
        id: req.id.clone(),
        parameters,
        ..Default::default()
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<ModelInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Model {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse::default()))
    }
    async fn model_metadata(
        &self,
        _: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        Err(Status::not_found("no metadata here"))
    }
    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(answer(&self.name, req.get_ref())))
    }
    type ModelStreamInferStream = AnswerStream;
    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let name = self.name.clone();
        let ended = self.streams_ended.clone();
        let mut input = req.into_inner();
        let output = async_stream(move |tx| async move {
            while let Some(Ok(r)) = input.next().await {
                if tx.send(Ok(answer(&name, &r))).await.is_err() {
                    break;
                }
            }
            ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        Ok(Response::new(output))
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> AnswerStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ModelInferResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Starts a model server on a free port; it runs until the test's runtime ends.
async fn model_server(name: &str, delay: Duration) -> SocketAddr {
    let (addr, stop, _) = stoppable_model_server(name, delay).await;
    std::mem::forget(stop);
    addr
}

/// A model server that shuts down gracefully (GOAWAY, calls in flight finish) when the sender
/// is used or dropped.
async fn stoppable_model_server(
    name: &str,
    delay: Duration,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let streams_ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = GrpcInferenceServiceServer::new(Model {
        name: name.into(),
        delay,
        streams_ended: streams_ended.clone(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx, streams_ended)
}

/// What a [`call_loop`] answered, after checking that it failed no call and made over 100.
async fn no_failures(calls: tokio::task::JoinHandle<(Vec<String>, Vec<Status>)>) -> Vec<String> {
    let (answered, failed) = calls.await.expect("calls");
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(answered.len() > 100, "only {} calls", answered.len());
    answered
}

/// Calls ModelInfer in a loop on one connection until `stop`, counting failures and the
/// deployment (or server) that answered each call.
fn call_loop(
    mut c: GrpcInferenceServiceClient<Channel>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<Status>)> {
    tokio::spawn(async move {
        let mut answered = Vec::new();
        let mut failed = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match c.model_infer(infer()).await {
                Ok(resp) => {
                    let by = answered_by(&resp);
                    let server = &resp.get_ref().model_version;
                    answered.push(if server.is_empty() {
                        by
                    } else {
                        format!("{by}/{server}")
                    });
                }
                Err(s) => failed.push(s),
            }
        }
        (answered, failed)
    })
}

/// One client connection to the proxy.
async fn client(proxy: &Proc) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", proxy.addr))
        .await
        .expect("connect to the proxy")
}

fn infer() -> ModelInferRequest {
    ModelInferRequest {
        model_name: "scorer".into(),
        id: "call-1".into(),
        ..Default::default()
    }
}

/// The deployment that answered: the proxy's `x-deployment` metadata, checked against the
/// model server's own word.
fn answered_by(resp: &Response<ModelInferResponse>) -> String {
    let meta = resp
        .metadata()
        .get("x-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let own = match resp.get_ref().parameters.get("deployment") {
        Some(InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(s)),
        }) => s.clone(),
        _ => "unknown".into(),
    };
    assert_eq!(meta, own, "x-deployment says {meta}, the server says {own}");
    meta
}

fn file(blue: SocketAddr, green: SocketAddr, b: u8, g: u8, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{extra}traffic: {{blue: {b}, green: {g}}}\ndeployments:\n  blue:\n    grpc_instances: [{blue}]\n  green:\n    grpc_instances: [{green}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_one_connection_is_routed_on_its_own_and_pinned_by_metadata() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(blue, green, 50, 50, ""));
    let mut c = client(&proxy).await;
    let mut counts = [0usize; 2];
    for _ in 0..400 {
        let resp = c.model_infer(infer()).await.expect("call");
        assert_eq!(resp.get_ref().id, "call-1");
        match answered_by(&resp).as_str() {
            "blue" => counts[0] += 1,
            "green" => counts[1] += 1,
            other => panic!("answered by {other}"),
        }
    }
    // 1 degree of freedom, p = 0.001: 10.83.
    assert!(chi_square(&counts, &[50.0, 50.0]) < 10.83, "{counts:?}");
    // The pin, as gRPC metadata, wins on the same connection; also for a 0% deployment.
    let proxy0 = Proc::proxy(&file(blue, green, 100, 0, ""));
    let mut c0 = client(&proxy0).await;
    for _ in 0..20 {
        let mut req = tonic::Request::new(infer());
        req.metadata_mut()
            .insert("x-api-version", "green".parse().expect("value"));
        let resp = c0.model_infer(req).await.expect("pinned call");
        assert_eq!(answered_by(&resp), "green");
        let resp = c0.model_infer(infer()).await.expect("call");
        assert_eq!(answered_by(&resp), "blue");
    }
    let text = proxy0.metrics().await;
    assert!(
        text.contains("scoregate_grpc_responses_total{deployment=\"green\",grpc_code=\"OK\"} 20"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_answered_in_grpc_with_their_status() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::from_millis(500)).await;
    let rest = Backend::start("rest").await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic: {{blue: 100, green: 0}}\ndeployments:\n  blue:\n    grpc_instances: [{blue}]\n  green:\n    grpc_instances: [{green}]\n    request: {{request_timeout_ms: 2000}}\n  rest-only:\n    instances: [{}]\n  gone:\n    grpc_instances: [{}]\n",
        rest.addr,
        dead_addr()
    );
    let proxy = Proc::proxy(&yaml);
    let mut c = client(&proxy).await;
    let call = |pin: Option<&str>, timeout: Option<Duration>| {
        let mut req = tonic::Request::new(infer());
        if let Some(p) = pin {
            req.metadata_mut()
                .insert("x-api-version", p.parse().expect("value"));
        }
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    };
    let status = c
        .model_infer(call(Some("purple"), None))
        .await
        .expect_err("unknown pin");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("unknown deployment \"purple\""),
        "{}",
        status.message()
    );
    let status = c
        .model_infer(call(Some("rest-only"), None))
        .await
        .expect_err("no grpc_instances");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("rest-only"),
        "{}",
        status.message()
    );
    let status = c
        .model_infer(call(Some("gone"), None))
        .await
        .expect_err("unreachable");
    assert_eq!(status.code(), Code::Unavailable);
    // The client's deadline (grpc-timeout) is shorter than request_timeout_ms: it wins.
    let started = std::time::Instant::now();
    let status = c
        .model_infer(call(Some("green"), Some(Duration::from_millis(150))))
        .await
        .expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(450));
    // The connection still serves: a good call after all of that.
    let resp = c.model_infer(call(None, None)).await.expect("call");
    assert_eq!(answered_by(&resp), "blue");
    // REST on the same listener still goes to REST instances; a REST call to a gRPC-only
    // deployment is refused as not served.
    let http = common::client();
    let a = get(
        &http,
        &proxy.url("/score"),
        &[("x-api-version", "rest-only")],
    )
    .await;
    assert_eq!(a.status, 200);
    let a = get(&http, &proxy.url("/score"), &[("x-api-version", "blue")]).await;
    assert_eq!(a.status, 501, "{:?}", a.body);
    let text = proxy.metrics().await;
    for series in [
        "scoregate_grpc_responses_total{deployment=\"none\",grpc_code=\"INVALID_ARGUMENT\"} 1",
        "scoregate_grpc_responses_total{deployment=\"rest-only\",grpc_code=\"UNIMPLEMENTED\"} 1",
        "scoregate_grpc_responses_total{deployment=\"gone\",grpc_code=\"UNAVAILABLE\"} 1",
        "scoregate_grpc_responses_total{deployment=\"blue\",grpc_code=\"OK\"} 1",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_answers_each_message_before_the_client_closes() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(blue, green, 0, 100, ""));
    let mut c = client(&proxy).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(infer()).await.expect("send");
    let resp = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream");
    assert_eq!(
        resp.metadata()
            .get("x-deployment")
            .and_then(|v| v.to_str().ok()),
        Some("green")
    );
    let mut answers = resp.into_inner();
    for i in 0..5 {
        // The answer to message i arrives while the client's stream is still open.
        let a = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("an answer before the stream ends")
            .expect("a message")
            .expect("ok");
        assert_eq!(a.id, format!("call-{}", i + 1));
        let mut next = infer();
        next.id = format!("call-{}", i + 2);
        tx.send(next).await.expect("send");
    }
    drop(tx);
    let mut rest = 0;
    while let Some(a) = answers.next().await {
        a.expect("ok");
        rest += 1;
    }
    assert_eq!(rest, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_request_over_http2_is_forwarded_over_http1_with_its_host() {
    let blue = Backend::start("blue").await;
    let proxy = Proc::proxy(
        &EndpointFile::new()
            .deployment("blue", &[blue.addr], Some(100))
            .yaml(),
    );
    let mut sender = h2c_sender(proxy.addr).await;
    for _ in 0..3 {
        let req = http::Request::get("http://scoring.example:8080/score")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-deployment"], "blue");
    }
    let seen = blue.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].headers["host"], "scoring.example:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_grpc_load_fail_no_call_and_move_the_split() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(blue, green, 100, 0, ""));
    let path = proxy.config.clone().expect("config path");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = call_loop(client(&proxy).await, stop.clone());
    for i in 0..10 {
        let (b, g) = if i % 2 == 0 { (0, 100) } else { (100, 0) };
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, file(blue, green, b, g, "")).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = no_failures(calls).await;
    // The last file sent everything to blue; both took calls along the way.
    assert_eq!(answered.last().map(String::as_str), Some("blue"));
    assert!(answered.iter().any(|d| d == "green"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_goes_away_fails_no_call() {
    let (first, stop_first, _) =
        stoppable_model_server("blue/first", Duration::from_millis(2)).await;
    let (second, _keep, _) = stoppable_model_server("blue/second", Duration::from_millis(2)).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ntraffic: {{blue: 100}}\ndeployments:\n  blue:\n    grpc_instances: [{first}, {second}]\n"
    );
    let proxy = Proc::proxy(&yaml);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = call_loop(client(&proxy).await, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // GOAWAY from the first instance, whose listener closes: calls in flight finish there,
    // new ones go to the second.
    let _ = stop_first.send(());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = no_failures(calls).await;
    // Both served before; only the second at the end.
    assert!(answered.iter().any(|d| d == "blue/first"));
    let tail = &answered[answered.len() - 50..];
    assert!(tail.iter().all(|d| d == "blue/second"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_mirrored_to_the_shadow_deployments_grpc_instances() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(blue, green, 100, 0, "mirror_traffic: {green: 50}\n"));
    let mut c = client(&proxy).await;
    for _ in 0..200 {
        let resp = c.model_infer(infer()).await.expect("call");
        assert_eq!(answered_by(&resp), "blue");
    }
    // Copies are sent in the background: wait for them to be counted.
    let series = "scoregate_mirror_requests_total{deployment=\"green\",result=\"ok\"}";
    let mut copied = 0.0;
    for _ in 0..50 {
        copied = proxy.metric(series).await;
        if copied >= 60.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 50 % of 200: binomial sd ~7; 60 is 5.7 sd below.
    assert!(copied >= 60.0, "{copied} copies ok");
    let text = proxy.metrics().await;
    assert!(
        !text.contains("scoregate_mirror_requests_total{deployment=\"green\",result=\"error\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_cancels_is_cancelled_upstream() {
    let (blue, _keep, ended) = stoppable_model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(blue, green, 100, 0, ""));
    // A raw HTTP/2 client, to reset the call itself (RST_STREAM CANCEL) mid-stream.
    let (response, mut stream) = raw_call(proxy.addr, "ModelStreamInfer", &[], false).await;
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answer in time")
        .expect("answer");
    assert_eq!(response.headers()["x-deployment"], "blue");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the first answer in time");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The client cancels the call: the proxy cancels the upstream stream, and the model
    // server stops waiting for input at once (not when a timeout fires).
    stream.send_reset(h2::Reason::CANCEL);
    let cancelled = std::time::Instant::now();
    while ended.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            cancelled.elapsed() < Duration::from_secs(2),
            "the upstream stream is still open 2 s after the client cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "upstream stream ended {:?} after the cancel",
        cancelled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_may_pause_longer_than_the_request_timeout() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let yaml = file(blue, green, 100, 0, "").replace(
        &format!("grpc_instances: [{blue}]"),
        &format!("grpc_instances: [{blue}]\n    request: {{request_timeout_ms: 200}}"),
    );
    let proxy = Proc::proxy(&yaml);
    let mut c = client(&proxy).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(infer()).await.expect("send");
    let resp = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream");
    let mut answers = resp.into_inner();
    for i in 0..3 {
        let a = answers.next().await.expect("a message").expect("ok");
        assert_eq!(a.id, format!("call-{}", i + 1));
        // Three times the request timeout between messages.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut next = infer();
        next.id = format!("call-{}", i + 2);
        tx.send(next).await.expect("send");
    }
    drop(tx);
    let last = answers.next().await.expect("the last message").expect("ok");
    assert_eq!(last.id, "call-4");
}

// === The access log of gRPC calls ===

/// Waits up to 5 s for the proxy's `access.log` (beside its endpoint file) to hold a line for
/// each of `ids`, and returns those lines, in the order of `ids`.
async fn logged(proxy: &Proc, ids: &[&str]) -> Vec<serde_json::Value> {
    let path = proxy
        .config
        .as_ref()
        .and_then(|c| c.parent())
        .expect("endpoint file dir")
        .join("access.log");
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let has_all = |all: &[serde_json::Value]| {
        ids.iter()
            .all(|id| all.iter().any(|l| l["request_id"] == *id))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !has_all(&read()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no line for some of {ids:?} in 5 s; {}:\n{:#?}",
            path.display(),
            read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = read();
    ids.iter()
        .map(|id| {
            let mut of_id = all.iter().filter(|l| l["request_id"] == *id);
            let line = of_id.next().expect("waited for").clone();
            assert!(of_id.next().is_none(), "{id} logged twice: {all:#?}");
            line
        })
        .collect()
}

/// A ModelInfer call carrying `x-request-id` (and the pin, when given) as metadata.
fn call_with_id(id: &str, pin: Option<&str>) -> tonic::Request<ModelInferRequest> {
    let mut req = tonic::Request::new(infer());
    req.metadata_mut()
        .insert("x-request-id", id.parse().expect("value"));
    if let Some(p) = pin {
        req.metadata_mut()
            .insert("x-api-version", p.parse().expect("value"));
    }
    req
}

fn metadata_id(meta: &tonic::metadata::MetadataMap) -> Option<&str> {
    meta.get("x-request-id").and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_is_logged_with_its_method_its_grpc_status_and_the_clients_request_id() {
    let blue = model_server("blue", Duration::ZERO).await;
    // The built-in scoring server failing every call with INTERNAL.
    let broken = Proc::score_server(
        "broken",
        &["--grpc-listen", "127.0.0.1:0", "--error-rate", "1.0"],
    );
    let broken_grpc = broken.logged_addr("gRPC scoring server listening");
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\naccess_log: {{path: access.log}}\ntraffic: {{blue: 100}}\ndeployments:\n  blue:\n    grpc_instances: [{blue}]\n  broken:\n    grpc_instances: [{broken_grpc}]\n"
    );
    let proxy = Proc::proxy(&yaml);
    let mut c = client(&proxy).await;

    // Answered: the client's id comes back as metadata.
    let ok = c
        .model_infer(call_with_id("grpc-ok-1", None))
        .await
        .expect("call");
    assert_eq!(answered_by(&ok), "blue");
    assert_eq!(metadata_id(ok.metadata()), Some("grpc-ok-1"));
    // Without an id: one is made and sent back.
    let made = c.model_infer(infer()).await.expect("call");
    let made_id = metadata_id(made.metadata()).expect("a made id").to_string();
    assert!(is_uuid_v4(&made_id), "{made_id:?}");
    // Refused by the proxy: an unknown pin.
    let pin = c
        .model_infer(call_with_id("grpc-bad-pin", Some("purple")))
        .await
        .expect_err("unknown pin");
    assert_eq!(pin.code(), Code::InvalidArgument);
    assert_eq!(metadata_id(pin.metadata()), Some("grpc-bad-pin"));
    // Failed by the instance.
    let failed = c
        .model_infer(call_with_id("grpc-broken-1", Some("broken")))
        .await
        .expect_err("the instance fails every call");
    assert_eq!(failed.code(), Code::Internal);
    assert_eq!(metadata_id(failed.metadata()), Some("grpc-broken-1"));

    let lines = logged(
        &proxy,
        &["grpc-ok-1", &made_id, "grpc-bad-pin", "grpc-broken-1"],
    )
    .await;
    let l = &lines[0];
    assert_eq!(l["type"], "live");
    assert_eq!(l["protocol"], "gRPC");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/inference.GRPCInferenceService/ModelInfer");
    assert_eq!(l["status"], 200);
    assert_eq!(l["grpc_status"], 0);
    assert_eq!(l["deployment"], "blue");
    assert_eq!(l["instance"], blue.to_string());
    assert_eq!(l["route"], "weighted");
    assert_eq!(l["error"], serde_json::Value::Null);
    assert_eq!(l["completed"], true);
    // Length-prefixed messages: 5 bytes of frame header each way, then the message.
    let sent = prost::Message::encoded_len(&infer()) + 5;
    let received = prost::Message::encoded_len(ok.get_ref()) + 5;
    assert_eq!(
        (l["bytes_in"].as_u64(), l["bytes_out"].as_u64()),
        (Some(sent as u64), Some(received as u64)),
        "{l}"
    );

    let m = &lines[1];
    assert_eq!(
        (m["protocol"].as_str(), m["grpc_status"].as_u64()),
        (Some("gRPC"), Some(0))
    );
    assert_eq!(m["deployment"], "blue");

    let p = &lines[2];
    assert_eq!(
        (p["grpc_status"].as_u64(), p["error"].as_str()),
        (Some(3), Some("unknown_pin"))
    );
    assert_eq!(p["protocol"], "gRPC");
    assert_eq!(p["path"], "/inference.GRPCInferenceService/ModelInfer");
    assert_eq!(
        (&p["deployment"], &p["instance"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );

    let b = &lines[3];
    assert_eq!(
        b["grpc_status"], 13,
        "INTERNAL, as the instance answered: {b}"
    );
    assert_eq!(b["deployment"], "broken");
    assert_eq!(b["instance"], broken_grpc.to_string());
    assert_eq!(b["route"], "pinned");
    assert_eq!(
        b["error"],
        serde_json::Value::Null,
        "the instance answered: {b}"
    );
    assert_eq!(b["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_the_proxy_refuses_is_logged_with_the_http_status_it_was_sent() {
    let blue = model_server("blue", Duration::ZERO).await;
    let green = model_server("green", Duration::ZERO).await;
    let proxy = Proc::proxy(&file(
        blue,
        green,
        100,
        0,
        "access_log: {path: access.log}\n",
    ));
    // A raw HTTP/2 client, to see the answer's HTTP status.
    let headers = [("x-api-version", "purple"), ("x-request-id", "raw-bad-pin")];
    let (response, _stream) = raw_call(proxy.addr, "ModelInfer", &headers, true).await;
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answer in time")
        .expect("answer");
    // A trailers-only gRPC answer: HTTP 200 with the gRPC status in its headers.
    assert_eq!(response.headers()["grpc-status"], "3");
    assert_eq!(response.headers()["x-request-id"], "raw-bad-pin");
    let sent = response.status().as_u16();
    assert_eq!(sent, 200);
    let l = &logged(&proxy, &["raw-bad-pin"]).await[0];
    assert_eq!(
        (l["grpc_status"].as_u64(), l["error"].as_str()),
        (Some(3), Some("unknown_pin"))
    );
    assert_eq!(
        l["status"].as_u64(),
        Some(u64::from(sent)),
        "the log names the HTTP status the client got: {l}"
    );
}

/// A call of `method` of the inference service from a raw HTTP/2 client (to reset it, or to
/// see the answer's HTTP status), with `headers` and one request message; `end`: the message
/// ends the request. The answer's head and the request stream.
async fn raw_call(
    addr: std::net::SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (h2c, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.expect("ready");
    let mut req = http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let (response, mut stream) = h2c.send_request(req, false).expect("open the call");
    let msg = prost::Message::encode_to_vec(&infer());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    stream
        .send_data(bytes::Bytes::from(frame), end)
        .expect("send a message");
    (response, stream)
}

//! Layer 6 (tools): `scoregate load`, a small sustained load generator for an endpoint. Keep-alive clients send
//! requests for a duration and the report gives throughput, latency percentiles, status codes
//! and the split per deployment (from `x-deployment`), with a progress line every second.
//! Beside the data path: it is a client of it.
//!
//! With `--grpc` it sends the Open Inference Protocol's `ModelInfer` RPCs instead (tonic,
//! HTTP/2): the RPCs in flight share `--connections` connections, the status is the gRPC
//! code's name, and the deployment is the answer's `x-deployment` metadata, or, straight from
//! a scoring server, the answer's `deployment` parameter.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::grpc::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::infer_parameter::ParameterChoice;
use crate::grpc::model_infer_request::InferInputTensor;
use crate::grpc::{InferTensorContents, ModelInferRequest, ModelInferResponse};

/// What `load` sends.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) url: String,
    /// How long. Default 10 s.
    pub(crate) duration: Duration,
    /// Requests in flight at once: REST clients, each on its own keep-alive connection, or
    /// gRPC calls. Default 8.
    pub(crate) concurrency: usize,
    /// Extra request headers (a pin, a sticky key, a key); gRPC metadata with `grpc`.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// A POST body (JSON); GET without it. REST only.
    pub(crate) body: Option<Bytes>,
    /// `ModelInfer` RPCs instead of REST requests.
    pub(crate) grpc: bool,
    /// gRPC: HTTP/2 connections the calls share. Default 1.
    pub(crate) connections: usize,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    by_deployment: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    failed: u64,
}

impl Tally {
    fn record(&mut self, started: Instant, status: String, deployment: String, ok: bool) {
        self.latencies_us.push(started.elapsed().as_micros() as u64);
        *self.by_deployment.entry(deployment).or_default() += 1;
        *self.by_status.entry(status).or_default() += 1;
        if !ok {
            self.failed += 1;
        }
    }

    fn add(&mut self, t: Tally) {
        self.latencies_us.extend(t.latencies_us);
        for (k, v) in t.by_deployment {
            *self.by_deployment.entry(k).or_default() += v;
        }
        for (k, v) in t.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        self.failed += t.failed;
    }
}

/// When the workers stop, and how many requests they have made.
#[derive(Clone, Default)]
struct Progress {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
}

/// The outcome of a load run.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) failed: u64,
    pub(crate) text: String,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Runs the load and returns the report (also printing progress on stderr).
pub(crate) async fn run(opts: Options) -> Result<Report, String> {
    let progress = Progress::default();
    let started = Instant::now();
    let (tasks, unit, rate) = if opts.grpc {
        (grpc_workers(&opts, &progress)?, "RPCs", "RPC/s")
    } else {
        (rest_workers(&opts, &progress)?, "requests", "req/s")
    };
    let tty = std::io::stderr().is_terminal();
    let mut last = 0;
    while started.elapsed() < opts.duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(opts.duration.saturating_sub(started.elapsed())),
        )
        .await;
        let now = progress.done.load(Ordering::Relaxed);
        let line = format!(
            "{:>5.1} s  {:>8} {unit:<8}  {:>8} {rate}",
            started.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
    progress.stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        all.add(t.await.map_err(|e| e.to_string())?);
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len() as u64;
    let failed = all.failed;
    let mut text = format!(
        "{n} {unit} in {:.1} s: {:.0} {rate}, {failed} failed\nlatency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n\n",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&all.latencies_us, 0.5),
        percentile(&all.latencies_us, 0.9),
        percentile(&all.latencies_us, 0.99),
        percentile(&all.latencies_us, 1.0),
    );
    text.push_str(&format!(
        "{:<20} {:>9} {:>7}\n",
        "deployment", unit, "share"
    ));
    for (d, c) in &all.by_deployment {
        text.push_str(&format!(
            "{d:<20} {c:>9} {:>6.1}%\n",
            100.0 * *c as f64 / n.max(1) as f64
        ));
    }
    text.push_str(&format!("\n{:<20} {:>9}\n", "status", unit));
    for (s, c) in &all.by_status {
        text.push_str(&format!("{s:<20} {c:>9}\n"));
    }
    let _ = std::io::stderr().flush();
    Ok(Report { failed, text })
}

/// REST: `concurrency` clients, each sending one request after another.
fn rest_workers(opts: &Options, progress: &Progress) -> Result<Vec<JoinHandle<Tally>>, String> {
    let uri: http::Uri = opts
        .url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", opts.url))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{}`: only http:// URLs are supported", opts.url));
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tasks = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, uri, progress, opts) =
            (client.clone(), uri.clone(), progress.clone(), opts.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !progress.stop.load(Ordering::Relaxed) {
                let mut b = Request::builder()
                    .method(if opts.body.is_some() {
                        Method::POST
                    } else {
                        Method::GET
                    })
                    .uri(uri.clone());
                for (k, v) in &opts.headers {
                    b = b.header(k, v);
                }
                if opts.body.is_some() {
                    b = b.header(http::header::CONTENT_TYPE, "application/json");
                }
                let Ok(req) = b.body(Full::new(opts.body.clone().unwrap_or_default())) else {
                    break;
                };
                let t0 = Instant::now();
                let (status, dep) = match client.request(req).await {
                    Ok(resp) => {
                        let dep = resp
                            .headers()
                            .get("x-deployment")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(none)")
                            .to_string();
                        let status = resp.status().as_u16().to_string();
                        match resp.into_body().collect().await {
                            Ok(_) => (status, dep),
                            Err(_) => ("broken body".to_string(), dep),
                        }
                    }
                    Err(_) => ("connection error".to_string(), "(none)".to_string()),
                };
                let ok = status.starts_with('2');
                t.record(t0, status, dep, ok);
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            t
        }));
    }
    Ok(tasks)
}

/// The features of every gRPC request: one row, 1.0 to 10.0.
const FEATURES: usize = 10;

/// The one `ModelInfer` request the gRPC load sends.
fn infer_request() -> ModelInferRequest {
    ModelInferRequest {
        model_name: crate::scoring::MODEL_NAME.to_string(),
        inputs: vec![InferInputTensor {
            name: "input".to_string(),
            datatype: "FP64".to_string(),
            shape: vec![1, FEATURES as i64],
            contents: Some(InferTensorContents {
                fp64_contents: (1..=FEATURES).map(|i| i as f64).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// gRPC: `concurrency` calls in flight over `connections` HTTP/2 connections (call `i` on
/// connection `i % connections`). Connections are made on first use and remade when lost; a
/// server that cannot be reached answers each call with UNAVAILABLE.
fn grpc_workers(opts: &Options, progress: &Progress) -> Result<Vec<JoinHandle<Tally>>, String> {
    let uri: http::Uri = opts
        .url
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", opts.url))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "`{}`: --grpc takes an http:// server address, like http://127.0.0.1:8080",
            opts.url
        ));
    }
    if !matches!(
        uri.path_and_query().map(|p| p.as_str()),
        None | Some("" | "/")
    ) {
        return Err(format!(
            "`{}`: --grpc takes the server's address without a path, like http://127.0.0.1:8080 \
             (the RPC names its own path)",
            opts.url
        ));
    }
    let endpoint = tonic::transport::Endpoint::from(uri).tcp_nodelay(true);
    let channels: Vec<_> = (0..opts.connections.max(1))
        .map(|_| endpoint.connect_lazy())
        .collect();
    let metadata = tonic::metadata::MetadataMap::from_headers(
        opts.headers.iter().cloned().collect::<http::HeaderMap>(),
    );
    let message = infer_request();
    let mut tasks = Vec::new();
    for i in 0..opts.concurrency.max(1) {
        let mut client = GrpcInferenceServiceClient::new(channels[i % channels.len()].clone());
        let (progress, metadata, message) = (progress.clone(), metadata.clone(), message.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while !progress.stop.load(Ordering::Relaxed) {
                let mut req = tonic::Request::new(message.clone());
                *req.metadata_mut() = metadata.clone();
                let t0 = Instant::now();
                let (status, dep) = match client.model_infer(req).await {
                    Ok(resp) => {
                        let dep = deployment_of(resp.metadata())
                            .or_else(|| parameter(resp.get_ref()))
                            .unwrap_or_else(|| "(none)".to_string());
                        (tonic::Code::Ok, dep)
                    }
                    Err(status) => (
                        status.code(),
                        deployment_of(status.metadata()).unwrap_or_else(|| "(none)".to_string()),
                    ),
                };
                t.record(
                    t0,
                    code_name(status).to_string(),
                    dep,
                    status == tonic::Code::Ok,
                );
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
            t
        }));
    }
    Ok(tasks)
}

/// The `x-deployment` metadata the proxy sets.
fn deployment_of(m: &tonic::metadata::MetadataMap) -> Option<String> {
    m.get("x-deployment")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The answer's `deployment` parameter, which the built-in scoring server sets.
fn parameter(r: &ModelInferResponse) -> Option<String> {
    match r.parameters.get("deployment")?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Some(s.clone()),
        _ => None,
    }
}

/// A gRPC status code by its name in the protocol, like `UNAVAILABLE`.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_their_protocol_names() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::from_i32(16)), "UNAUTHENTICATED");
    }

    #[test]
    fn the_grpc_request_is_one_row_of_ten_features() {
        let r = infer_request();
        assert_eq!(r.model_name, "scorer");
        assert_eq!(r.inputs[0].shape, vec![1, 10]);
        let c = r.inputs[0].contents.as_ref().map(|c| c.fp64_contents.len());
        assert_eq!(c, Some(10));
    }

    fn opts(url: &str) -> Options {
        Options {
            url: url.to_string(),
            duration: Duration::from_millis(10),
            concurrency: 1,
            headers: Vec::new(),
            body: None,
            grpc: true,
            connections: 1,
        }
    }

    #[tokio::test]
    async fn a_grpc_url_is_a_server_address() {
        let p = Progress::default();
        // Workers that are started stop at once.
        p.stop.store(true, Ordering::Relaxed);
        for bad in [
            "127.0.0.1:8080",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8080/score",
        ] {
            let e = grpc_workers(&opts(bad), &p).err();
            assert!(e.is_some_and(|e| e.contains("--grpc takes")), "{bad}");
        }
        assert!(grpc_workers(&opts("http://127.0.0.1:8080/"), &p).is_ok());
    }
}

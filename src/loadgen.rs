//! Layer 6 (tools): `scoregate load`, a small sustained load generator for an endpoint. Keep-alive clients send
//! requests for a duration and the report gives throughput, latency percentiles, status codes
//! and the split per deployment (from `x-deployment`), with a progress line every second.
//! Beside the data path: it is a client of it.
//!
//! Every request carries its own `x-request-id` (a UUIDv4; gRPC metadata with `--grpc`), which
//! the proxy keeps: the report lists the ids of the first failed requests, with why each
//! failed and which deployment answered, so that they can be found in the access log.
//!
//! With `--grpc` it sends the Open Inference Protocol's `ModelInfer` RPCs instead (tonic,
//! HTTP/2): the RPCs in flight share `--connections` connections, the status is the gRPC
//! code's name, and the deployment is the answer's `x-deployment` metadata, or, straight from
//! a scoring server, the answer's `deployment` parameter.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

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

/// The request id header (and gRPC metadata key) every request carries.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How many failed requests a report names.
pub(crate) const FAILURES_LISTED: usize = 20;

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

/// One failed request of a load run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// When it was sent.
    pub(crate) sent: SystemTime,
    /// Its `x-request-id`: the one the answer echoed, else the one sent.
    pub(crate) request_id: String,
    /// Why it failed: the HTTP status (`503`), the gRPC code's name (`UNAVAILABLE`), or what
    /// went wrong on the connection.
    pub(crate) why: String,
    /// The deployment that answered, when the answer said.
    pub(crate) deployment: Option<String>,
}

/// What a request came back with.
struct Outcome {
    /// The status column of the report.
    status: String,
    /// The deployment column of the report (`(none)` when the answer did not say).
    deployment: String,
    ok: bool,
    /// Why it failed, when it did and `status` does not say it all (a connection error).
    detail: Option<String>,
    /// The `x-request-id` the answer echoed.
    echoed: Option<String>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    by_deployment: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    failed: u64,
    /// The first [`FAILURES_LISTED`] failed requests.
    failures: Vec<Failure>,
}

impl Tally {
    fn record(&mut self, started: (Instant, SystemTime), request_id: &HeaderValue, o: Outcome) {
        self.latencies_us
            .push(started.0.elapsed().as_micros() as u64);
        if !o.ok {
            self.failed += 1;
            if self.failures.len() < FAILURES_LISTED {
                let deployment = (o.deployment != NONE).then(|| o.deployment.clone());
                self.failures.push(Failure {
                    sent: started.1,
                    request_id: o.echoed.unwrap_or_else(|| {
                        String::from_utf8_lossy(request_id.as_bytes()).into_owned()
                    }),
                    why: o.detail.unwrap_or_else(|| o.status.clone()),
                    deployment,
                });
            }
        }
        *self.by_deployment.entry(o.deployment).or_default() += 1;
        *self.by_status.entry(o.status).or_default() += 1;
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
        // Each worker kept its first failures, so the first of all are among them.
        self.failures.extend(t.failures);
        self.failures.sort_by_key(|f| f.sent);
        self.failures.truncate(FAILURES_LISTED);
    }
}

/// The deployment column of an answer that did not name one.
const NONE: &str = "(none)";

/// The report's list of failed requests (`failed` in all, `list` the first of them), or
/// nothing without failures.
fn failures_text(failed: u64, list: &[Failure]) -> String {
    if failed == 0 {
        return String::new();
    }
    let mut text = format!(
        "\nfailed requests (first {} of {failed}; find them in the access log by request_id):\n",
        list.len()
    );
    for f in list {
        text.push_str(&format!("  {}  {}", f.request_id, f.why));
        if let Some(d) = &f.deployment {
            text.push_str(&format!("  {d}"));
        }
        text.push('\n');
    }
    text
}

/// The `x-request-id` an answer carries.
fn echoed(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
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
    /// Requests that failed (REST: not 2xx, or no whole answer; gRPC: not OK).
    pub(crate) failed: u64,
    /// The first [`FAILURES_LISTED`] of them, in the order they were sent.
    #[allow(dead_code)] // For a caller that drives load and names its failures (tests do).
    pub(crate) failures: Vec<Failure>,
    /// The report to print.
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
    text.push_str(&failures_text(failed, &all.failures));
    let _ = std::io::stderr().flush();
    Ok(Report {
        failed,
        failures: all.failures,
        text,
    })
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
                let Ok(mut req) = b.body(Full::new(opts.body.clone().unwrap_or_default())) else {
                    break;
                };
                // Its own id, in place of any given with -H.
                let id = crate::telemetry::new_request_id(&mut rand::rng());
                req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
                let t0 = (Instant::now(), SystemTime::now());
                let outcome = match client.request(req).await {
                    Ok(resp) => {
                        let deployment = resp
                            .headers()
                            .get("x-deployment")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(NONE)
                            .to_string();
                        let ok = resp.status().is_success();
                        // Only a failure's id is kept.
                        let echoed = (!ok).then(|| echoed(resp.headers())).flatten();
                        let code = resp.status().as_u16().to_string();
                        let (status, detail) = match resp.into_body().collect().await {
                            Ok(_) => (code, None),
                            Err(_) => (
                                "broken body".to_string(),
                                Some(format!("{code} (broken body)")),
                            ),
                        };
                        Outcome {
                            ok: status.starts_with('2'),
                            status,
                            deployment,
                            detail,
                            echoed,
                        }
                    }
                    Err(e) => Outcome {
                        status: "connection error".to_string(),
                        deployment: NONE.to_string(),
                        ok: false,
                        detail: Some(format!("connection error: {}", crate::error::describe(&e))),
                        echoed: None,
                    },
                };
                t.record(t0, &id, outcome);
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
                // Its own id, in place of any given with -H.
                let id = crate::telemetry::new_request_id(&mut rand::rng());
                if let Ok(v) = tonic::metadata::MetadataValue::try_from(id.as_bytes()) {
                    req.metadata_mut().insert(X_REQUEST_ID.as_str(), v);
                }
                let t0 = (Instant::now(), SystemTime::now());
                let (code, dep, echoed) = match client.model_infer(req).await {
                    Ok(resp) => {
                        let dep =
                            deployment_of(resp.metadata()).or_else(|| parameter(resp.get_ref()));
                        // Only a failure's id is kept.
                        (tonic::Code::Ok, dep, None)
                    }
                    Err(status) => (
                        status.code(),
                        deployment_of(status.metadata()),
                        echoed(status.metadata().as_ref()),
                    ),
                };
                t.record(
                    t0,
                    &id,
                    Outcome {
                        status: code_name(code).to_string(),
                        deployment: dep.unwrap_or_else(|| NONE.to_string()),
                        ok: code == tonic::Code::Ok,
                        detail: None,
                        echoed,
                    },
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

    fn failure(i: u64, why: &str, deployment: Option<&str>) -> Failure {
        Failure {
            sent: SystemTime::UNIX_EPOCH + Duration::from_secs(i),
            request_id: format!("id-{i}"),
            why: why.to_string(),
            deployment: deployment.map(str::to_string),
        }
    }

    #[test]
    fn the_report_lists_failed_requests_only_when_there_are_some() {
        assert_eq!(failures_text(0, &[]), "");
        let list = [
            failure(1, "503", Some("green")),
            failure(2, "connection error: connection refused", None),
        ];
        assert_eq!(
            failures_text(37, &list),
            "\nfailed requests (first 2 of 37; find them in the access log by request_id):\n  \
             id-1  503  green\n  id-2  connection error: connection refused\n"
        );
    }

    fn outcome(status: &str, deployment: &str, echoed: Option<&str>) -> Outcome {
        Outcome {
            status: status.to_string(),
            deployment: deployment.to_string(),
            ok: status.starts_with('2'),
            detail: None,
            echoed: echoed.map(str::to_string),
        }
    }

    #[test]
    fn a_tally_keeps_the_first_failures_of_all_workers_and_counts_the_rest() {
        let sent = HeaderValue::from_static("sent-id");
        let at = |i: u64| {
            (
                Instant::now(),
                SystemTime::UNIX_EPOCH + Duration::from_secs(i),
            )
        };
        let mut a = Tally::default();
        let mut b = Tally::default();
        for i in 0..50 {
            // Worker a fails on even seconds, worker b on odd ones.
            let (t, id) = if i % 2 == 0 {
                (&mut a, "a")
            } else {
                (&mut b, "b")
            };
            t.record(at(i), &sent, outcome("200", "blue", None));
            t.record(
                at(i),
                &sent,
                outcome("503", "green", Some(&format!("{id}-{i}"))),
            );
        }
        a.record(at(100), &sent, outcome("500", NONE, None));
        assert_eq!((a.failed, a.failures.len()), (26, FAILURES_LISTED));
        let mut all = Tally::default();
        all.add(b);
        all.add(a);
        assert_eq!(all.failed, 51);
        let ids: Vec<&str> = all.failures.iter().map(|f| f.request_id.as_str()).collect();
        let want: Vec<String> = (0..20)
            .map(|i| format!("{}-{i}", if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(all.failures[0].why, "503");
        assert_eq!(all.failures[0].deployment.as_deref(), Some("green"));
        assert_eq!(all.by_status.get("503"), Some(&50));
        // Without an echo the id sent is kept, and `(none)` is no deployment.
        let mut t = Tally::default();
        t.record(at(0), &sent, outcome("500", NONE, None));
        assert_eq!(t.failures[0].request_id, "sent-id");
        assert_eq!(t.failures[0].deployment, None);
    }

    /// A server on 127.0.0.1 answering every request with `status`, `x-deployment: green` and,
    /// with `echo`, an `x-request-id`: that text, or the request's when empty. It sends the
    /// request id of each request it sees on the channel (`N ids` when there were N != 1).
    async fn server(
        status: u16,
        echo: Option<&'static str>,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = req.headers().get_all("x-request-id").iter().count();
                    let got = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(if n == 1 {
                        got.clone()
                    } else {
                        format!("{n} ids")
                    });
                    let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    r.headers_mut()
                        .insert("x-deployment", HeaderValue::from_static("green"));
                    if let Some(e) = echo {
                        let v = if e.is_empty() { got } else { e.to_string() };
                        r.headers_mut()
                            .insert("x-request-id", HeaderValue::from_str(&v).unwrap());
                    }
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (addr, rx)
    }

    fn is_uuid_v4(s: &str) -> bool {
        s.len() == 36
            && s.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                14 => c == '4',
                _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
            })
    }

    fn rest(url: String) -> Options {
        Options {
            url,
            duration: Duration::from_millis(300),
            concurrency: 2,
            // An id given with -H is replaced by each request's own.
            headers: vec![(X_REQUEST_ID.clone(), HeaderValue::from_static("fixed"))],
            body: None,
            grpc: false,
            connections: 1,
        }
    }

    #[tokio::test]
    async fn every_rest_request_has_its_own_id_and_failures_are_listed() {
        let (addr, mut seen) = server(503, None).await;
        let report = run(rest(format!("http://{addr}/score"))).await.unwrap();
        assert!(report.failed > 0);
        let mut ids = std::collections::HashSet::new();
        while let Ok(id) = seen.try_recv() {
            assert!(is_uuid_v4(&id), "{id}");
            assert!(ids.insert(id), "an id sent twice");
        }
        assert_eq!(ids.len() as u64, report.failed);
        assert_eq!(
            report.failures.len() as u64,
            report.failed.min(FAILURES_LISTED as u64)
        );
        for f in &report.failures {
            assert!(ids.contains(&f.request_id), "{f:?}");
            assert_eq!(
                (f.why.as_str(), f.deployment.as_deref()),
                ("503", Some("green"))
            );
        }
        assert!(
            report.text.contains(&format!(
                "failed requests (first {} of {}; find them in the access log by request_id):\n  {}  503  green\n",
                report.failures.len(),
                report.failed,
                report.failures[0].request_id
            )),
            "{}",
            report.text
        );
    }

    #[tokio::test]
    async fn an_echoed_id_is_the_one_listed_and_successes_list_nothing() {
        let (addr, _seen) = server(500, Some("echoed-id")).await;
        let report = run(rest(format!("http://{addr}/"))).await.unwrap();
        assert!(report.failures.iter().all(|f| f.request_id == "echoed-id"));
        let (addr, _seen) = server(200, Some("")).await;
        let report = run(rest(format!("http://{addr}/"))).await.unwrap();
        assert_eq!((report.failed, report.failures.len()), (0, 0));
        assert!(!report.text.contains("failed requests"), "{}", report.text);
    }

    #[tokio::test]
    async fn a_request_that_cannot_connect_is_listed_with_why() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let mut o = rest(format!("http://{addr}/"));
        o.concurrency = 1;
        o.duration = Duration::from_millis(100);
        let report = run(o).await.unwrap();
        assert!(report.failed > 0);
        let f = &report.failures[0];
        assert!(is_uuid_v4(&f.request_id), "{f:?}");
        assert!(f.why.starts_with("connection error: "), "{f:?}");
        assert_eq!(f.deployment, None);
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

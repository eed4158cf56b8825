//! Layer 0 (values): the span exporter — each `Record` handed to it becomes one OTLP span
//! (OpenTelemetry semantic conventions, plus `scoregate.*` attributes), sent in batches to a
//! collector over OTLP/gRPC by one background task. The request path only queues: a full
//! queue or a failed export drops spans and counts them; nothing waits on the collector.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::{Channel, Endpoint};

use super::record::{Kind, Protocol, Record};
use crate::metrics::TelemetryMetrics;

/// Records waiting for the exporter task; one more is dropped (`queue_full`).
const QUEUE: usize = 4096;
/// Spans in one export request at most.
const BATCH: usize = 512;
/// A partial batch is sent this long after the last send at the latest.
const EVERY: Duration = Duration::from_secs(1);
/// Opening the connection to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One export request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about failed exports this often.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// The resource's `service.name` and the instrumentation scope's name.
const SERVICE: &str = "scoregate";
/// Longest value taken from what a client sent (the path, the request id): a request head may
/// be 64 KiB, and 512 spans of that would pass a collector's usual 4 MiB message limit, which
/// refuses the whole batch.
const MAX_CLIENT_VALUE: usize = 512;

/// Why an exporter could not start. The message names the endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// Not a URI, or one without a host.
    #[error("OTLP endpoint `{endpoint}` is not a valid URI: {reason}")]
    Invalid { endpoint: String, reason: String },
    /// `https://`: TLS to the collector is not built in yet.
    #[error(
        "OTLP endpoint `{endpoint}`: https is not supported yet; use http:// (a collector on this host or a sidecar)"
    )]
    Https { endpoint: String },
    /// No scheme, or one other than `http`.
    #[error("OTLP endpoint `{endpoint}` must start with http://, like http://127.0.0.1:4317")]
    Scheme { endpoint: String },
    /// A path or query after the authority (OTLP/gRPC's path is the service's).
    #[error(
        "OTLP endpoint `{endpoint}` has a path; OTLP/gRPC takes none (`/v1/traces` is OTLP/HTTP, which is not supported)"
    )]
    Path { endpoint: String },
    /// `start` was called outside a tokio runtime.
    #[error("OTLP endpoint `{endpoint}`: the exporter must be started inside a tokio runtime")]
    NoRuntime { endpoint: String },
}

/// The queue and batching sizes (tests shrink or stretch them).
#[derive(Debug, Clone, Copy)]
struct Settings {
    queue: usize,
    batch: usize,
    every: Duration,
}

const DEFAULTS: Settings = Settings {
    queue: QUEUE,
    batch: BATCH,
    every: EVERY,
};

/// The handle the request path exports through: a bounded queue (4096 records) into one task
/// that sends batches of up to 512 spans, or what it has every second, to the collector
/// (connect timeout 2 s, request timeout 5 s, no retry). Cheap to clone. When the last clone
/// is dropped the task sends what is still queued and ends, so a reload that replaces the
/// exporter loses no span while the collector is up.
#[derive(Clone)]
pub(crate) struct Exporter {
    queue: mpsc::Sender<Arc<Record>>,
    endpoint: Arc<str>,
    dropped_queue_full: IntCounter,
    dropped_export_failed: IntCounter,
    /// Becomes true when the task has sent its last batch and ended (read by `shutdown`).
    #[cfg_attr(not(test), allow(dead_code))]
    done: watch::Receiver<bool>,
    /// Asks the task to send what it holds now (answered when sent).
    flushes: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

// === impl Exporter ===

impl Exporter {
    /// Starts the exporter task for `endpoint` (`http://host:port`, OTLP/gRPC, e.g.
    /// `http://127.0.0.1:4317`). https, a path, or another scheme are refused. Must be called
    /// inside a tokio runtime (an error otherwise). Connects lazily, on the first batch: a
    /// collector that is down costs nothing but dropped spans, counted in
    /// `metrics.spans_dropped_export_failed`.
    pub(crate) fn start(
        endpoint: &str,
        metrics: TelemetryMetrics,
    ) -> Result<Exporter, ExportError> {
        Exporter::start_with(endpoint, metrics, DEFAULTS)
    }

    fn start_with(
        endpoint: &str,
        metrics: TelemetryMetrics,
        settings: Settings,
    ) -> Result<Exporter, ExportError> {
        let channel = channel(endpoint)?;
        let (queue, rx) = mpsc::channel(settings.queue);
        let (done_tx, done) = watch::channel(false);
        let (flushes, flush_rx) = mpsc::channel(4);
        let exporter = Exporter {
            flushes,
            queue,
            endpoint: Arc::from(endpoint),
            dropped_queue_full: metrics.spans_dropped_queue_full.clone(),
            dropped_export_failed: metrics.spans_dropped_export_failed.clone(),
            done,
        };
        let sink = Sink {
            client: TraceServiceClient::new(channel),
            resource: resource(),
            scope: InstrumentationScope {
                name: SERVICE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            endpoint: exporter.endpoint.clone(),
            metrics,
            warned: None,
            unreported: 0,
        };
        tokio::spawn(async move {
            run(rx, flush_rx, sink, settings).await;
            // The receivers may all be gone; nobody is waiting then.
            let _ = done_tx.send(true);
        });
        Ok(exporter)
    }

    /// Queues `record` for export. Never waits and takes no lock; when the queue (4096
    /// records) is full the record is dropped and counted in `spans_dropped_queue_full`.
    pub(crate) fn export(&self, record: Arc<Record>) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped_queue_full.inc(),
            // The task is gone (its runtime is shutting down): the span will not be sent.
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped_export_failed.inc(),
        }
    }

    /// The collector's endpoint, as given to `start`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends what is queued now, without waiting for the batch timer, and waits for it to go
    /// out, for `grace` at most (at process exit, when other handles may still be held). True
    /// when it went out.
    pub(crate) async fn flush(&self, grace: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.flushes.try_send(tx).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(grace, rx).await, Ok(Ok(())))
    }

    /// Drops this handle and waits, for `grace` at most, until the task has sent what was
    /// queued and ended (which needs every clone dropped). True when it has. For a process
    /// that exits: dropping alone lets the runtime's end cut the last batch off.
    #[cfg(test)]
    pub(crate) async fn shutdown(self, grace: Duration) -> bool {
        let Exporter {
            queue, mut done, ..
        } = self;
        drop(queue);
        // An error means the task ended without saying so (it panicked): done all the same.
        tokio::time::timeout(grace, done.wait_for(|d| *d))
            .await
            .is_ok()
    }
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A lazily connecting channel to `endpoint`, after checking it is `http://host[:port][/]`.
fn channel(endpoint: &str) -> Result<Channel, ExportError> {
    let owned = || endpoint.to_owned();
    let uri: http::Uri =
        endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| ExportError::Invalid {
                endpoint: owned(),
                reason: e.to_string(),
            })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(ExportError::Https { endpoint: owned() }),
        _ => return Err(ExportError::Scheme { endpoint: owned() }),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ExportError::Invalid {
            endpoint: owned(),
            reason: "it names no host".to_owned(),
        });
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ExportError::Path { endpoint: owned() });
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ExportError::NoRuntime { endpoint: owned() });
    }
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// `service.name` and `service.version`.
fn resource() -> Resource {
    Resource {
        attributes: vec![
            string("service.name", SERVICE),
            string("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    }
}

/// The task: batches of up to `batch` records, sent when full or `every` after the last
/// send; when every sender is gone, the rest is sent and the task ends.
async fn run(
    mut queue: mpsc::Receiver<Arc<Record>>,
    mut flushes: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    mut sink: Sink,
    settings: Settings,
) {
    let mut batch: Vec<Arc<Record>> = Vec::with_capacity(settings.batch);
    let mut tick = tokio::time::interval_at(Instant::now() + settings.every, settings.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // `batch.len() < settings.batch` here, so the limit is never 0 (which would read 0
        // records without the queue being closed).
        let room = settings.batch - batch.len();
        tokio::select! {
            n = queue.recv_many(&mut batch, room) => {
                if n == 0 {
                    // Closed and empty.
                    break;
                }
                if batch.len() >= settings.batch {
                    sink.send(&mut batch).await;
                    tick.reset();
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    sink.send(&mut batch).await;
                }
            }
            Some(reply) = flushes.recv() => {
                while let Ok(r) = queue.try_recv() {
                    batch.push(r);
                    if batch.len() >= settings.batch {
                        sink.send(&mut batch).await;
                    }
                }
                if !batch.is_empty() {
                    sink.send(&mut batch).await;
                }
                let _ = reply.send(());
            }
        }
    }
    if !batch.is_empty() {
        sink.send(&mut batch).await;
    }
}

/// Where batches go: the client, what every request repeats, the counters, and the warning's
/// pace.
struct Sink {
    client: TraceServiceClient<Channel>,
    resource: Resource,
    scope: InstrumentationScope,
    endpoint: Arc<str>,
    metrics: TelemetryMetrics,
    /// When the last warning was logged.
    warned: Option<Instant>,
    /// Spans dropped since then.
    unreported: u64,
}

impl Sink {
    /// Sends `batch` (emptying it) in one request and counts the outcome.
    async fn send(&mut self, batch: &mut Vec<Arc<Record>>) {
        let n = batch.len() as u64;
        let spans = batch.drain(..).map(|r| span(&r)).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match self.client.export(request).await {
            Ok(response) => {
                let partial = response.into_inner().partial_success;
                let rejected = partial
                    .as_ref()
                    .map_or(0, |p| p.rejected_spans.clamp(0, n as i64) as u64);
                self.metrics.spans_exported.inc_by(n - rejected);
                if rejected > 0 {
                    self.metrics.spans_dropped_export_failed.inc_by(rejected);
                    let message = partial.map(|p| p.error_message).unwrap_or_default();
                    self.dropped(
                        rejected,
                        &format_args!("the collector rejected {rejected} of {n} spans: {message}"),
                    );
                }
            }
            Err(status) => {
                self.metrics.spans_dropped_export_failed.inc_by(n);
                self.dropped(n, &status);
            }
        }
    }

    /// Notes `n` dropped spans; warns when the last warning is 30 s old or there was none.
    fn dropped(&mut self, n: u64, why: &dyn fmt::Display) {
        self.unreported += n;
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            endpoint = %self.endpoint,
            dropped = self.unreported,
            error = %why,
            "OTLP span export failed; spans dropped (counted in scoregate_trace_spans_dropped_total; next warning in 30 s at the earliest)"
        );
        self.warned = Some(now);
        self.unreported = 0;
    }
}

/// The span of one record. No header but the request id, no query, no body.
fn span(r: &Record) -> Span {
    let path = capped(r.uri.path());
    let base = match r.protocol {
        Protocol::Grpc => path.strip_prefix('/').unwrap_or(path),
        _ => r.method.as_str(),
    };
    let (kind, name) = match r.kind {
        Kind::Live => (SpanKind::Server, base.to_owned()),
        Kind::Mirror { .. } => (SpanKind::Client, format!("mirror {base}")),
    };
    let start = unix_nanos(r.start);
    let end = start.saturating_add(u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX));
    let failure = failure(r);
    Span {
        trace_id: r.trace.trace_id.to_vec(),
        span_id: r.trace.span_id.to_vec(),
        parent_span_id: r.trace.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(r.trace.flags),
        name,
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attributes(r, failure.as_ref().map(|f| f.0.as_str())),
        status: Some(match failure {
            Some((_, message)) => Status {
                code: StatusCode::Error as i32,
                message,
            },
            None => Status::default(),
        }),
        ..Default::default()
    }
}

/// `s` cut to at most `MAX_CLIENT_VALUE` bytes, on a character boundary.
fn capped(s: &str) -> &str {
    let mut end = s.len().min(MAX_CLIENT_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `(error.type, status message)` of a record that is an error (`Record::is_error`): the
/// error scoregate answered with, else the 5xx status, else the gRPC status, else the break.
fn failure(r: &Record) -> Option<(String, String)> {
    if !r.is_error() {
        return None;
    }
    Some(if let Some(kind) = r.error {
        (kind.to_owned(), kind.to_owned())
    } else if r.status >= 500 {
        (r.status.to_string(), format!("status {}", r.status))
    } else if let Some(code) = r
        .grpc_status
        .filter(|c| crate::metrics::GRPC_SERVER_FAILURES.contains(c))
    {
        (code.to_string(), format!("grpc status {code}"))
    } else {
        (
            "incomplete".to_owned(),
            "incomplete: the client went away or the answer broke off".to_owned(),
        )
    })
}

/// `network.protocol.name` and `.version` of a protocol.
fn network_protocol(p: Protocol) -> (&'static str, &'static str) {
    match p {
        Protocol::Http10 => ("http", "1.0"),
        Protocol::Http11 => ("http", "1.1"),
        Protocol::Http2 | Protocol::Grpc => ("http", "2"),
    }
}

fn attributes(r: &Record, error_type: Option<&str>) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(28);
    let path = capped(r.uri.path());
    let (proto_name, proto_version) = network_protocol(r.protocol);
    a.push(string("http.request.method", r.method.as_str()));
    a.push(string("url.path", path));
    a.push(string("network.protocol.name", proto_name));
    a.push(string("network.protocol.version", proto_version));
    a.push(string("scoregate.protocol", r.protocol.label()));
    a.push(int("http.response.status_code", i64::from(r.status)));
    if r.protocol == Protocol::Grpc {
        a.push(string("rpc.system", "grpc"));
        if let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            a.push(string("rpc.service", service));
            a.push(string("rpc.method", method));
        }
    }
    if let Some(code) = r.grpc_status {
        a.push(int("rpc.grpc.status_code", i64::from(code)));
    }
    a.push(string(
        "client.address",
        r.client.ip().to_canonical().to_string(),
    ));
    a.push(int("client.port", i64::from(r.client.port())));
    a.push(string(
        "scoregate.request_id",
        capped(&String::from_utf8_lossy(r.request_id.as_bytes())),
    ));
    if let Some(d) = &r.deployment {
        a.push(string("scoregate.deployment", &**d));
    }
    if let Some(i) = &r.instance {
        a.push(string("scoregate.instance", &**i));
        // A mirror's span is the client side of the call to the instance.
        if let (Kind::Mirror { .. }, Some((host, port))) = (r.kind, host_port(i)) {
            a.push(string("server.address", host));
            a.push(int("server.port", i64::from(port)));
        }
    }
    if let Some(route) = r.route {
        a.push(string("scoregate.route", route.label()));
    }
    a.push(boolean("scoregate.retried", r.retried));
    a.push(int(
        "scoregate.bytes_in",
        i64::try_from(r.bytes_in).unwrap_or(i64::MAX),
    ));
    a.push(int(
        "scoregate.bytes_out",
        i64::try_from(r.bytes_out).unwrap_or(i64::MAX),
    ));
    a.push(double("scoregate.time_to_headers_ms", millis(r.to_headers)));
    if let Some(c) = r.connect {
        a.push(double("scoregate.upstream_connect_ms", millis(c)));
    }
    if let Some(e) = r.error {
        a.push(string("scoregate.error", e));
    }
    if let Some(t) = error_type {
        a.push(string("error.type", t));
    }
    a.push(boolean("scoregate.completed", r.completed));
    if !r.mirrored.is_empty() {
        let values = r
            .mirrored
            .iter()
            .map(|m| AnyValue {
                value: Some(any_value::Value::StringValue(m.to_string())),
            })
            .collect();
        a.push(kv(
            "scoregate.mirrored",
            any_value::Value::ArrayValue(ArrayValue { values }),
        ));
    }
    if let Kind::Mirror {
        result: Some(result),
    } = r.kind
    {
        a.push(string("scoregate.shadow_result", result));
    }
    a
}

/// `host:port` or `[v6]:port` split (None when there is no port).
fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn double(key: &str, value: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(value))
}

fn boolean(key: &str, value: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Route, TraceContext};
    use http::HeaderValue;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;

    /// An OTLP/gRPC receiver (the official `TraceService`) that hands every request to the
    /// test and rejects `reject` spans of each.
    struct Receiver {
        requests: mpsc::UnboundedSender<ExportTraceServiceRequest>,
        reject: i64,
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.requests.send(request.into_inner());
            let partial_success = (self.reject > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.reject,
                error_message: "too old".to_owned(),
            });
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success,
            }))
        }
    }

    /// A receiver on 127.0.0.1:0: its endpoint and the requests it gets.
    async fn receiver(reject: i64) -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (requests, rx) = mpsc::unbounded_channel();
        let service = TraceServiceServer::new(Receiver { requests, reject });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        (format!("http://{addr}"), rx)
    }

    /// An endpoint where nothing listens (a port bound, then let go).
    async fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        format!("http://{addr}")
    }

    fn metrics() -> TelemetryMetrics {
        crate::metrics::Metrics::new().telemetry
    }

    /// The spans of the next request, within 5 s.
    async fn next_spans(rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>) -> Vec<Span> {
        let request = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an export request within 5 s")
            .expect("the receiver runs");
        let [resource_spans] = <[_; 1]>::try_from(request.resource_spans).expect("one resource");
        let resource = resource_spans.resource.expect("a resource");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(any_value::Value::StringValue("scoregate".into()))
        );
        assert!(attr(&resource.attributes, "service.version").is_some());
        let [scope_spans] = <[_; 1]>::try_from(resource_spans.scope_spans).expect("one scope");
        assert_eq!(scope_spans.scope.expect("a scope").name, "scoregate");
        scope_spans.spans
    }

    /// The value of attribute `key` (at most once).
    fn attr(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
        let mut found = attributes.iter().filter(|kv| kv.key == key);
        let first = found.next()?;
        assert!(found.next().is_none(), "{key} twice");
        first.value.clone()?.value
    }

    fn s(v: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(v.into()))
    }

    /// Polls `check` every 20 ms for `within`.
    async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check()
    }

    #[tokio::test]
    async fn records_reach_a_receiver_as_spans() {
        let (endpoint, mut rx) = receiver(0).await;
        let m = metrics();
        let exporter = Exporter::start(&endpoint, m.clone()).expect("start");
        assert_eq!(exporter.endpoint(), endpoint);

        let live = Record {
            mirrored: vec![Arc::from("green")],
            ..Record::sample()
        };
        let mut grpc = Record::sample();
        grpc.protocol = Protocol::Grpc;
        grpc.uri = http::Uri::from_static("/inference.GRPCInferenceService/ModelInfer");
        grpc.trace = TraceContext {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent_id: None,
            flags: 1,
        };
        grpc.grpc_status = Some(14);
        grpc.connect = None;
        let mut mirror = Record::sample();
        mirror.kind = Kind::Mirror {
            result: Some("mismatch"),
        };
        mirror.trace.span_id = [0x33; 8];
        mirror.deployment = Some(Arc::from("green"));
        mirror.instance = Some(Arc::from("[::1]:9002"));
        mirror.route = Some(Route::Sticky);
        mirror.error = Some("upstream_timeout");
        mirror.status = 504;
        for r in [live, grpc, mirror] {
            exporter.export(Arc::new(r));
        }

        // Three records, fewer than a batch: sent on the 1 s tick.
        let spans = next_spans(&mut rx).await;
        assert_eq!(spans.len(), 3);
        let [live, grpc, mirror] = <[Span; 3]>::try_from(spans).expect("three");

        assert_eq!(live.trace_id, vec![0x4b; 16]);
        assert_eq!(live.span_id, vec![0x0a; 8]);
        assert_eq!(live.parent_span_id, vec![0x0f; 8]);
        assert_eq!(live.flags, 1);
        assert_eq!(live.name, "POST");
        assert_eq!(live.kind, SpanKind::Server as i32);
        assert_eq!(live.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(live.end_time_unix_nano, 1_700_000_000_135_456_789);
        assert_eq!(live.status, Some(Status::default()));
        let a = &live.attributes;
        assert_eq!(attr(a, "http.request.method"), s("POST"));
        assert_eq!(attr(a, "url.path"), s("/v1/score"));
        assert!(
            a.iter()
                .all(|kv| !format!("{:?}", kv.value).contains("secret")),
            "the query leaked: {a:?}"
        );
        assert_eq!(attr(a, "network.protocol.name"), s("http"));
        assert_eq!(attr(a, "network.protocol.version"), s("1.1"));
        assert_eq!(attr(a, "scoregate.protocol"), s("HTTP/1.1"));
        assert_eq!(
            attr(a, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(attr(a, "rpc.grpc.status_code"), None);
        assert_eq!(attr(a, "client.address"), s("192.0.2.7"));
        assert_eq!(
            attr(a, "client.port"),
            Some(any_value::Value::IntValue(51_000))
        );
        assert_eq!(attr(a, "scoregate.request_id"), s("req-1"));
        assert_eq!(attr(a, "scoregate.deployment"), s("blue"));
        assert_eq!(attr(a, "scoregate.instance"), s("10.0.0.5:8080"));
        assert_eq!(attr(a, "server.address"), None);
        assert_eq!(attr(a, "scoregate.route"), s("weighted"));
        assert_eq!(
            attr(a, "scoregate.retried"),
            Some(any_value::Value::BoolValue(false))
        );
        assert_eq!(
            attr(a, "scoregate.bytes_in"),
            Some(any_value::Value::IntValue(100))
        );
        assert_eq!(
            attr(a, "scoregate.bytes_out"),
            Some(any_value::Value::IntValue(2_000))
        );
        assert_eq!(
            attr(a, "scoregate.upstream_connect_ms"),
            Some(any_value::Value::DoubleValue(1.5))
        );
        assert_eq!(attr(a, "scoregate.error"), None);
        assert_eq!(attr(a, "error.type"), None);
        assert_eq!(
            attr(a, "scoregate.completed"),
            Some(any_value::Value::BoolValue(true))
        );
        let Some(any_value::Value::ArrayValue(mirrored)) = attr(a, "scoregate.mirrored") else {
            panic!("scoregate.mirrored is a string array: {a:?}");
        };
        assert_eq!(
            mirrored.values,
            vec![AnyValue {
                value: Some(any_value::Value::StringValue("green".into()))
            }]
        );
        assert_eq!(attr(a, "scoregate.shadow_result"), None);

        assert_eq!(grpc.name, "inference.GRPCInferenceService/ModelInfer");
        assert_eq!(grpc.kind, SpanKind::Server as i32);
        assert_eq!(grpc.trace_id, vec![0x11; 16]);
        assert!(grpc.parent_span_id.is_empty());
        let a = &grpc.attributes;
        assert_eq!(attr(a, "scoregate.protocol"), s("gRPC"));
        assert_eq!(attr(a, "network.protocol.version"), s("2"));
        assert_eq!(attr(a, "rpc.system"), s("grpc"));
        assert_eq!(attr(a, "rpc.service"), s("inference.GRPCInferenceService"));
        assert_eq!(attr(a, "rpc.method"), s("ModelInfer"));
        assert_eq!(
            attr(a, "rpc.grpc.status_code"),
            Some(any_value::Value::IntValue(14))
        );
        assert_eq!(attr(a, "scoregate.upstream_connect_ms"), None);
        assert_eq!(attr(a, "scoregate.mirrored"), None);
        // UNAVAILABLE is a server failure.
        assert_eq!(
            grpc.status,
            Some(Status {
                code: StatusCode::Error as i32,
                message: "grpc status 14".into()
            })
        );
        assert_eq!(attr(a, "error.type"), s("14"));

        assert_eq!(mirror.name, "mirror POST");
        assert_eq!(mirror.kind, SpanKind::Client as i32);
        assert_eq!(mirror.span_id, vec![0x33; 8]);
        assert_eq!(mirror.parent_span_id, vec![0x0f; 8]);
        let a = &mirror.attributes;
        assert_eq!(attr(a, "scoregate.shadow_result"), s("mismatch"));
        assert_eq!(attr(a, "scoregate.deployment"), s("green"));
        assert_eq!(attr(a, "server.address"), s("::1"));
        assert_eq!(
            attr(a, "server.port"),
            Some(any_value::Value::IntValue(9002))
        );
        assert_eq!(attr(a, "scoregate.route"), s("sticky"));
        assert_eq!(attr(a, "scoregate.error"), s("upstream_timeout"));
        assert_eq!(attr(a, "error.type"), s("upstream_timeout"));
        assert_eq!(
            mirror.status,
            Some(Status {
                code: StatusCode::Error as i32,
                message: "upstream_timeout".into()
            })
        );

        assert!(eventually(Duration::from_secs(2), || m.spans_exported.get() == 3).await);
        assert_eq!(m.spans_dropped_export_failed.get(), 0);
        assert_eq!(m.spans_dropped_queue_full.get(), 0);
    }

    #[tokio::test]
    async fn a_down_collector_drops_and_counts_without_blocking() {
        let m = metrics();
        let exporter = Exporter::start(&closed_port().await, m.clone()).expect("start");
        let started = std::time::Instant::now();
        for _ in 0..10 {
            exporter.export(Arc::new(Record::sample()));
        }
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "export waited"
        );
        assert!(
            eventually(Duration::from_secs(4), || m
                .spans_dropped_export_failed
                .get()
                == 10)
            .await,
            "export_failed = {}",
            m.spans_dropped_export_failed.get()
        );
        assert_eq!(m.spans_exported.get(), 0);
        assert_eq!(m.spans_dropped_queue_full.get(), 0);
        // The exporter still takes records (and drops them) afterwards.
        exporter.export(Arc::new(Record::sample()));
        assert!(
            exporter.shutdown(Duration::from_secs(4)).await,
            "the task ended"
        );
        assert_eq!(m.spans_dropped_export_failed.get(), 11);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let m = metrics();
        let exporter = Exporter::start(&closed_port().await, m.clone()).expect("start");
        let record = Arc::new(Record::sample());
        let started = std::time::Instant::now();
        for _ in 0..5_000 {
            exporter.export(record.clone());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "export waited");
        // The test's runtime has one thread: the task has not run yet, the queue holds 4096.
        assert_eq!(m.spans_dropped_queue_full.get(), 5_000 - 4_096);
        assert!(
            eventually(Duration::from_secs(5), || m.spans_dropped_queue_full.get()
                + m.spans_dropped_export_failed.get()
                == 5_000)
            .await,
            "queue_full {} + export_failed {}",
            m.spans_dropped_queue_full.get(),
            m.spans_dropped_export_failed.get()
        );
        assert_eq!(m.spans_exported.get(), 0);
    }

    #[tokio::test]
    async fn a_full_batch_goes_at_once_and_dropping_the_exporter_sends_the_rest() {
        let (endpoint, mut rx) = receiver(0).await;
        let m = metrics();
        // No tick in the test's time: only a full batch, or the end, sends.
        let settings = Settings {
            every: Duration::from_secs(3600),
            ..DEFAULTS
        };
        let exporter = Exporter::start_with(&endpoint, m.clone(), settings).expect("start");
        let record = Arc::new(Record::sample());
        for _ in 0..600 {
            exporter.export(record.clone());
        }
        assert_eq!(next_spans(&mut rx).await.len(), 512);
        assert!(
            rx.try_recv().is_err(),
            "the last 88 wait for a full batch or the end"
        );
        drop(exporter);
        assert_eq!(next_spans(&mut rx).await.len(), 88);
        assert!(eventually(Duration::from_secs(2), || m.spans_exported.get() == 600).await);
        assert_eq!(m.spans_dropped_export_failed.get(), 0);
        assert_eq!(m.spans_dropped_queue_full.get(), 0);
    }

    #[tokio::test]
    async fn spans_the_collector_rejects_are_counted_as_failed() {
        let (endpoint, mut rx) = receiver(1).await;
        let m = metrics();
        let exporter = Exporter::start(&endpoint, m.clone()).expect("start");
        for _ in 0..3 {
            exporter.export(Arc::new(Record::sample()));
        }
        assert!(exporter.shutdown(Duration::from_secs(5)).await);
        assert_eq!(next_spans(&mut rx).await.len(), 3);
        assert_eq!(m.spans_exported.get(), 2);
        assert_eq!(m.spans_dropped_export_failed.get(), 1);
    }

    #[test]
    fn an_incomplete_answer_is_an_error_span() {
        let r = Record {
            completed: false,
            ..Record::sample()
        };
        let incomplete = span(&r);
        assert_eq!(
            incomplete.status.map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        assert_eq!(attr(&incomplete.attributes, "error.type"), s("incomplete"));
        let r = Record {
            status: 502,
            ..Record::sample()
        };
        assert_eq!(
            span(&r).status.map(|s| s.message),
            Some("status 502".to_owned())
        );
        let r = Record {
            status: 404,
            ..Record::sample()
        };
        assert_eq!(span(&r).status, Some(Status::default()));
    }

    #[test]
    fn what_a_client_sent_is_capped() {
        let long = format!("/{}", "p".repeat(60_000));
        let id = format!("{}é", "i".repeat(511));
        let r = Record {
            protocol: Protocol::Grpc,
            uri: http::Uri::try_from(long).expect("uri"),
            request_id: HeaderValue::from_bytes(id.as_bytes()).expect("header"),
            ..Record::sample()
        };
        let sp = span(&r);
        assert_eq!(sp.name.len(), MAX_CLIENT_VALUE - 1);
        let Some(any_value::Value::StringValue(path)) = attr(&sp.attributes, "url.path") else {
            panic!("url.path");
        };
        assert_eq!(path.len(), MAX_CLIENT_VALUE);
        // "é" would end past the cap: cut before it, not inside it.
        assert_eq!(
            attr(&sp.attributes, "scoregate.request_id"),
            s(&"i".repeat(511))
        );
    }

    #[tokio::test]
    async fn endpoints_that_are_not_http_are_refused_by_name() {
        for (endpoint, says) in [
            ("https://collector:4317", "https is not supported"),
            ("collector:4317", "must start with http://"),
            ("grpc://collector:4317", "must start with http://"),
            ("http://collector:4318/v1/traces", "has a path"),
            ("http://", "not a valid URI"),
            ("http:// space", "not a valid URI"),
        ] {
            let e = Exporter::start(endpoint, metrics()).expect_err(endpoint);
            let message = e.to_string();
            assert!(message.contains(endpoint), "{message}");
            assert!(message.contains(says), "{endpoint}: {message}");
        }
        assert!(Exporter::start("http://collector:4317/", metrics()).is_ok());
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let e = Exporter::start("http://127.0.0.1:4317", metrics()).expect_err("no runtime");
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }
}

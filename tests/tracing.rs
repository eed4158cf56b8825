//! Spans exported over OTLP by the real binary to a real OTLP/gRPC receiver started here (the
//! official `opentelemetry.proto.collector.trace.v1.TraceService`, from the OTLP protobuf
//! definitions): one span per request, in the client's trace with the client's span as parent,
//! its span id the parent the instance saw; a collector that is down costs nothing but
//! dropped spans, counted.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on 127.0.0.1:0: its address and what it receives.
async fn receiver() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, rx)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text_attr(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

/// Spans received until `n` have come, within 10 s.
async fn spans(rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>, n: usize) -> Vec<Span> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let req = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} spans within 10 s", out.len()))
            .expect("receiver open");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref());
            assert!(matches!(service, Some(Any::StringValue(s)) if s == "scoregate"));
            out.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    out
}

#[tokio::test]
async fn each_request_is_a_span_in_the_clients_trace_exported_to_a_real_receiver() {
    let (collector, mut rx) = receiver().await;
    let blue = Backend::start("blue").await;
    let failing = Backend::answering("failing", StatusCode::SERVICE_UNAVAILABLE).await;
    let file = EndpointFile::new()
        .extra(&format!("otlp_endpoint: http://{collector}"))
        .deployment("blue", &[blue.addr], Some(100))
        .deployment("failing", &[failing.addr], None)
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = get(
        &c,
        &proxy.url("/score?k=v"),
        &[("traceparent", parent), ("x-request-id", "span-1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = blue.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    // No traceparent: a trace starts here, sampled because spans are exported.
    let b = get(
        &c,
        &proxy.url("/score"),
        &[("x-api-version", "failing"), ("x-request-id", "span-2")],
    )
    .await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE);
    let started = failing.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(started.ends_with("-01"), "{started}");

    let got = spans(&mut rx, 2).await;
    let one = got
        .iter()
        .find(|s| text_attr(s, "scoregate.request_id") == "span-1")
        .expect("span of span-1");
    assert_eq!(hex(&one.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&one.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        hex(&one.span_id),
        &seen[36..52],
        "the instance's parent is the proxy's span"
    );
    assert_eq!(one.kind, 2, "SERVER");
    assert!(one.end_time_unix_nano > one.start_time_unix_nano);
    assert_eq!(text_attr(one, "url.path"), "/score");
    assert_eq!(text_attr(one, "scoregate.deployment"), "blue");
    assert_eq!(text_attr(one, "scoregate.instance"), blue.addr.to_string());
    assert!(matches!(
        attr(one, "http.response.status_code"),
        Some(Any::IntValue(200))
    ));
    assert_ne!(one.status.as_ref().map_or(0, |s| s.code), 2, "not an error");

    let two = got
        .iter()
        .find(|s| text_attr(s, "scoregate.request_id") == "span-2")
        .expect("span of span-2");
    assert_eq!(hex(&two.trace_id), &started[3..35]);
    assert!(
        two.parent_span_id.is_empty(),
        "a trace started here: the proxy's span is the root"
    );
    assert_eq!(hex(&two.span_id), &started[36..52]);
    assert_eq!(
        two.status.as_ref().map(|s| s.code),
        Some(2),
        "a 503 is an error span"
    );
    assert_eq!(
        proxy.metric("scoregate_trace_spans_exported_total").await,
        2.0
    );
}

#[tokio::test]
async fn a_down_collector_costs_only_dropped_spans_counted() {
    let blue = Backend::start("blue").await;
    let file = EndpointFile::new()
        .extra(&format!("otlp_endpoint: http://{}", dead_addr()))
        .deployment("blue", &[blue.addr], Some(100))
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    for _ in 0..50 {
        assert_eq!(
            get(&c, &proxy.url("/score"), &[]).await.status,
            StatusCode::OK
        );
    }
    let series = "scoregate_trace_spans_dropped_total{reason=\"export_failed\"}";
    wait_until(
        "50 spans counted as dropped",
        Duration::from_secs(15),
        async || proxy.metric(series).await >= 50.0,
    )
    .await;
    assert_eq!(
        proxy.metric("scoregate_trace_spans_exported_total").await,
        0.0
    );
}

#[tokio::test]
async fn an_unsampled_trace_is_continued_but_not_exported() {
    let (collector, mut rx) = receiver().await;
    let blue = Backend::start("blue").await;
    let file = EndpointFile::new()
        .extra(&format!("otlp_endpoint: http://{collector}"))
        .deployment("blue", &[blue.addr], Some(100))
        .yaml();
    let proxy = Proc::proxy(&file);
    let c = client();
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    get(
        &c,
        &proxy.url("/score"),
        &[("traceparent", unsampled), ("x-request-id", "quiet")],
    )
    .await;
    get(&c, &proxy.url("/score"), &[("x-request-id", "loud")]).await;
    let got = spans(&mut rx, 1).await;
    assert!(
        got.iter()
            .all(|s| text_attr(s, "scoregate.request_id") == "loud")
    );
    let seen = blue.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(seen.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && seen.ends_with("-00"));
}

//! The admin listener (`admin_listen`): `/metrics` and `/healthz`. Beside the data path, on its
//! own socket so that scrapes never queue behind scoring traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        _ => respond(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found: try /metrics or /healthz"}"#,
        ),
    }
}

/// Serves the admin endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let out = handle(&req, &metrics);
                async move { Ok::<_, Infallible>(out) }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

//! Layer 4 (request path): the end of the line. Writes the answer scoregate makes itself for
//! an error (its status and `{"error": ..., "deployment": ...}`) and counts every answer in the
//! deployment's metrics. Which error a failure becomes is decided before, in
//! `upstream::classify`.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, header};

use crate::error::ProxyError;
use crate::routing::Table;
use crate::upstream::ResponseBody;

/// An instance's answer, counted for deployment `index`.
pub(super) fn answered(
    table: &Table,
    index: usize,
    resp: Response<ResponseBody>,
    pinned: bool,
    start: Instant,
) -> Response<ResponseBody> {
    table.deployments[index]
        .metrics
        .request(resp.status().as_u16(), pinned, start.elapsed());
    resp
}

/// The answer for `err`, counted for deployment `index` (`None`: refused before routing): a
/// JSON body, or for a gRPC call a trailers-only answer with its gRPC status.
#[cold]
pub(super) fn refused(
    table: &Table,
    err: &ProxyError,
    index: Option<usize>,
    pinned: bool,
    grpc: bool,
    start: Instant,
) -> Response<ResponseBody> {
    let dep = index.map(|i| &table.deployments[i]);
    let m = dep.map_or(&table.unrouted, |d| &d.metrics);
    if let Some(kind) = err.upstream_kind() {
        m.upstream_error(kind);
    }
    if grpc {
        m.grpc_status(err.grpc_code());
        m.request(200, pinned, start.elapsed());
        return super::grpc::error_response(err, dep.map(|d| &d.header_value));
    }
    m.request(err.status().as_u16(), pinned, start.elapsed());
    error_response(err, dep.map(|d| &d.header_value))
}

/// The response for `err`: its status and `{"error": "...", "deployment": NAME or null}`.
pub(crate) fn error_response(
    err: &ProxyError,
    deployment: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": err.to_string(),
        "deployment": deployment.and_then(|d| d.to_str().ok()),
    });
    let mut resp = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(d) = deployment {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-deployment"), d.clone());
    }
    if matches!(err, ProxyError::Unauthorized) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

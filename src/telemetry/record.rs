//! Layer 0 (values): what is known of one request when it ends — its ids, where it went, how
//! long it took — as the access log writes it and the span exporter sends it. Built on the
//! request path only when one of them is on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};

use super::ids::TraceContext;

/// The protocol a request came in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http10,
    Http11,
    Http2,
    /// A gRPC call (over HTTP/2).
    Grpc,
}

impl Protocol {
    /// As logged: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `gRPC`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Grpc => "gRPC",
        }
    }
}

/// Why a request went to its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The weighted split.
    Weighted,
    /// The pin header (`x-api-version`) named it.
    Pinned,
    /// The sticky key's hash.
    Sticky,
}

impl Route {
    /// As logged: `weighted`, `pinned`, `sticky`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Weighted => "weighted",
            Route::Pinned => "pinned",
            Route::Sticky => "sticky",
        }
    }
}

/// Which answer a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The answer the client got.
    Live,
    /// A mirrored copy's answer (the client never saw it), with the shadow comparison's result
    /// (`match`, `mismatch`, `incomparable`) when the answers were compared.
    Mirror { result: Option<&'static str> },
}

/// One request, or one mirrored copy of it, when it has ended. Never holds a header other than
/// the request id, a key or a body.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) kind: Kind,
    /// When the request arrived (wall clock).
    pub(crate) start: SystemTime,
    /// `x-request-id`, the client's or made here.
    pub(crate) request_id: HeaderValue,
    pub(crate) trace: TraceContext,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    /// The target as received; the log strips the query unless `log_query` is set.
    pub(crate) uri: Uri,
    pub(crate) protocol: Protocol,
    /// The HTTP status sent (200 for a gRPC call answered with an error status).
    pub(crate) status: u16,
    /// A gRPC call's status, from the answer's headers or trailers (None: not gRPC, or the
    /// answer ended without one).
    pub(crate) grpc_status: Option<u32>,
    /// The deployment chosen (None: refused before routing).
    pub(crate) deployment: Option<Arc<str>>,
    /// The instance that answered or was tried last (None: none was reached).
    pub(crate) instance: Option<Arc<str>>,
    pub(crate) route: Option<Route>,
    /// Request body bytes read from the client.
    pub(crate) bytes_in: u64,
    /// Response body bytes sent to the client.
    pub(crate) bytes_out: u64,
    /// From arrival to the response's headers.
    pub(crate) to_headers: Duration,
    /// From arrival to the last byte (or to the end, when the answer broke off).
    pub(crate) duration: Duration,
    /// The time to open a new connection to the instance (None: a pooled one was used).
    pub(crate) connect: Option<Duration>,
    /// Sent to another instance after a refused connection, or sent again on a new connection
    /// after a pooled one closed.
    pub(crate) retried: bool,
    /// The mirror deployments a copy was sent to.
    pub(crate) mirrored: Vec<Arc<str>>,
    /// The error scoregate answered with (`ProxyError::kind`), None when an instance answered.
    pub(crate) error: Option<&'static str>,
    /// False when the client went away, or the answer broke off, before the last byte.
    pub(crate) completed: bool,
}

impl Record {
    /// A failure worth keeping whatever the sample: status ≥ 500, an error scoregate made, a
    /// gRPC status that means the server failed, or an answer that broke off.
    pub(crate) fn is_error(&self) -> bool {
        self.status >= 500
            || self.error.is_some()
            || !self.completed
            || self
                .grpc_status
                .is_some_and(|c| crate::metrics::GRPC_SERVER_FAILURES.contains(&c))
    }
}

#[cfg(test)]
impl Record {
    /// A live HTTP/1.1 `POST /v1/score?token=secret` that a weighted route sent to `blue` at
    /// `10.0.0.5:8080`, answered 200 and completed; a continued trace, sampled.
    pub(crate) fn sample() -> Record {
        Record {
            kind: Kind::Live,
            start: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            request_id: HeaderValue::from_static("req-1"),
            trace: TraceContext {
                trace_id: [0x4b; 16],
                span_id: [0x0a; 8],
                parent_id: Some([0x0f; 8]),
                flags: 1,
            },
            client: SocketAddr::from(([192, 0, 2, 7], 51_000)),
            method: Method::POST,
            uri: Uri::from_static("/v1/score?token=secret"),
            protocol: Protocol::Http11,
            status: 200,
            grpc_status: None,
            deployment: Some(Arc::from("blue")),
            instance: Some(Arc::from("10.0.0.5:8080")),
            route: Some(Route::Weighted),
            bytes_in: 100,
            bytes_out: 2_000,
            to_headers: Duration::from_millis(5),
            duration: Duration::from_millis(12),
            connect: Some(Duration::from_micros(1_500)),
            retried: false,
            mirrored: Vec::new(),
            error: None,
            completed: true,
        }
    }
}

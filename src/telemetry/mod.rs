//! Layer 0 (values): following one request — its request id and trace context (`ids`), what
//! is known of it when it ends (`record`), the access log that writes it (`access_log`) and the
//! exporter that sends it as an OTLP span (`otlp`). Both sinks take records off the request
//! path through bounded queues: a slow disk or a down collector drops records and counts them.

mod failures;
mod ids;
mod otlp;
mod record;

pub(crate) use failures::{FailedRequest, FailedRequests};
pub(crate) use ids::{TraceContext, hex, new_request_id};
// Not used by the request path yet.
#[allow(unused_imports)]
pub(crate) use otlp::Exporter;
pub(crate) use record::{Kind, Protocol, Record, Route};

//! Layer 0 (values): following one request — its request id and trace context (`ids`), what
//! is known of it when it ends (`record`), the access log that writes it (`access_log`), the
//! exporter that sends it as an OTLP span (`otlp`), and the last failed requests kept for the
//! admin listener (`failures`). Both sinks take records off the request path through bounded
//! queues: a slow disk or a down collector drops records and counts them.

mod access_log;
mod failures;
mod ids;
mod otlp;
mod record;

pub(crate) use access_log::{Format, LineOptions, Writer};
pub(crate) use failures::{FailedRequest, FailedRequests};
pub(crate) use ids::{TraceContext, new_request_id, with_id_rng};
pub(crate) use otlp::Exporter;
pub(crate) use record::{Kind, Protocol, Record, Route};

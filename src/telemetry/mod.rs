//! Layer 0 (values): following one request — its request id and trace context (`ids`), what
//! is known of it when it ends (`record`), the access log that writes it (`access_log`) and the
//! exporter that sends it as an OTLP span (`otlp`). Both sinks take records off the request
//! path through bounded queues: a slow disk or a down collector drops records and counts them.

mod access_log;
mod ids;
mod record;

// Not used until the request path and the config are wired to it.
#[allow(unused_imports)]
pub(crate) use access_log::{Format, LineOptions, Writer, write_line};
pub(crate) use ids::{TraceContext, hex, new_request_id};
pub(crate) use record::{Kind, Protocol, Record, Route};

//! Layer 4 (request path): one request's ids — `x-request-id` kept or made, `traceparent`
//! continued or started — and, when the access log or span export is on, its record, which
//! the answer's body completes at the last byte and hands to them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use http::header::Entry;
use http::{HeaderName, HeaderValue, Request, Version};
use hyper::body::Incoming;
use rand::RngExt;

use crate::body::Progress;
use crate::routing::{Choice, Table};
use crate::telemetry::{Kind, Protocol, Record, Route, TraceContext, new_request_id, with_id_rng};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A client's request id longer than this is replaced (it would bloat every log line).
const MAX_REQUEST_ID: usize = 200;

/// One request's ids and record.
pub(crate) struct Trip {
    /// Sent back to the client.
    pub(crate) request_id: HeaderValue,
    /// `Some` when the table logs or exports spans (boxed: a request without keeps the trip
    /// small).
    pub(crate) record: Option<Box<Record>>,
    /// When the request arrived.
    pub(crate) start: Instant,
    /// The request body's progress (bytes read), when it has a body.
    pub(crate) progress: Option<Arc<Progress>>,
    /// The table whose access log and exporter get the record (set when the answer starts).
    table: Option<Arc<Table>>,
}

// === impl Trip ===

impl Trip {
    /// Keeps the client's `x-request-id` or makes one, continues or starts the trace, and
    /// writes both into the request for the instance.
    pub(crate) fn begin(
        table: &Table,
        req: &mut Request<Incoming>,
        client: std::net::SocketAddr,
        grpc: bool,
        start: Instant,
    ) -> Box<Trip> {
        let sample_new = table.telemetry.otlp.is_some();
        let (request_id, trace) = with_id_rng(|rng| {
            let headers = req.headers_mut();
            // One lookup each: the entry is read, and written when replaced.
            let request_id = match headers.entry(&X_REQUEST_ID) {
                Entry::Occupied(e) if !e.get().is_empty() && e.get().len() <= MAX_REQUEST_ID => {
                    e.get().clone()
                }
                Entry::Occupied(mut e) => {
                    let id = new_request_id(rng);
                    e.insert(id.clone());
                    id
                }
                Entry::Vacant(e) => e.insert(new_request_id(rng)).clone(),
            };
            let trace = match headers.entry(&TRACEPARENT) {
                Entry::Occupied(mut e) => {
                    let t = TraceContext::continue_or_start(Some(e.get()), sample_new, rng);
                    e.insert(t.traceparent());
                    t
                }
                Entry::Vacant(e) => {
                    let t = TraceContext::continue_or_start(None, sample_new, rng);
                    e.insert(t.traceparent());
                    t
                }
            };
            (request_id, trace)
        });
        let record = table.telemetry.on().then(|| {
            let record = Record {
                kind: Kind::Live,
                start: SystemTime::now(),
                request_id: request_id.clone(),
                trace,
                client,
                method: req.method().clone(),
                uri: req.uri().clone(),
                protocol: match req.version() {
                    _ if grpc => Protocol::Grpc,
                    Version::HTTP_2 => Protocol::Http2,
                    Version::HTTP_10 => Protocol::Http10,
                    _ => Protocol::Http11,
                },
                status: 0,
                grpc_status: None,
                deployment: None,
                instance: None,
                route: None,
                bytes_in: 0,
                bytes_out: 0,
                to_headers: Default::default(),
                duration: Default::default(),
                connect: None,
                retried: false,
                mirrored: Vec::new(),
                error: None,
                completed: false,
            };
            Box::new(record)
        });
        Box::new(Trip {
            request_id,
            record,
            start,
            progress: None,
            table: None,
        })
    }

    /// The deployment chosen, and why.
    pub(crate) fn routed(&mut self, table: &Table, choice: Choice) {
        if let Some(r) = &mut self.record {
            r.deployment = Some(table.deployments[choice.index].name.clone());
            r.route = Some(if choice.pinned {
                Route::Pinned
            } else if choice.sticky {
                Route::Sticky
            } else {
                Route::Weighted
            });
        }
    }

    /// The answer's head is out: its status, gRPC status and the time it took; `error`: the
    /// error scoregate answered with.
    pub(crate) fn answered(
        &mut self,
        status: u16,
        grpc_status: Option<u32>,
        error: Option<&'static str>,
    ) {
        if let Some(r) = &mut self.record {
            r.status = status;
            r.grpc_status = grpc_status;
            r.error = error;
            r.to_headers = self.start.elapsed();
        }
    }
}

/// A request's record on its way to the access log and the span exporter, completed by the
/// answer's body. One pointer: it is held by every answer's body.
pub(crate) struct Completion(Box<Trip>);

impl Completion {
    /// `None` when nothing is logged or exported.
    pub(crate) fn new(mut trip: Box<Trip>, table: Arc<Table>) -> Option<Completion> {
        trip.record.as_ref()?;
        trip.table = Some(table);
        Some(Completion(trip))
    }

    /// The record, to count bytes and see trailers as the body streams.
    pub(crate) fn record(&mut self) -> Option<&mut Record> {
        self.0.record.as_deref_mut()
    }

    /// The answer ended (`completed`: at its last byte): the record goes to the access log
    /// (when sampled, or an error) and the exporter (when the trace is sampled).
    pub(crate) fn end(mut self, completed: bool) {
        let (Some(mut r), Some(table)) = (self.0.record.take(), self.0.table.take()) else {
            return;
        };
        r.duration = self.0.start.elapsed();
        r.completed = completed;
        if let Some(p) = &self.0.progress {
            r.bytes_in = p.bytes.load(Ordering::Relaxed);
        }
        hand_on(&table, r);
    }
}

/// Hands a finished record to the access log (when sampled, or an error) and the exporter
/// (when its trace is sampled).
pub(crate) fn hand_on(table: &Table, r: Box<Record>) {
    let t = &table.telemetry;
    let log = t
        .log
        .as_ref()
        .filter(|l| l.sample >= 1.0 || r.is_error() || rand::rng().random::<f64>() < l.sample);
    let export = t.otlp.as_ref().filter(|_| r.trace.sampled());
    if let Some(l) = log {
        l.writer.log(&r, l.options);
    }
    if let Some(e) = export {
        e.export(Arc::from(r));
    }
}

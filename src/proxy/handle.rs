//! Layer 4 (request path): one request, in a straight line — one table load, the checks and
//! header rewrites, the routing choice, a slot on an instance, the deployment's own headers, the upstream exchange (one retry
//! elsewhere when a connection is refused), then [`respond`](super::respond) writes the answer
//! and counts it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use subtle::ConstantTimeEq;

use crate::body::{Progress, RequestBody};
use crate::config;
use crate::error::ProxyError;
use crate::instance::{Instance, Slot};
use crate::limits::GRPC_STREAM_IDLE;
use crate::routing::{Choice, Deployment, Group, Table};
use crate::upstream::{self, Failure, Fault, Held, ResponseBody};

use super::grpc;
use super::mirror::Mirroring;
use super::respond;
use super::server::Peer;
use super::trip::{Completion, Trip, X_REQUEST_ID};
use crate::metrics::GRPC_SERVER_FAILURES;
use crate::shadow::{Evidence, LiveTap};
use crate::telemetry::{FailedRequest, FailedRequests};

static X_DEPLOYMENT: HeaderName = HeaderName::from_static("x-deployment");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Shared state of the data plane: the live table (written only by the loader) and the bound
/// on mirrored copies.
pub(crate) struct Proxy {
    table: Arc<ArcSwap<Table>>,
    mirroring: Mirroring,
    /// The last failed requests, for the admin listener.
    failures: Arc<FailedRequests>,
}

// === impl Proxy ===

impl Proxy {
    /// The data-plane listener's TLS configuration now (None: cleartext), for a new
    /// connection's handshake.
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.table.load().tls.clone()
    }

    /// The data plane over the live `table`; shadow comparisons are recorded in `evidence`,
    /// failed requests in `failures`.
    pub(crate) fn new(
        table: Arc<ArcSwap<Table>>,
        evidence: Arc<Evidence>,
        failures: Arc<FailedRequests>,
    ) -> Self {
        Proxy {
            table,
            mirroring: Mirroring::new(evidence),
            failures,
        }
    }

    /// Serves one request. Never fails: every error becomes a JSON answer, and `finish` turns
    /// the answer into what the connection sends.
    ///
    /// The checks, the choice of deployment and the header rewrites run here, before the future
    /// is built; the future then borrows the request from one slot down to the instance. Futures
    /// that take the request by value keep a dead copy of it per layer: this way the whole
    /// future is about a third of the size, which matters because it is allocated per request.
    pub(crate) fn handle<T, F>(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Peer,
        finish: F,
    ) -> impl Future<Output = T> + Send + use<T, F>
    where
        F: FnOnce(Response<ResponseBody>, Option<Completion>) -> T + Send + 'static,
    {
        let proxy = self.clone();
        // The request keeps this table until it ends, whatever reloads happen meanwhile.
        let table = self.table.load_full();
        let pinned = req.headers().contains_key(&table.pin_header);
        let grpc = grpc::is_grpc(req.headers());
        // The arrival time is kept in the trip only: the future holds it once.
        let mut trip = Trip::begin(&table, &mut req, peer.addr, grpc, Instant::now());
        let mut prepared = prepare(&table, req, peer, grpc, &mut trip);
        async move {
            let outcome = match prepared {
                Err(e) => Err(e),
                Ok(ref mut p) => proxy
                    .forward(&table, p, grpc, &mut trip)
                    .await
                    .map(|resp| (resp, p.choice.index)),
            };
            let mut resp = match outcome {
                Ok((resp, index)) => {
                    let status = resp.status().as_u16();
                    let grpc_status = grpc
                        .then(|| upstream::grpc_status(resp.headers()))
                        .flatten();
                    trip.answered(status, grpc_status, None);
                    if status >= 500
                        || grpc_status.is_some_and(|c| GRPC_SERVER_FAILURES.contains(&c))
                    {
                        proxy.failed(&table, &trip, Some(index), status, grpc_status, None);
                    }
                    respond::answered(&table, index, resp, pinned, trip.start)
                }
                Err((err, dep)) => {
                    let resp = respond::refused(&table, &err, dep, pinned, grpc, trip.start);
                    // The status sent: 200 for a gRPC call, whose error is its grpc-status.
                    let status = resp.status().as_u16();
                    let grpc_status = grpc.then(|| err.grpc_code());
                    trip.answered(status, grpc_status, Some(err.kind()));
                    proxy.failed(&table, &trip, dep, status, grpc_status, Some(err.kind()));
                    resp
                }
            };
            let id = std::mem::replace(&mut trip.request_id, HeaderValue::from_static(""));
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            finish(resp, Completion::new(trip, table))
        }
    }

    /// Keeps a failed request's id for `GET /failures` (and `rollout`'s report).
    #[cold]
    fn failed(
        &self,
        table: &Table,
        trip: &Trip,
        index: Option<usize>,
        status: u16,
        grpc_status: Option<u32>,
        error: Option<&'static str>,
    ) {
        self.failures.record(FailedRequest {
            time: std::time::SystemTime::now(),
            request_id: String::from_utf8_lossy(trip.request_id.as_bytes()).into_owned(),
            deployment: index.map(|i| table.deployments[i].name.to_string()),
            status,
            grpc_status,
            error,
            instance: trip
                .record
                .as_ref()
                .and_then(|r| r.instance.as_deref())
                .map(str::to_string),
        });
    }

    /// Waits for a slot on the chosen deployment's REST or gRPC instances, then exchanges the
    /// prepared request with one of them within the request timeout (for a gRPC call, the
    /// client's `grpc-timeout` when shorter).
    async fn forward(
        &self,
        table: &Arc<Table>,
        prepared: &mut Prepared,
        grpc: bool,
        trip: &mut Trip,
    ) -> Result<Response<ResponseBody>, (ProxyError, Option<usize>)> {
        let Prepared {
            choice,
            request: pending,
            sent,
            deadline,
            ..
        } = prepared;
        let choice = *choice;
        let dep = &table.deployments[choice.index];
        let at = |e| (e, Some(choice.index));
        let group = dep.group(grpc);
        if !group.configured {
            return Err(at(ProxyError::NotServed {
                deployment: dep.name.as_ref().into(),
                grpc,
            }));
        }
        let slot = group.acquire().await.map_err(at)?;
        if let Some(req) = pending.as_deref_mut() {
            if grpc {
                grpc::to_h2(req, slot.instance());
            } else if let Some(host) = slot.instance().tls().and_then(|t| t.host()) {
                // An HTTPS service is reached by its own name, in `Host` as in the SNI.
                req.headers_mut().insert(header::HOST, host.clone());
            } else if !req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(slot.instance().authority())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if !choice.pinned && !table.mirrors.is_empty() {
                prepared.tap = self.mirroring.start_into(table, req, grpc, trip);
            }
            // After the copy's head was taken: the mirror deployment gets its own headers and
            // key, never this one's.
            upstream::set_deployment_headers(req.headers_mut(), &dep.headers);
        }

        let timeout = match deadline {
            Some(d) => dep.settings.request_timeout.min(*d),
            None => dep.settings.request_timeout,
        };
        // The instance being tried, for charging a timeout to the right one.
        let mut current = slot.instance().clone();
        let exchanged =
            tokio::time::timeout(timeout, exchange(dep, group, slot, pending, &mut current)).await;
        if let Some(r) = &mut trip.record {
            r.instance = Some(current.label().clone());
        }
        let (resp, conn, slot) = match exchanged {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(at(e)),
            Err(_) => {
                let failure = Failure::Timeout {
                    timeout_ms: timeout.as_millis() as u64,
                    body_sent: sent.as_ref().is_none_or(|s| s.sent.load(Ordering::Relaxed)),
                };
                return Err(at(charge(dep, &current, &failure)));
            }
        };
        if let Some(r) = &mut trip.record {
            r.connect = conn.connect_time();
            r.retried = conn.resent() || !Arc::ptr_eq(&current, slot.instance());
        }
        slot.instance().record_success();
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_DEPLOYMENT.clone(), dep.header_value.clone());
        // A gRPC status in the headers (a trailers-only answer) is counted now, else at the
        // trailers.
        let count_trailers = grpc
            && match upstream::grpc_status(&parts.headers) {
                Some(code) => {
                    dep.metrics.grpc_status(code);
                    false
                }
                None => true,
            };
        let metrics = count_trailers.then(|| dep.metrics.clone());
        let tap = prepared.tap.take().map(|mut t| {
            t.head(
                parts.status.as_u16(),
                grpc,
                upstream::grpc_status(&parts.headers),
            );
            t
        });
        // A REST answer that stalls for the request timeout is cut off; a gRPC stream may pause
        // between messages (a token stream, a client that paces its calls) for much longer.
        let idle = if grpc {
            GRPC_STREAM_IDLE.max(timeout)
        } else {
            timeout
        };
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, slot, conn, idle, metrics).with_tap(tap),
        ))
    }
}

/// A request checked and rewritten for the instance, and the deployment chosen for it.
struct Prepared {
    choice: Choice,
    request: upstream::Pending,
    /// Set once the client's body has been sent whole (None: the request has no body).
    sent: Option<Arc<Progress>>,
    /// A gRPC client's `grpc-timeout`.
    deadline: Option<std::time::Duration>,
    /// The live answer's tap, when mirrored copies compare with it.
    tap: Option<Box<LiveTap>>,
}

/// Everything about a request that needs no waiting: the key, the declared body size, the
/// choice of deployment, and the head as the instance gets it (hop-by-hop headers removed,
/// `x-forwarded-for` appended, origin-form target, the key removed).
fn prepare(
    table: &Table,
    req: Request<Incoming>,
    peer: &Peer,
    grpc: bool,
    trip: &mut Trip,
) -> Result<Prepared, (ProxyError, Option<usize>)> {
    let limit = table.max_request_body_bytes;
    if let Some(keys) = &table.keys
        && !authorized(req.headers(), keys)
    {
        return Err((ProxyError::Unauthorized, None));
    }
    if let Some(len) = content_length(req.headers())
        && len > limit
    {
        drain_in_background(req.into_body());
        return Err((ProxyError::BodyTooLarge { limit }, None));
    }
    let choice = table
        .choose_for(req.headers(), &mut rand::rng())
        .map_err(|e| (e, None))?;
    trip.routed(table, choice);
    let (mut parts, body) = req.into_parts();
    // A request that came over HTTP/2 names its host in the target, not in `Host`.
    // (An HTTP/1.1 request's target is in origin form: no authority, no lookup.)
    if !grpc
        && let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    upstream::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    append_forwarded_for(&mut parts.headers, peer);
    let deadline = if grpc {
        grpc::prepare(&mut parts)
    } else {
        // HTTP/1 origin form towards the instance.
        let path = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from(path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        parts.version = http::Version::HTTP_11;
        None
    };
    if table.keys.is_some() {
        // The key is scoregate's: the instance never sees it.
        parts.headers.remove(header::AUTHORIZATION);
    }
    let sent = (!body.is_end_stream()).then(|| Arc::new(Progress::default()));
    if trip.record.is_some() {
        trip.progress = sent.clone();
    }
    let request = Request::from_parts(
        parts,
        RequestBody::new(body, limit).with_progress(sent.clone()),
    );
    Ok(Prepared {
        choice,
        request: Some(Box::new(request)),
        sent,
        deadline,
        tap: None,
    })
}

/// Sends the request in `pending` to the slot's instance and waits for the answer's head. A
/// refused connection is tried once more on another instance of the deployment (nothing was
/// sent); `current` follows the instance being tried.
async fn exchange(
    dep: &Deployment,
    group: &Group,
    mut slot: Slot,
    pending: &mut upstream::Pending,
    current: &mut Arc<Instance>,
) -> Result<(Response<Incoming>, Held, Slot), ProxyError> {
    let mut retried = false;
    loop {
        let instance = slot.instance().clone();
        *current = instance.clone();
        let failure = match upstream::send(&instance, pending).await {
            Ok((resp, conn)) => return Ok((resp, conn, slot)),
            Err(f) => f,
        };
        let error = charge(dep, &instance, &failure);
        // Nothing was sent on a refused connection: try once more on another instance.
        if matches!(failure, Failure::Connect(_)) && !retried && group.reassign(&mut slot) {
            retried = true;
            continue;
        }
        return Err(error);
    }
}

/// Classifies a failed exchange with `instance` (the one map), charges the instance's health
/// when it was at fault, logs it, and returns the client's error.
#[cold]
fn charge(dep: &Deployment, instance: &Instance, failure: &Failure) -> ProxyError {
    let verdict = upstream::classify(failure);
    if verdict.fault == Fault::Instance {
        instance.record_failure();
    }
    match failure {
        Failure::Connect(e) => tracing::warn!(
            deployment = %dep.name,
            instance = %instance.addr(),
            error = %e,
            "cannot connect to instance"
        ),
        // Logged whoever was slow: the instance, or a client still sending its body.
        Failure::Timeout { timeout_ms, .. } => tracing::warn!(
            deployment = %dep.name,
            instance = %instance.addr(),
            timeout_ms,
            "instance did not answer in time"
        ),
        Failure::Broken(e) if verdict.fault == Fault::Instance => tracing::warn!(
            deployment = %dep.name,
            instance = %instance.addr(),
            error = %crate::error::describe(e),
            "upstream exchange failed"
        ),
        Failure::Lost => tracing::error!(
            deployment = %dep.name,
            "the request was lost before it was sent"
        ),
        Failure::Broken(_) | Failure::Client(_) => {}
    }
    verdict.error
}

/// Does the request carry `Authorization: Bearer KEY` with one of `keys` (SHA-256 digests)?
/// Every digest is compared in constant time.
fn authorized(headers: &http::HeaderMap, keys: &[[u8; 32]]) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let presented = config::sha256(v[7..].trim_ascii());
    keys.iter()
        .fold(subtle::Choice::from(0), |any, k| any | k.ct_eq(&presented))
        .into()
}

/// Reads and discards a refused body for a short while (nginx's lingering close), so that a
/// client still sending it reads the error instead of a connection reset.
fn drain_in_background(mut body: Incoming) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
    const LINGER_BYTES: u64 = 64 * 1024 * 1024;
    tokio::spawn(async move {
        let mut read = 0u64;
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Appends the client's address to `x-forwarded-for` (joining earlier values, as Envoy does).
fn append_forwarded_for(headers: &mut http::HeaderMap, peer: &Peer) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), peer.ip.clone());
        return;
    }
    let mut joined = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    joined.push_str(", ");
    joined.push_str(peer.ip.to_str().unwrap_or(""));
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    /// The size of the future `handle` builds for one real request, received over loopback.
    async fn request_future_size() -> usize {
        let yaml = "traffic: {blue: 90, green: 10}\ndeployments:\n  blue: {instances: [127.0.0.1:9]}\n  green: {instances: [127.0.0.1:9]}\n";
        let loaded = config::parse_str(yaml, std::path::Path::new("t.yaml")).expect("valid");
        let table = crate::routing::compile(&loaded.config, &Default::default(), None)
            .apply(&crate::metrics::Metrics::new());
        let proxy = Arc::new(Proxy::new(
            Arc::new(ArcSwap::from_pointee(table)),
            Arc::default(),
            Arc::default(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let (stream, remote) = listener.accept().await.expect("accept");
            let peer = Peer::new(remote);
            let service = service_fn(move |req| {
                let fut = proxy.handle(req, &peer, |r, _| r);
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(std::mem::size_of_val(&fut));
                }
                async { Ok::<_, Infallible>(Response::new(String::new())) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut client,
            b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .expect("write");
        rx.await.expect("size")
    }

    /// Every request allocates this future. Up to 1032 bytes, glibc serves it from its
    /// per-thread cache, a recently freed and so cache-warm block; past that it comes from the
    /// general bins, which costs about 500 more instructions per request and, with many
    /// connections, cold memory. Moving the request through async layers by value doubled it.
    #[tokio::test]
    async fn the_per_request_future_fits_the_allocators_per_thread_cache() {
        let size = request_future_size().await;
        eprintln!("FUTSIZE {size}");
        assert!(size <= 1032, "the per-request future is {size} bytes");
    }
}

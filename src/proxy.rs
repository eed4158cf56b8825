//! The data plane: accepts client connections and, per request, reads the table once, chooses a
//! deployment and an instance, forwards the request and streams the answer back. The middle of
//! the data path (`routing` → `proxy` → `upstream`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::RngExt;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::config;
use crate::error::{ProxyError, error_response};
use crate::mirror::Mirroring;
use crate::routing::{Choice, Deployment, Instance, Slot, Table};
use crate::upstream::{self, Failure, RequestBody, ResponseBody};

static X_DEPLOYMENT: HeaderName = HeaderName::from_static("x-deployment");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Shared state of the data plane: the live table (written only by the loader) and the bound
/// on mirrored copies.
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    mirroring: Mirroring,
}

impl Proxy {
    pub fn new(table: Arc<ArcSwap<Table>>) -> Self {
        Proxy {
            table,
            mirroring: Mirroring::default(),
        }
    }

    /// Serves one request. Never fails: every error becomes a JSON answer, and `finish` turns
    /// the answer into what the connection sends.
    ///
    /// The checks, the choice of deployment and the header rewrites run here, before the future
    /// is built; the future then borrows the request from one slot down to the instance. Futures
    /// that take the request by value keep a dead copy of it per layer: this way the whole
    /// future is about a third of the size, which matters because it is allocated per request.
    pub fn handle<T, F>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
        finish: F,
    ) -> impl Future<Output = T> + Send + use<T, F>
    where
        F: FnOnce(Response<ResponseBody>) -> T + Send + 'static,
    {
        let start = Instant::now();
        let proxy = self.clone();
        // The request keeps this table until it ends, whatever reloads happen meanwhile.
        let table = self.table.load_full();
        let pinned = req.headers().contains_key(&table.pin_header);
        let mut prepared = prepare(&table, req, peer);
        async move {
            let outcome = match prepared {
                Err(e) => Err(e),
                Ok(ref mut p) => proxy
                    .forward(&table, p.choice, &mut p.request, p.sent.as_deref())
                    .await
                    .map(|resp| (resp, p.choice.index)),
            };
            finish(match outcome {
                Ok((resp, index)) => {
                    table.deployments[index].metrics.request(
                        resp.status().as_u16(),
                        pinned,
                        start.elapsed(),
                    );
                    resp
                }
                Err((err, dep)) => {
                    let dep = dep.map(|i| &table.deployments[i]);
                    let m = dep.map_or(&table.unrouted, |d| &d.metrics);
                    if let Some(kind) = err.upstream_kind() {
                        m.upstream_error(kind);
                    }
                    m.request(err.status().as_u16(), pinned, start.elapsed());
                    error_response(&err, dep.map(|d| &d.header_value))
                }
            })
        }
    }

    /// Waits for a slot on the chosen deployment, then exchanges the request in `pending` with
    /// one of its instances within the deployment's request timeout.
    async fn forward(
        &self,
        table: &Arc<Table>,
        choice: Choice,
        pending: &mut upstream::Pending,
        sent: Option<&AtomicBool>,
    ) -> Result<Response<ResponseBody>, (ProxyError, Option<usize>)> {
        let dep = &table.deployments[choice.index];
        let at = |e| (e, Some(choice.index));
        let slot = dep.acquire().await.map_err(at)?;
        if let Some(req) = pending.as_deref_mut() {
            if !req.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(slot.instance.authority.as_str())
            {
                req.headers_mut().insert(header::HOST, v);
            }
            if !choice.pinned && table.mirror.is_some() {
                let roll = rand::rng().random_range(0..100u8);
                let tee = self.mirroring.start(table, req, roll);
                req.body_mut().set_tee(tee);
            }
        }

        let timeout = dep.settings.request_timeout;
        let timeout_ms = timeout.as_millis() as u64;
        // The instance being tried, for charging a timeout to the right one.
        let mut current = slot.instance.clone();
        let (resp, conn, slot) =
            match tokio::time::timeout(timeout, exchange(dep, slot, pending, &mut current)).await {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => return Err(at(e)),
                Err(_) => {
                    // A timeout while the client is still sending its body is not the
                    // instance's fault.
                    if sent.is_none_or(|s| s.load(Ordering::Relaxed)) {
                        current.record_failure();
                    }
                    tracing::warn!(
                        deployment = %dep.name,
                        instance = %current.addr,
                        timeout_ms,
                        "instance did not answer in time"
                    );
                    return Err(at(ProxyError::Timeout { timeout_ms }));
                }
            };
        slot.instance.record_success();
        let (mut parts, body) = resp.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_DEPLOYMENT.clone(), dep.header_value.clone());
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, slot, conn, timeout),
        ))
    }
}

/// A request checked and rewritten for the instance, and the deployment chosen for it.
struct Prepared {
    choice: Choice,
    request: upstream::Pending,
    /// Set once the client's body has been sent whole (None: the request has no body).
    sent: Option<Arc<AtomicBool>>,
}

/// Everything about a request that needs no waiting: the key, the declared body size, the
/// choice of deployment, and the head as the instance gets it (hop-by-hop headers removed,
/// `x-forwarded-for` appended, origin-form target, the key removed).
fn prepare(
    table: &Table,
    req: Request<Incoming>,
    peer: &Peer,
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
    let (mut parts, body) = req.into_parts();
    upstream::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    append_forwarded_for(&mut parts.headers, peer);
    // HTTP/1 origin form towards the instance.
    let path = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from(path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    parts.version = http::Version::HTTP_11;
    if table.keys.is_some() {
        // The key is scoregate's: the instance never sees it.
        parts.headers.remove(header::AUTHORIZATION);
    }
    let sent = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let request = Request::from_parts(
        parts,
        RequestBody::new(body, limit).with_sent_flag(sent.clone()),
    );
    Ok(Prepared {
        choice,
        request: Some(Box::new(request)),
        sent,
    })
}

/// Sends the request in `pending` to the slot's instance and waits for the answer's head. A
/// refused connection is tried once more on another instance of the deployment (nothing was
/// sent); `current` follows the instance being tried.
async fn exchange(
    dep: &Deployment,
    mut slot: Slot,
    pending: &mut upstream::Pending,
    current: &mut Arc<Instance>,
) -> Result<(Response<Incoming>, upstream::Conn, Slot), ProxyError> {
    let mut retried = false;
    loop {
        let instance = slot.instance.clone();
        *current = instance.clone();
        match upstream::send(&instance.pool, instance.authority.as_str(), pending).await {
            Ok((resp, conn)) => return Ok((resp, conn, slot)),
            Err(Failure::Connect(e)) => {
                instance.record_failure();
                tracing::warn!(
                    deployment = %dep.name,
                    instance = %instance.addr,
                    error = %e,
                    "cannot connect to instance"
                );
                if retried {
                    return Err(ProxyError::Connect);
                }
                retried = true;
                // Nothing was sent: try once more on another instance of the deployment.
                match dep.reassign(slot) {
                    Ok(s) => slot = s,
                    Err(_) => return Err(ProxyError::Connect),
                }
            }
            Err(Failure::Broken(e)) => {
                let err = upstream::classify(&e);
                if matches!(err, ProxyError::Protocol) {
                    instance.record_failure();
                    tracing::warn!(
                        deployment = %dep.name,
                        instance = %instance.addr,
                        error = %upstream::describe(&e),
                        "upstream exchange failed"
                    );
                }
                return Err(err);
            }
            Err(Failure::Client(e)) => {
                return Err(match e.downcast_ref::<upstream::BodyTooLarge>() {
                    Some(t) => ProxyError::BodyTooLarge { limit: t.limit },
                    None => ProxyError::ClientBody(upstream::describe(&*e)),
                });
            }
            Err(Failure::Lost) => {
                tracing::error!(deployment = %dep.name, "the request was lost before it was sent");
                return Err(ProxyError::Internal(
                    "the request was lost before it was sent",
                ));
            }
        }
    }
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

/// The connecting client, resolved once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as a header value, for `x-forwarded-for`.
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Peer { addr, ip }
    }
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

/// What a client connection is doing, for its watchdog: requests begun, and answers not yet
/// fully sent. Touched by the connection's own task only (uncontended atomics).
#[derive(Debug, Default)]
struct Activity {
    begun: AtomicU64,
    busy: AtomicU32,
}

/// An answer on its way: the connection is busy until it is dropped.
struct ActivityGuard(Arc<Activity>);

impl Activity {
    fn begin(this: &Arc<Activity>) -> ActivityGuard {
        this.begun.fetch_add(1, Ordering::Relaxed);
        this.busy.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(this.clone())
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body, holding the connection busy until hyper has sent (or dropped) it.
struct Guarded {
    body: ResponseBody,
    _guard: ActivityGuard,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = <ResponseBody as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Ends when the connection has been quiet for `timeout`: no answer being sent and no new
/// request begun (an idle keep-alive connection, or a request head that never completes).
/// Checked every eighth of `timeout`; activity is seen up to one check late, so the quiet time
/// counted from that check must reach `timeout` plus one check: it closes after 1× to 1.25×
/// `timeout` of quiet, never less. One timer per connection instead of one per request.
async fn quiet_watchdog(activity: &Activity, timeout: Duration) {
    let tick = (timeout / 8).max(Duration::from_millis(10));
    let mut last = u64::MAX;
    let mut quiet_since = tokio::time::Instant::now();
    let sleep = tokio::time::sleep(tick);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = tokio::time::Instant::now();
        let begun = activity.begun.load(Ordering::Relaxed);
        if begun != last || activity.busy.load(Ordering::Relaxed) > 0 {
            last = begun;
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= timeout + tick {
            return;
        }
        sleep.as_mut().reset(now + tick);
    }
}

/// Limits on what a client may send before its request is read.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Time a client has to send its request headers (slowloris); also how long an idle
    /// keep-alive connection is kept. Default 60 s.
    pub header_timeout: Duration,
}

/// Largest request head (request line and headers); more than 100 headers also get 431
/// (hyper's own limit).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Largest read buffer of a connection, either side (hyper's default is about 400 KiB): a
/// streamed body moves through it in slices this size, so 64 clients streaming large bodies
/// hold at most a few MiB. At least [`MAX_HEAD_BYTES`], which must fit in it.
pub const MAX_BUF_BYTES: usize = MAX_HEAD_BYTES + 1024;

/// Accepts connections on `listener` until `shutdown` turns true, then stops accepting at once
/// and lets the requests in flight finish for up to `drain`. Connection tasks log and never
/// panic.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ClientLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    let mut http = http1::Builder::new();
    // The header timeout is the connection's own watchdog (see `quiet_watchdog`): hyper's would
    // arm and drop a timer for every request, about 5 % of a request's instructions.
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let peer = Peer::new(remote);
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let guard = Activity::begin(&seen);
                // Boxed: hyper keeps the service's future inline in every client connection,
                // idle or not, and moves it in per request.
                Box::pin(proxy.handle(req, &peer, move |resp| {
                    Ok::<_, Infallible>(resp.map(|body| Guarded {
                        body,
                        _guard: guard,
                    }))
                }))
            }),
        );
        let conn = graceful.watch(conn);
        let timeout = limits.header_timeout;
        tokio::spawn(async move {
            tokio::select! {
                done = conn => if let Err(e) = done {
                    tracing::debug!(client = %remote, error = %e, "client connection ended with an error");
                },
                () = quiet_watchdog(&activity, timeout) => {
                    tracing::debug!(client = %remote, ?timeout, "no complete request in time; connection closed");
                }
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(connections = open, drain = ?drain, "stopped accepting; draining requests in flight");
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all requests finished"),
        Err(_) => {
            tracing::warn!(drain = ?drain, "drain deadline passed; closing the remaining connections")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `handle` builds for one real request, received over loopback.
    async fn request_future_size() -> usize {
        let yaml = "traffic: {blue: 90, green: 10}\ndeployments:\n  blue: {instances: [127.0.0.1:9]}\n  green: {instances: [127.0.0.1:9]}\n";
        let loaded = config::parse_str(yaml, std::path::Path::new("t.yaml")).expect("valid");
        let table = Table::compile(&loaded.config, 1, None, &crate::metrics::Metrics::new());
        let proxy = Arc::new(Proxy::new(Arc::new(ArcSwap::from_pointee(table))));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let (stream, remote) = listener.accept().await.expect("accept");
            let peer = Peer::new(remote);
            let service = service_fn(move |req| {
                let fut = proxy.handle(req, &peer, |r| r);
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
        assert!(size <= 1032, "the per-request future is {size} bytes");
    }

    /// How long the watchdog of `activity` takes to end (paused time).
    async fn watchdog_ends_after(activity: &Arc<Activity>, timeout: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        quiet_watchdog(activity, timeout).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_closed_within_a_quarter_past_its_timeout() {
        let a = Arc::new(Activity::default());
        let took = watchdog_ends_after(&a, Duration::from_secs(8)).await;
        assert!(
            took >= Duration::from_secs(8) && took <= Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_quiet_time_is_counted_from_the_end_of_the_last_answer_never_less() {
        let timeout = Duration::from_secs(8);
        for offset_ms in [100u64, 500, 900, 950, 1400] {
            let a = Arc::new(Activity::default());
            let start = tokio::time::Instant::now();
            let answered = async {
                // A request answered in 150 ms, between two checks or across one.
                tokio::time::sleep(Duration::from_millis(offset_ms)).await;
                let guard = Activity::begin(&a);
                tokio::time::sleep(Duration::from_millis(150)).await;
                drop(guard);
                tokio::time::Instant::now()
            };
            let (ended, ()) = tokio::join!(answered, quiet_watchdog(&a, timeout));
            let closed = tokio::time::Instant::now();
            assert!(
                closed - ended >= timeout && closed - start <= ended - start + timeout * 5 / 4,
                "offset {offset_ms} ms: closed {:?} after the answer",
                closed - ended
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_answers_in_progress_keep_the_connection() {
        let a = Arc::new(Activity::default());
        let timeout = Duration::from_secs(8);
        // An answer still being sent for 60 s: never closed meanwhile.
        let guard = Activity::begin(&a);
        let busy = tokio::time::timeout(Duration::from_secs(60), quiet_watchdog(&a, timeout)).await;
        assert!(busy.is_err(), "closed while an answer was being sent");
        drop(guard);
        // A new request every 5 s (each answered at once) keeps it open too.
        tokio::select! {
            () = quiet_watchdog(&a, timeout) => panic!("closed between requests 5 s apart"),
            () = async {
                for _ in 0..12 {
                    drop(Activity::begin(&a));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            } => {}
        }
        // Then quiet: closed 8 to 10 s after the last request.
        let took = watchdog_ends_after(&a, timeout).await;
        assert!(took <= Duration::from_secs(10), "{took:?}");
    }
}

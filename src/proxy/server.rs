//! Layer 4 (request path): the data-plane server. Accepts client connections, serves each
//! request through [`Proxy::handle`](super::Proxy), closes connections that stay quiet (one
//! watchdog per connection), and drains on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::io::MaybeTls;

use super::trip::Completion;
use crate::limits::{
    H2_MAX_LOCAL_RESETS, H2_MAX_PENDING_RESETS, H2_MAX_STREAMS, MAX_BUF_BYTES, MAX_HEAD_BYTES,
};
use crate::upstream::ResponseBody;

use super::Proxy;

/// The connecting client, resolved once per connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's IP as a header value, for `x-forwarded-for`.
    pub(super) ip: HeaderValue,
    /// The client's address, for the access log.
    pub(super) addr: SocketAddr,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Peer { ip, addr }
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

/// The response body, holding the connection busy until hyper has sent (or dropped) it, and
/// completing the request's record (when logged or traced) at its last byte.
struct Guarded {
    body: ResponseBody,
    _guard: ActivityGuard,
    done: Option<Completion>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or the answer broke off.
        if let Some(done) = self.done.take() {
            // An answer without a body is never polled: it ended whole.
            done.end(hyper::body::Body::is_end_stream(&self.body));
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = <ResponseBody as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if self.done.is_some() {
            self.completing(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Guarded {
    /// Counts what the answer sent into the request's record, and hands the record on at the
    /// answer's end.
    #[cold]
    fn completing(
        &mut self,
        polled: &std::task::Poll<
            Option<Result<hyper::body::Frame<bytes::Bytes>, <Self as hyper::body::Body>::Error>>,
        >,
    ) {
        use std::task::Poll;
        let ended = match polled {
            Poll::Pending => return,
            Poll::Ready(None) => Some(true),
            Poll::Ready(Some(Err(_))) => Some(false),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(r) = self.done.as_mut().and_then(Completion::record) {
                    if let Some(d) = frame.data_ref() {
                        r.bytes_out += d.len() as u64;
                    } else if let Some(t) = frame.trailers_ref() {
                        r.grpc_status = crate::upstream::grpc_status(t).or(r.grpc_status);
                    }
                }
                hyper::body::Body::is_end_stream(&self.body).then_some(true)
            }
        };
        if let Some(completed) = ended
            && let Some(done) = self.done.take()
        {
            done.end(completed);
        }
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
pub(crate) struct ClientLimits {
    /// Time a client has to send its request headers (slowloris); also how long an idle
    /// keep-alive connection is kept; also the time a TLS handshake may take. Default 60 s.
    pub(crate) header_timeout: Duration,
    /// Whether the listener speaks TLS (read at start; the certificates rotate).
    pub(crate) tls: bool,
}

/// Accepts connections on `listener` until `shutdown` turns true, then stops accepting at once
/// and lets the requests in flight finish for up to `drain`. Connection tasks log and never
/// panic.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ClientLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) {
    // One listener, both protocols: HTTP/1.1, and HTTP/2 with prior knowledge (h2c), told
    // apart by the connection preface (see `detect`).
    let mut h1 = http1::Builder::new();
    // The header timeout is the connection's own watchdog (see `quiet_watchdog`): hyper's would
    // arm and drop a timer for every request, about 5 % of a request's instructions.
    h1.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Hostile HTTP/2 costs bounded memory and CPU: streams per connection, header list size
    // (CONTINUATION floods), streams reset by the client before they are answered (rapid
    // reset, CVE-2023-44487) and streams scoregate had to reset; h2 bounds SETTINGS and PING
    // floods itself.
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_send_buf_size(MAX_BUF_BYTES);
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
        // The certificate of the moment: a rotation applies to connections accepted after it.
        // A cleartext listener does not look.
        let tls = match limits.tls {
            false => None,
            true => match proxy.tls() {
                Some(config) => Some(config),
                // Not reached: the loader keeps TLS on while the listener was started with it.
                None => continue,
            },
        };
        let proxy = proxy.clone();
        let peer = Peer::new(remote);
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        let service = service_fn(move |req| {
            let guard = Activity::begin(&seen);
            // Boxed: hyper keeps the service's future inline in every client connection,
            // idle or not, and moves it in per request.
            Box::pin(proxy.handle(req, &peer, move |resp, done| {
                Ok::<_, Infallible>(resp.map(|body| Guarded {
                    body,
                    _guard: guard,
                    done,
                }))
            }))
        });
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let mut stop = shutdown.clone();
        let timeout = limits.header_timeout;
        tokio::spawn(async move {
            let conn = Conn {
                h1,
                h2,
                watcher,
                activity,
                timeout,
                remote,
            };
            match tls {
                None => {
                    let preface = tokio::select! {
                        found = detect(&stream) => found,
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = quiet_watchdog(&conn.activity, timeout) => return,
                    };
                    if let Ok(Some(h2)) = preface {
                        conn.serve(MaybeTls::Plain(stream), h2, service).await;
                    }
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let handshake = tokio::select! {
                        done = acceptor.accept(stream) => done,
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = quiet_watchdog(&conn.activity, timeout) => {
                            tracing::debug!(client = %remote, "TLS handshake not finished in time; connection closed");
                            return;
                        }
                    };
                    let stream = match handshake {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let (_, session) = stream.get_ref();
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    tracing::debug!(
                        client = %remote,
                        sni = session.server_name().unwrap_or("-"),
                        version = ?session.protocol_version(),
                        alpn = if h2 { "h2" } else { "http/1.1" },
                        "TLS connection"
                    );
                    conn.serve(MaybeTls::Tls(Box::new(stream)), h2, service)
                        .await;
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

/// A client's connection, plain or TLS.
type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// A client connection's server side, once its protocol is known.
struct Conn {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    activity: Arc<Activity>,
    timeout: Duration,
    remote: SocketAddr,
}

impl Conn {
    /// Serves `io` as HTTP/2 (`h2`) or HTTP/1.1 until it ends, goes quiet or is drained. One
    /// stream type for plain and TLS connections: hyper's server code is built once.
    async fn serve<S>(self, io: ClientStream, h2: bool, service: S)
    where
        S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Guarded>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(io);
        if h2 {
            let conn = self.watcher.watch(self.h2.serve_connection(io, service));
            until_quiet(conn, &self.activity, self.timeout, self.remote).await;
        } else {
            let conn = self.watcher.watch(self.h1.serve_connection(io, service));
            until_quiet(conn, &self.activity, self.timeout, self.remote).await;
        }
    }
}

/// Serves a client connection until it ends or its watchdog finds it quiet for `timeout`.
async fn until_quiet<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    activity: &Activity,
    timeout: Duration,
    remote: SocketAddr,
) {
    tokio::select! {
        done = conn => if let Err(e) = done {
            tracing::debug!(client = %remote, error = %e, "client connection ended with an error");
        },
        () = quiet_watchdog(activity, timeout) => {
            tracing::debug!(client = %remote, ?timeout, "no complete request in time; connection closed");
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a new connection speaks HTTP/2 (prior knowledge): `Some(true)` once the whole
/// preface has arrived, `Some(false)` at the first byte that differs (HTTP/1.1), `None` when
/// the client closed first. Peeks, so nothing is taken from the stream. A client that stops
/// within the preface is polled until the connection's watchdog closes it.
async fn detect(stream: &tokio::net::TcpStream) -> std::io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

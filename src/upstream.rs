//! The upstream side of the data path: a lock-free pool of HTTP/1 connections per instance, the
//! exchange with an instance (retrying, on a fresh connection, what a closed pooled connection
//! could not take), the request body that enforces the size limit while it streams, the response
//! body that holds the instance's slot until it has streamed and cuts off a stalled answer,
//! hop-by-hop header stripping and the classification of failures.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ProxyError;
use crate::mirror::{CopyBody, Tee};
use crate::routing::Slot;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeouts of common
/// scoring servers (5 s for uvicorn and Node), so the pool rarely offers a connection the
/// instance is about to close; the rest is caught by [`send`]'s retry.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per instance.
pub const POOL_MAX_IDLE: usize = 512;
/// A pooled connection idle for this long may have been closed by the instance while we were
/// sending: such a request is prepared so that it can be sent again.
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(250);
/// Largest request body kept for such a resend.
pub const REPLAY_MAX_BODY: u64 = 64 * 1024;

/// An idle connection to an instance.
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// One instance's idle connections: a bounded lock-free queue.
pub struct Pool {
    idle: ArrayQueue<Idle>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.len())
            .finish()
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: ArrayQueue::new(POOL_MAX_IDLE),
        }
    }
}

/// A connection checked out of the pool or newly made.
pub struct Conn {
    sender: SendRequest<RequestBody>,
    /// How long it sat idle in the pool (None: new).
    pub idle_for: Option<Duration>,
}

impl Pool {
    /// A live idle connection, if any; stale and closed ones are dropped on the way.
    pub fn checkout(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            let idle_for = idle.since.elapsed();
            if idle_for < POOL_IDLE_TIMEOUT && !idle.sender.is_closed() {
                return Some(Conn {
                    sender: idle.sender,
                    idle_for: Some(idle_for),
                });
            }
        }
        None
    }

    /// Returns a connection whose exchange completed.
    pub fn checkin(&self, conn: Conn) {
        if !conn.sender.is_closed() {
            // A full pool drops the connection.
            let _ = self.idle.push(Idle {
                sender: conn.sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`] (run periodically).
    pub fn sweep(&self) {
        for _ in 0..self.idle.len() {
            match self.idle.pop() {
                Some(idle)
                    if idle.since.elapsed() < POOL_IDLE_TIMEOUT && !idle.sender.is_closed() =>
                {
                    let _ = self.idle.push(idle);
                }
                Some(_) => {}
                None => break,
            }
        }
    }

    /// Closes every idle connection (an ejected instance).
    pub fn clear(&self) {
        while self.idle.pop().is_some() {}
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Opens a connection to `authority` (`host:port`; a DNS name is resolved by the system).
/// A TCP connection to `authority` (`host:port`; a DNS name is resolved by the system).
pub async fn tcp_connect(authority: &str) -> std::io::Result<TcpStream> {
    match authority.parse::<std::net::SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await,
        Err(_) => TcpStream::connect(authority).await,
    }
}

pub async fn connect(authority: &str) -> std::io::Result<Conn> {
    let stream = tcp_connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(crate::proxy::MAX_BUF_BYTES)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn {
        sender,
        idle_for: None,
    })
}

/// How an exchange with an instance failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made: nothing was sent; the request is back in its `pending` slot
    /// for a retry.
    Connect(std::io::Error),
    /// The exchange broke after the request was (partly) sent.
    Broken(hyper::Error),
    /// The client's body could not be read (or passed the limit) before sending.
    Client(Box<dyn StdError + Send + Sync>),
    /// There was no request left in the slot to send: a fault of scoregate's own.
    Lost,
}

/// A request that can be sent again: the head and a fully read body.
struct Replay {
    head: Request<()>,
    body: Bytes,
    limit: u64,
}

impl Replay {
    fn request(&self) -> Request<RequestBody> {
        copy_head(
            &self.head,
            RequestBody::buffered(self.body.clone(), self.limit),
        )
    }
}

/// A request with a copy of `from`'s method, URI, version and headers, and `body`.
pub fn copy_head<A, B>(from: &Request<A>, body: B) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = from.method().clone();
    *req.uri_mut() = from.uri().clone();
    *req.version_mut() = from.version();
    *req.headers_mut() = from.headers().clone();
    req
}

/// Reads a small body fully so that the request can be sent again.
async fn prepare_replay(req: Request<RequestBody>) -> Result<Replay, Failure> {
    let (parts, body) = req.into_parts();
    let limit = body.limit;
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(Failure::Client)?
        .to_bytes();
    Ok(Replay {
        head: Request::from_parts(parts, ()),
        body,
        limit,
    })
}

/// A request waiting to be sent, boxed: the request's future holds this slot for its whole
/// life, and a box keeps that future small enough for the allocator's fast path.
pub type Pending = Option<Box<Request<RequestBody>>>;

/// Sends the request in `pending` to the instance behind `pool` and `authority`, on an idle
/// pooled connection when there is one. A request that a closed pooled connection could not take
/// is sent on another; a request on a connection that sat idle for a while is kept (small bodies)
/// and sent again on a new connection if that one closes without answering.
///
/// The request is taken from `pending` when it is handed to a connection, and put back whenever
/// it comes back unsent, so after [`Failure::Connect`] it is there for another instance. It is
/// borrowed rather than moved in so that the request's future holds it once, not once per layer.
pub async fn send(
    pool: &Pool,
    authority: &str,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Conn), Failure> {
    // Not `while let`: its scrutinee would be kept across the awaits in the loop.
    loop {
        let Some(mut conn) = pool.checkout() else {
            break;
        };
        let small = pending
            .as_ref()
            .and_then(|r| r.body().size_hint().upper())
            .is_some_and(|n| n <= REPLAY_MAX_BODY);
        if small && conn.idle_for.is_some_and(|d| d >= REPLAY_AFTER_IDLE) {
            // Cold paths are boxed: they would otherwise grow every request's future by their
            // state.
            return Box::pin(async move {
                let req = take(pending)?;
                let replay = prepare_replay(req).await?;
                send_replayable(authority, conn, replay, pending).await
            })
            .await;
        }
        if conn.sender.ready().await.is_err() {
            continue;
        }
        // Bound first: a temporary in the awaited expression would be kept across the await.
        let req = take(pending)?;
        match conn.sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(mut e) => match e.take_message() {
                // Never written: the connection was closed. Try the next one.
                Some(r) => *pending = Some(Box::new(r)),
                None => return Err(Failure::Broken(e.into_error())),
            },
        }
    }
    Box::pin(async move {
        let conn = connect(authority).await.map_err(Failure::Connect)?;
        send_on_new(conn, pending).await
    })
    .await
}

/// The request waiting in `pending`. Always there when a send starts; an empty slot is reported
/// as an error rather than trusted.
fn take(pending: &mut Pending) -> Result<Request<RequestBody>, Failure> {
    match pending.take() {
        Some(req) => Ok(*req),
        None => Err(Failure::Lost),
    }
}

async fn send_on_new(
    mut conn: Conn,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Conn), Failure> {
    if conn.sender.ready().await.is_err() {
        let e = std::io::Error::other("the new connection closed before use");
        return Err(Failure::Connect(e));
    }
    let req = take(pending)?;
    match conn.sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, conn)),
        Err(mut e) => match e.take_message() {
            Some(r) => {
                *pending = Some(Box::new(r));
                Err(Failure::Connect(std::io::Error::other(e.into_error())))
            }
            None => Err(Failure::Broken(e.into_error())),
        },
    }
}

async fn send_replayable(
    authority: &str,
    mut conn: Conn,
    replay: Replay,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Conn), Failure> {
    let mut written = None;
    if conn.sender.ready().await.is_ok() {
        match conn.sender.try_send_request(replay.request()).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(e) if e.message().is_none() && !closed_before_answer(e.error()) => {
                return Err(Failure::Broken(e.into_error()));
            }
            Err(e) => {
                tracing::debug!(error = %e.error(), "pooled connection closed under the request; sending it again");
                if e.message().is_none() {
                    written = Some(e.into_error());
                }
            }
        }
    }
    *pending = Some(Box::new(replay.request()));
    let result = match connect(authority).await {
        Ok(conn) => send_on_new(conn, pending).await,
        Err(e) => Err(Failure::Connect(e)),
    };
    match (result, written) {
        // Once written, the request is not offered to another instance as well: a new
        // connection to this one that fails before use ends the exchange.
        (Err(Failure::Connect(_)), Some(first)) => {
            *pending = None;
            Err(Failure::Broken(first))
        }
        (result, _) => result,
    }
}

/// The connection ended with no answer at all (closed or reset under the request).
fn closed_before_answer(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return true;
    }
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

/// Raised by [`RequestBody`] when a streamed body passes the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client's request body on its way to the instance, cut off past `limit` bytes.
#[derive(Debug)]
pub struct RequestBody {
    inner: Inner,
    remaining: u64,
    limit: u64,
    /// Feeds a mirrored copy, if this request is mirrored.
    tee: Option<Tee>,
    /// Set once the whole body has been sent (only for requests with a body).
    sent: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug)]
enum Inner {
    Streaming(Incoming),
    Buffered(Option<Bytes>),
    Copy(CopyBody),
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner: Inner::Streaming(inner),
            remaining: limit,
            limit,
            tee: None,
            sent: None,
        }
    }

    fn buffered(bytes: Bytes, limit: u64) -> Self {
        RequestBody {
            inner: Inner::Buffered((!bytes.is_empty()).then_some(bytes)),
            remaining: limit,
            limit,
            tee: None,
            sent: None,
        }
    }

    /// The body of a mirrored copy.
    pub fn copy(body: CopyBody) -> Self {
        RequestBody {
            inner: Inner::Copy(body),
            remaining: u64::MAX,
            limit: u64::MAX,
            tee: None,
            sent: None,
        }
    }

    /// Reports through `flag` when the whole body has been sent.
    pub fn with_sent_flag(
        mut self,
        flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        self.sent = flag;
        self
    }

    fn mark_sent(&mut self) {
        if let Some(f) = self.sent.take() {
            f.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Copies every frame to a mirrored request as it streams.
    pub fn set_tee(&mut self, tee: Option<Tee>) {
        self.tee = tee;
    }

    fn inner_ended(&self) -> bool {
        match &self.inner {
            Inner::Streaming(i) => i.is_end_stream(),
            Inner::Buffered(b) => b.is_none(),
            Inner::Copy(c) => c.is_end_stream(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Streaming(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as Self::Error),
            Inner::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Copy(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as Self::Error),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tee = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                    this.remaining -= n;
                    if let Some(tee) = &mut this.tee {
                        tee.data(data);
                    }
                }
                if this.inner_ended() {
                    // The client may not poll past the last frame.
                    if let Some(tee) = &mut this.tee {
                        tee.end();
                    }
                    this.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.tee = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(tee) = &mut this.tee {
                    tee.end();
                }
                this.mark_sent();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Streaming(i) => i.size_hint(),
            Inner::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Copy(c) => c.size_hint(),
        }
    }
}

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the instance sent nothing for {0:?} while streaming its answer")]
pub struct BodyStalled(pub Duration);

/// An instance's answer on its way to the client. Holds the instance's slot and connection
/// until the last byte; a body that stalls for `idle` is cut off.
pub struct UpstreamBody {
    body: Incoming,
    slot: Option<Slot>,
    conn: Option<Conn>,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An answer read to its end whose last poll never came still returns its connection.
        if self.body.is_end_stream() {
            self.finish();
        }
    }
}

/// The body sent to the client: an instance's streamed answer, or a small body scoregate wrote.
pub enum ResponseBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Upstream(_) => f.write_str("ResponseBody::Upstream"),
            ResponseBody::Full(b) => write!(f, "ResponseBody::Full({b:?})"),
        }
    }
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes))
    }

    pub fn upstream(body: Incoming, slot: Slot, conn: Conn, idle: Duration) -> Self {
        ResponseBody::Upstream(UpstreamBody {
            body,
            slot: Some(slot),
            conn: Some(conn),
            idle,
            timer: None,
        })
    }
}

impl UpstreamBody {
    /// The answer is complete: the connection goes back to the pool, the slot is freed.
    fn finish(&mut self) {
        if let (Some(slot), Some(conn)) = (self.slot.take(), self.conn.take()) {
            slot.instance.pool.checkin(conn);
        }
    }

    /// The answer broke off: the connection is dropped and the instance charged a failure.
    fn fail(&mut self) {
        self.conn.take();
        if let Some(slot) = self.slot.take() {
            slot.instance.record_failure();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let up = match &mut *self {
            ResponseBody::Full(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))));
            }
            ResponseBody::Upstream(up) => up,
        };
        match Pin::new(&mut up.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if up.body.is_end_stream() {
                    // The last frame: the server may not poll again, so finish now.
                    up.finish();
                } else if let Some(t) = up.timer.as_mut() {
                    let deadline = tokio::time::Instant::now() + up.idle;
                    t.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                up.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                up.fail();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                let idle = up.idle;
                let timer = up
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        if let Some(slot) = &up.slot {
                            tracing::warn!(instance = %slot.instance.addr, "answer stalled; cut off");
                        }
                        up.fail();
                        Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(up) => up.body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(up) => up.body.size_hint(),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Headers that describe one hop and never cross the proxy (RFC 9110 section 7.6.1), plus
/// `expect` (100-continue is answered by scoregate's own server).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the entries, without hashing: which hop-by-hop headers are present (a bit
    // each), and whether `Connection` names a header beyond the usual `keep-alive` / `close`.
    let mut present = 0u16;
    let mut names_others = false;
    for (name, value) in headers.iter() {
        // Hop-by-hop names are 2, 7, 10 or 16–19 bytes long: most names stop at the length.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
            if i == 0 {
                names_others |= connection_tokens(value).any(|t| {
                    !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                });
            }
        }
    }
    if present == 0 {
        return;
    }
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_tokens)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// The non-empty, trimmed tokens of a `Connection` value.
fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `err` or one of its causes is an `E`.
pub fn caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps an exchange that broke to the error the client sees: the body limit (413), the
/// client's own body failing (400), else the instance broke it (502).
pub fn classify(err: &hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge { limit: t.limit };
        }
        source = e.source();
    }
    if err.is_user() {
        return ProxyError::ClientBody(describe(err));
    }
    ProxyError::Protocol
}

/// One line for the log: the error and its causes.
pub fn describe(err: &dyn StdError) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("content-type", "application/json"),
            ("connection", "Keep-Alive, X-Trace"),
            ("connection", " x-other ,"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("content-length", "2"), ("date", "x"), ("x-y", "z")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        let mut h = map(&[("connection", "close"), ("server", "s")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["server"]);
    }
}

//! Layer 2 (one instance): the instance's idle HTTP/1 connections, a bounded lock-free queue,
//! and how a new connection is opened (TCP, then TLS when the instance has it).

use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::addr::InstanceAddr;
use crate::body::RequestBody;
use crate::io::MaybeTls;
use crate::limits::MAX_BUF_BYTES;

use super::tls::Tls;

/// How long an idle pooled connection is kept. Shorter than the keep-alive timeouts of common
/// scoring servers (5 s for uvicorn and Node), so the pool rarely offers a connection the
/// instance is about to close; the rest is caught by `upstream::send`'s retry.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per instance.
pub(crate) const POOL_MAX_IDLE: usize = 512;

/// An idle connection to an instance.
struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// One instance's idle connections: a bounded lock-free queue.
pub(crate) struct Pool {
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
pub(crate) struct Conn {
    pub(crate) sender: SendRequest<RequestBody>,
    /// Microseconds it sat idle in the pool (0: new). (Microseconds in a `u32`, as
    /// `connect_us`: the connection is held in every request's future, which stays small.)
    pub(crate) idle_us: u32,
    /// Microseconds it took to open (TCP and TLS), for a connection opened for this request;
    /// 0 for a pooled one.
    pub(crate) connect_us: u32,
    /// The request was sent again on this connection after another one closed under it.
    pub(crate) resent: bool,
}

impl Pool {
    /// A live idle connection, if any; stale and closed ones are dropped on the way.
    pub(crate) fn checkout(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            let idle_for = idle.since.elapsed();
            if idle_for < POOL_IDLE_TIMEOUT && !idle.sender.is_closed() {
                return Some(Conn {
                    sender: idle.sender,
                    idle_us: micros(idle_for),
                    connect_us: 0,
                    resent: false,
                });
            }
        }
        None
    }

    /// Returns a connection whose exchange completed.
    pub(crate) fn checkin(&self, conn: Conn) {
        if !conn.sender.is_closed() {
            // A full pool drops the connection.
            let _ = self.idle.push(Idle {
                sender: conn.sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`] (run periodically).
    pub(crate) fn sweep(&self) {
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
    pub(crate) fn clear(&self) {
        while self.idle.pop().is_some() {}
    }
}

/// A TCP connection to `addr` (a DNS name is resolved by the system).
async fn tcp_connect(addr: &InstanceAddr) -> std::io::Result<TcpStream> {
    match addr.socket_addr() {
        Some(a) => TcpStream::connect(a).await,
        None => TcpStream::connect(addr.as_str()).await,
    }
}

/// A new connection to `addr` for HTTP, without Nagle's delay: TCP, then the TLS handshake
/// when the instance has `tls`.
pub(super) async fn open(addr: &InstanceAddr, tls: Option<&Tls>) -> std::io::Result<Stream> {
    let tcp = tcp_connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(TokioIo::new(match tls {
        None => MaybeTls::Plain(tcp),
        Some(tls) => MaybeTls::Tls(Box::new(tls.handshake(tcp).await?)),
    }))
}

/// An open connection to an instance, cleartext or TLS: one type, so that hyper's client code
/// is built once.
pub(super) type Stream = TokioIo<MaybeTls<TlsStream<TcpStream>>>;

/// Drives an upstream connection in its own task until it ends. The receiver gets the error
/// it ended with, if any (drop it when no one will ask).
pub(super) fn drive<F>(conn: F) -> Ended
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
            let _ = tx.send(e);
        }
    });
    rx
}

/// The error a new connection ended with: the cause of a `ready()` that failed with no reason
/// of its own (a TLS 1.3 instance refusing the client certificate says so right after the
/// handshake, which the connection's task reads).
pub(crate) type Ended = tokio::sync::oneshot::Receiver<hyper::Error>;

/// An HTTP/1.1 connection to `addr` (over TLS with `tls`), driven by its own task, and how to
/// learn why it ended.
pub(crate) async fn connect(
    addr: &InstanceAddr,
    tls: Option<&Tls>,
) -> std::io::Result<(Conn, Ended)> {
    let began = Instant::now();
    let (sender, ended) = handshake(open(addr, tls).await?).await?;
    let conn = Conn {
        sender,
        idle_us: 0,
        connect_us: micros(began.elapsed()),
        resent: false,
    };
    Ok((conn, ended))
}

/// Microseconds, at least 1 (0 means "not opened now"), at most `u32::MAX`.
pub(super) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
}

async fn handshake(io: Stream) -> std::io::Result<(SendRequest<RequestBody>, Ended)> {
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_BUF_BYTES)
        .handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    Ok((sender, drive(conn)))
}

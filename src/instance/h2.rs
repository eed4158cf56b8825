//! Layer 2 (one instance): a gRPC instance's HTTP/2 connections. A few multiplexed connections,
//! each carrying up to [`MAX_STREAMS`] streams at once; a request takes a [`Lease`] on a stream
//! of a live connection with room, and another connection is opened only when every one is
//! full. A connection that closes or goes away (GOAWAY) is replaced; the streams it still
//! carries finish on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::addr::InstanceAddr;
use crate::body::RequestBody;
use crate::limits::MAX_HEAD_BYTES;

use super::pool::{Stream, drive, open};
use super::tls::Tls;

/// Connections kept per instance.
pub(crate) const MAX_CONNS: usize = 4;
/// Streams one connection carries at once before another is opened. The instance's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` still applies: past it, streams wait on the connection.
pub(crate) const MAX_STREAMS: u32 = 100;
/// An idle connection is pinged this often, and closed when a ping goes unanswered for as long.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// One HTTP/2 connection and the streams it carries now.
struct Shared {
    sender: SendRequest<RequestBody>,
    streams: AtomicU32,
}

/// A stream on a connection, given back when dropped (the answer has streamed, or failed).
pub(crate) struct Lease {
    conn: Arc<Shared>,
    /// Microseconds it took to open the connection, when it was opened for this stream; else 0.
    pub(crate) connect_us: u32,
    /// The call was sent again after a connection refused it.
    pub(crate) resent: bool,
}

impl Lease {
    /// The connection's sender, to send this stream's request.
    pub(crate) fn sender(&self) -> SendRequest<RequestBody> {
        self.conn.sender.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("streams", &self.conn.streams.load(Ordering::Relaxed))
            .finish()
    }
}

/// An instance's HTTP/2 connections.
pub(crate) struct H2Pool {
    slots: [ArcSwapOption<Shared>; MAX_CONNS],
    /// One connection is opened at a time, so that a burst of calls shares it.
    connecting: Semaphore,
}

impl Default for H2Pool {
    fn default() -> Self {
        H2Pool {
            slots: Default::default(),
            connecting: Semaphore::new(1),
        }
    }
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.slots.iter().filter(|s| s.load().is_some()).count();
        f.debug_struct("H2Pool")
            .field("connections", &open)
            .finish()
    }
}

// === impl H2Pool ===

impl H2Pool {
    /// A stream on a live connection with room, opening a connection to `addr` (over `tls`)
    /// when none has.
    pub(crate) async fn lease(
        &self,
        addr: &InstanceAddr,
        tls: Option<&Tls>,
    ) -> std::io::Result<Lease> {
        if let Some(lease) = self.try_lease() {
            return Ok(lease);
        }
        Box::pin(self.lease_new(addr, tls)).await
    }

    /// A stream on a connection already open, if one has room.
    fn try_lease(&self) -> Option<Lease> {
        for slot in &self.slots {
            let guard = slot.load();
            let Some(conn) = guard.as_ref() else {
                continue;
            };
            if conn.sender.is_closed() || !conn.sender.is_ready() {
                continue;
            }
            let taken = conn
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < MAX_STREAMS).then_some(n + 1)
                })
                .is_ok();
            if taken {
                return Some(Lease {
                    conn: conn.clone(),
                    connect_us: 0,
                    resent: false,
                });
            }
        }
        None
    }

    async fn lease_new(&self, addr: &InstanceAddr, tls: Option<&Tls>) -> std::io::Result<Lease> {
        // Closed only by dropping the pool; then a new connection is simply not shared.
        let _gate = self.connecting.acquire().await.ok();
        if let Some(lease) = self.try_lease() {
            return Ok(lease);
        }
        let began = std::time::Instant::now();
        let conn = Arc::new(Shared {
            sender: connect(addr, tls).await?,
            streams: AtomicU32::new(1),
        });
        let connect_us = super::pool::micros(began.elapsed());
        // Into a free slot, or over a closed connection; when all hold live full connections
        // the new one serves this stream only and closes after it.
        for slot in &self.slots {
            let current = slot.load_full();
            let free = current
                .as_ref()
                .is_none_or(|c| c.sender.is_closed() || !c.sender.is_ready());
            if free {
                let prev = slot.compare_and_swap(&current, Some(conn.clone()));
                if same(&prev, &current) {
                    break;
                }
            }
        }
        Ok(Lease {
            conn,
            connect_us,
            resent: false,
        })
    }

    /// Forgets the connection of `lease` (it refused a stream: closed or going away).
    pub(crate) fn discard(&self, lease: &Lease) {
        for slot in &self.slots {
            let current = slot.load_full();
            if current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &lease.conn))
            {
                slot.compare_and_swap(&current, None::<Arc<Shared>>);
            }
        }
    }

    /// Closes every connection not carrying a stream (an ejected instance). Streams in flight
    /// finish on theirs.
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.store(None);
        }
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    }
}

/// An HTTP/2 connection to `addr` — over TLS with `tls` (ALPN `h2`), else cleartext with
/// prior knowledge — driven by its own task.
async fn connect(
    addr: &InstanceAddr,
    tls: Option<&Tls>,
) -> std::io::Result<SendRequest<RequestBody>> {
    handshake(open(addr, tls).await?).await
}

async fn handshake(io: Stream) -> std::io::Result<SendRequest<RequestBody>> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    // The streams' own errors say why a connection failed them.
    drop(drive(conn));
    Ok(sender)
}

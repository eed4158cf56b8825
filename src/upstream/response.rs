//! Layer 3 (upstream): the body sent to the client — an instance's streamed answer, which
//! holds the instance's slot and connection until its last byte and cuts off a stalled answer,
//! or a small body scoregate wrote.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use std::sync::Arc;

use crate::instance::{Conn, Conns, Lease, Slot};
use crate::metrics::DeploymentMetrics;
use crate::shadow::LiveTap;

/// The connection an answer arrives on, held until it has streamed.
pub(crate) enum Held {
    /// An HTTP/1.1 connection, back to the pool when the answer is complete.
    H1(Conn),
    /// A stream of an HTTP/2 connection, given back when the lease is dropped.
    H2(Lease),
}

impl Held {
    /// The time it took to open the connection, when it was opened for this request.
    pub(crate) fn connect_time(&self) -> Option<Duration> {
        let us = match self {
            Held::H1(c) => c.connect_us,
            Held::H2(l) => l.connect_us,
        };
        (us > 0).then(|| Duration::from_micros(us.into()))
    }

    /// The request was sent again on a new connection after another closed under it.
    pub(crate) fn resent(&self) -> bool {
        match self {
            Held::H1(c) => c.resent,
            Held::H2(l) => l.resent,
        }
    }

    /// The exchange completed: an HTTP/1.1 connection goes back to `slot`'s pool.
    pub(crate) fn release(self, slot: &Slot) {
        if let (Held::H1(conn), Conns::H1(pool)) = (self, slot.instance().conns()) {
            pool.checkin(conn);
        }
    }
}

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the instance sent nothing for {0:?} while streaming its answer")]
pub(crate) struct BodyStalled(pub Duration);

/// An instance's answer on its way to the client. Holds the instance's slot and connection
/// until the last byte; a body that stalls for `idle` is cut off.
pub(crate) struct UpstreamBody {
    body: Incoming,
    slot: Option<Slot>,
    conn: Option<Held>,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// For a gRPC call whose status comes in the trailers: where to count it.
    grpc: Option<Arc<DeploymentMetrics>>,
    /// The live answer's tap for shadow comparison (`None`: not compared, nothing to do).
    tap: Option<Box<LiveTap>>,
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
pub(crate) enum ResponseBody {
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
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes))
    }

    /// An instance's answer; `grpc`: count the gRPC status of its trailers there.
    pub(crate) fn upstream(
        body: Incoming,
        slot: Slot,
        conn: Held,
        idle: Duration,
        grpc: Option<Arc<DeploymentMetrics>>,
    ) -> Self {
        ResponseBody::Upstream(UpstreamBody {
            body,
            slot: Some(slot),
            conn: Some(conn),
            idle,
            timer: None,
            grpc,
            tap: None,
        })
    }

    /// Hands the answer, as it streams, to the copies comparing with it.
    pub(crate) fn with_tap(mut self, tap: Option<Box<LiveTap>>) -> Self {
        if let ResponseBody::Upstream(up) = &mut self {
            up.tap = tap;
        }
        self
    }
}

impl UpstreamBody {
    /// The answer is complete: the connection goes back to the pool, the slot is freed.
    fn finish(&mut self) {
        if let (Some(slot), Some(conn)) = (self.slot.take(), self.conn.take()) {
            conn.release(&slot);
        }
        if let Some(tap) = self.tap.take() {
            tap.end();
        }
        // A gRPC answer that ended without a status.
        if let Some(m) = self.grpc.take() {
            m.grpc_status(GRPC_UNKNOWN);
        }
    }

    /// The answer broke off: the connection is dropped and the instance charged a failure.
    fn fail(&mut self) {
        self.conn.take();
        self.tap = None;
        if let Some(slot) = self.slot.take() {
            slot.instance().record_failure();
        }
        if let Some(m) = self.grpc.take() {
            m.grpc_status(GRPC_UNAVAILABLE);
        }
    }

    /// Counts the gRPC status of a call's trailers.
    fn trailers(&mut self, frame: &Frame<Bytes>) {
        if let Some(trailers) = frame.trailers_ref()
            && let Some(m) = self.grpc.take()
        {
            m.grpc_status(grpc_status(trailers).unwrap_or(GRPC_UNKNOWN));
        }
    }
}

const GRPC_UNKNOWN: u32 = 2;
const GRPC_UNAVAILABLE: u32 = 14;

/// The `grpc-status` of a response's headers or trailers.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
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
                if let Some(tap) = up.tap.as_deref_mut() {
                    match (frame.data_ref(), frame.trailers_ref()) {
                        (Some(data), _) => tap.data(data),
                        (_, Some(t)) => tap.grpc_status(grpc_status(t).unwrap_or(GRPC_UNKNOWN)),
                        _ => {}
                    }
                }
                if up.grpc.is_some() {
                    up.trailers(&frame);
                }
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
                            tracing::warn!(instance = %slot.instance().addr(), "answer stalled; cut off");
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

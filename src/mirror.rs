//! Traffic mirroring, beside the data path: a share of unpinned requests is copied to the mirror
//! deployment in the background. The live request's body is teed frame by frame (shared
//! `Bytes`, no copy) into a bounded channel that the copy reads; the copy's answer is read and
//! discarded. A copy never delays or fails the live request: when the channel is full, the body
//! is larger than [`MAX_BODY`], [`MAX_IN_FLIGHT`] copies are out or no mirror instance is free,
//! the copy is dropped and counted as `dropped`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::routing::Table;
use crate::upstream::{self, RequestBody};

/// Copies in flight at most; more are dropped.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest body copied; larger bodies are dropped.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Frames buffered between the live request and its copy.
const CHANNEL: usize = 64;

/// What the tee passes to the copy.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    End,
}

/// The live side of a copy: forwards each frame of the live body, or gives up (dropping the
/// sender aborts the copy).
#[derive(Debug)]
pub struct Tee {
    tx: Option<mpsc::Sender<Piece>>,
    sent: u64,
}

impl Tee {
    /// Passes on one data frame of the live body.
    pub fn data(&mut self, bytes: &Bytes) {
        if let Some(tx) = &self.tx {
            self.sent += bytes.len() as u64;
            if self.sent > MAX_BODY || tx.try_send(Piece::Data(bytes.clone())).is_err() {
                self.tx = None;
            }
        }
    }

    /// The live body ended.
    pub fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Piece::End);
        }
    }
}

/// The copy's body, fed by a [`Tee`]. Ends in an error (aborting the copy's exchange) when the
/// tee gave up.
#[derive(Debug)]
pub struct CopyBody {
    rx: mpsc::Receiver<Piece>,
    size: SizeHint,
    done: bool,
}

/// The copy's body was abandoned by the live side.
#[derive(Debug, thiserror::Error)]
#[error("the mirrored body was not copied whole")]
pub struct Abandoned;

impl Body for CopyBody {
    type Data = Bytes;
    type Error = Abandoned;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Abandoned>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Piece::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(Abandoned))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

/// Limits copies in flight.
#[derive(Debug, Clone)]
pub struct Mirroring {
    in_flight: Arc<Semaphore>,
}

impl Default for Mirroring {
    fn default() -> Self {
        Mirroring {
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl Mirroring {
    /// Starts a copy of `req` (its head now, its body as it streams), when the table has a
    /// mirror and the dice say so. Returns the tee to feed with the live body (`None`: no copy,
    /// or a body that needs no tee because it is empty).
    pub fn start(&self, table: &Arc<Table>, req: &Request<RequestBody>, roll: u8) -> Option<Tee> {
        let size = req.body().size_hint();
        let mirror = table.mirror.as_ref()?;
        if roll >= mirror.percent {
            return None;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            mirror.dropped.inc();
            return None;
        };
        if size.lower() > MAX_BODY {
            mirror.dropped.inc();
            return None;
        }
        let (head, ()) = upstream::copy_head(req, ()).into_parts();
        let empty = size.exact() == Some(0);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let body = CopyBody {
            rx,
            size,
            done: empty,
        };
        tokio::spawn(copy(table.clone(), head, body, permit));
        (!empty).then_some(Tee {
            tx: Some(tx),
            sent: 0,
        })
    }
}

/// Sends one copy and discards the answer.
async fn copy(
    table: Arc<Table>,
    head: http::request::Parts,
    body: CopyBody,
    _permit: OwnedSemaphorePermit,
) {
    let Some(mirror) = table.mirror.as_ref() else {
        return;
    };
    let dep = &table.deployments[mirror.index];
    let Some(slot) = dep.try_copy_slot() else {
        mirror.dropped.inc();
        return;
    };
    let mut pending = Some(Box::new(Request::from_parts(head, RequestBody::copy(body))));
    let exchange = async {
        let (resp, conn) = upstream::send(
            &slot.instance.pool,
            slot.instance.authority.as_str(),
            &mut pending,
        )
        .await
        .map_err(|f| match f {
            upstream::Failure::Client(_) => true,
            upstream::Failure::Broken(e) => upstream::caused_by::<Abandoned>(&e),
            upstream::Failure::Connect(_) | upstream::Failure::Lost => false,
        })?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|_| false)?;
        slot.instance.pool.checkin(conn);
        Ok::<_, bool>(status)
    };
    match tokio::time::timeout(dep.settings.request_timeout, exchange).await {
        Ok(Ok(status)) if !status.is_server_error() => mirror.ok.inc(),
        // The live body could not be copied whole: the copy never went out complete.
        Ok(Err(true)) => mirror.dropped.inc(),
        _ => mirror.error.inc(),
    }
}

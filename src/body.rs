//! Layer 0 (values): the request body on its way to an instance. It enforces the body limit
//! while it streams, reports when it has been sent whole, and tees every frame (shared
//! `Bytes`, no copy) to a mirrored copy through a bounded channel: [`Tee`] on the live side,
//! [`CopyBody`] on the copy's.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

/// Bytes a copy may lag behind the live body before it is given up: counted in bytes, not
/// frames, so a body in small frames (HTTP/2's 16 KiB, small chunks) is mirrored as well as
/// one in large ones.
const MAX_LAG_BYTES: u64 = 4 * 1024 * 1024;

/// What the tee passes to the copy.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    End,
    /// The live body passed the copy's bound: the copy ends in [`Abandoned::too_large`].
    TooLarge,
}

/// Copies one live body can feed at most (the mirror targets).
pub(crate) const MAX_COPIES: usize = 3;

/// One copy's feed: its channel, and how many bytes it has taken so far.
#[derive(Debug)]
struct Feed {
    tx: mpsc::UnboundedSender<Piece>,
    taken: Arc<AtomicU64>,
}

/// The live side of up to [`MAX_COPIES`] copies: forwards each frame of the live body to each,
/// or gives up on one (dropping its sender aborts that copy) when it lags more than
/// [`MAX_LAG_BYTES`] behind or the body passes `limit`.
#[derive(Debug)]
pub(crate) struct Tee {
    txs: [Option<Feed>; MAX_COPIES],
    sent: u64,
    limit: u64,
}

impl Tee {
    /// Passes on one data frame of the live body.
    pub(crate) fn data(&mut self, bytes: &Bytes) {
        self.sent += bytes.len() as u64;
        let over = self.sent > self.limit;
        for slot in &mut self.txs {
            if let Some(feed) = slot {
                let lag = self.sent - feed.taken.load(Ordering::Relaxed);
                if over {
                    let _ = feed.tx.send(Piece::TooLarge);
                    *slot = None;
                } else if lag > MAX_LAG_BYTES || feed.tx.send(Piece::Data(bytes.clone())).is_err() {
                    *slot = None;
                }
            }
        }
    }

    /// The live body ended.
    pub(crate) fn end(&mut self) {
        for slot in &mut self.txs {
            if let Some(feed) = slot.take() {
                let _ = feed.tx.send(Piece::End);
            }
        }
    }

    /// Feeds one more copy: its body (`None` when all copies are fed already).
    pub(crate) fn add(&mut self, size: SizeHint) -> Option<CopyBody> {
        let free = self.txs.iter_mut().find(|t| t.is_none())?;
        let (feed, body) = feed(size, false);
        *free = Some(feed);
        Some(body)
    }
}

/// The copy's body, fed by a [`Tee`]. Ends in an error (aborting the copy's exchange) when the
/// tee gave up.
#[derive(Debug)]
pub(crate) struct CopyBody {
    rx: mpsc::UnboundedReceiver<Piece>,
    taken: Arc<AtomicU64>,
    size: SizeHint,
    done: bool,
}

/// A copy's feed and its body.
fn feed(size: SizeHint, done: bool) -> (Feed, CopyBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    let taken = Arc::new(AtomicU64::new(0));
    let body = CopyBody {
        rx,
        taken: taken.clone(),
        size,
        done,
    };
    (Feed { tx, taken }, body)
}

/// The copy's body was abandoned by the live side: `too_large` when the live body passed the
/// copy's bound, else because the copy fell behind (or the live request broke off).
#[derive(Debug, thiserror::Error)]
#[error("the mirrored body was not copied whole")]
pub(crate) struct Abandoned {
    pub(crate) too_large: bool,
}

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
            Poll::Ready(Some(Piece::Data(b))) => {
                self.taken.fetch_add(b.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Piece::TooLarge)) => {
                Poll::Ready(Some(Err(Abandoned { too_large: true })))
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(Abandoned { too_large: false }))),
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

/// A tee for copies of a body of `size` that give up past `limit` bytes, and the first copy's
/// body (more with [`Tee::add`]). A body declared empty needs no tee: the copy's body is
/// complete at once.
pub(crate) fn tee(size: SizeHint, limit: u64) -> (Option<Tee>, CopyBody) {
    let empty = size.exact() == Some(0);
    let (first, body) = feed(size, empty);
    let tee = (!empty).then_some(Tee {
        txs: [Some(first), None, None],
        sent: 0,
        limit,
    });
    (tee, body)
}

/// The body of a copy of an empty request.
pub(crate) fn empty_copy() -> CopyBody {
    feed(SizeHint::with_exact(0), true).1
}

/// Raised by [`RequestBody`] when a streamed body passes the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

/// The client's request body on its way to the instance, cut off past `limit` bytes.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Inner,
    remaining: u64,
    pub(crate) limit: u64,
    /// Feeds a mirrored copy, if this request is mirrored.
    /// Boxed: only mirrored requests have one, and the body moves with every request.
    tee: Option<Box<Tee>>,
    /// Set once the whole body has been sent (only for requests with a body).
    sent: Option<Arc<Progress>>,
}

/// How far a request's body got, shared with the request's own task: whether it was sent
/// whole, and how many bytes were read from the client (set when it ends, not per frame).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) sent: AtomicBool,
    pub(crate) bytes: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
enum Inner {
    Streaming(Incoming),
    Buffered(Option<Bytes>),
    Copy(CopyBody),
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner: Inner::Streaming(inner),
            remaining: limit,
            limit,
            tee: None,
            sent: None,
        }
    }

    pub(crate) fn buffered(bytes: Bytes, limit: u64) -> Self {
        RequestBody {
            inner: Inner::Buffered((!bytes.is_empty()).then_some(bytes)),
            remaining: limit,
            limit,
            tee: None,
            sent: None,
        }
    }

    /// The body of a mirrored copy.
    pub(crate) fn copy(body: CopyBody) -> Self {
        RequestBody {
            inner: Inner::Copy(body),
            remaining: u64::MAX,
            limit: u64::MAX,
            tee: None,
            sent: None,
        }
    }

    /// Reports through `flag` when the whole body has been sent.
    pub(crate) fn with_progress(mut self, progress: Option<Arc<Progress>>) -> Self {
        self.sent = progress;
        self
    }

    fn mark_sent(&mut self) {
        if let Some(p) = self.sent.take() {
            p.bytes
                .store(self.limit.saturating_sub(self.remaining), Ordering::Relaxed);
            p.sent.store(true, Ordering::Relaxed);
        }
    }

    /// Copies every frame to a mirrored request as it streams.
    pub(crate) fn set_tee(&mut self, tee: Option<Tee>) {
        self.tee = tee.map(Box::new);
    }

    fn inner_ended(&self) -> bool {
        match &self.inner {
            Inner::Streaming(i) => i.is_end_stream(),
            Inner::Buffered(b) => b.is_none(),
            Inner::Copy(c) => c.is_end_stream(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // A body read to its end whose last poll never came (the answer arrived first, as a
        // gRPC server may answer before the request's end) still completes its copy.
        if self.inner_ended()
            && let Some(tee) = &mut self.tee
        {
            tee.end();
        }
        // A body that did not end: what was read of it.
        if let Some(p) = &self.sent {
            p.bytes
                .store(self.limit.saturating_sub(self.remaining), Ordering::Relaxed);
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

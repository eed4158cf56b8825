//! The live answer as the mirrored copies see it: a tap on the answer streaming to the client
//! keeps its frames (shared `Bytes`, no copy) up to the comparison bound and hands the whole to
//! every copy when it ends. It never delays the live answer; an answer that breaks off is
//! handed to nobody (the copies find it incomparable).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

/// The live answer, as compared.
#[derive(Debug, Clone)]
pub struct LiveAnswer {
    /// HTTP status, or for a gRPC call its gRPC status (2, UNKNOWN, when it had none).
    pub status: u16,
    /// Its frames, in order, while within the bound.
    pub body: Vec<Bytes>,
    /// Whether it passed the bound (then `body` is incomplete).
    pub over: bool,
}

/// Where copies wait for the live answer.
pub type LiveWaiter = watch::Receiver<Option<Arc<LiveAnswer>>>;

/// The live side: fed frame by frame, handed over at the end.
#[derive(Debug)]
pub struct LiveTap {
    tx: watch::Sender<Option<Arc<LiveAnswer>>>,
    answer: LiveAnswer,
    len: usize,
    bound: usize,
    grpc: bool,
}

impl LiveTap {
    /// A tap keeping up to `bound` bytes, and the first copy's waiter (more with
    /// [`LiveTap::waiter`]).
    pub fn new(bound: usize) -> (LiveTap, LiveWaiter) {
        let (tx, rx) = watch::channel(None);
        let tap = LiveTap {
            tx,
            answer: LiveAnswer {
                status: 0,
                body: Vec::new(),
                over: false,
            },
            len: 0,
            bound,
            grpc: false,
        };
        (tap, rx)
    }

    /// One more copy's waiter.
    pub fn waiter(&self) -> LiveWaiter {
        self.tx.subscribe()
    }

    /// The answer's head: its HTTP status, and for a gRPC call the `grpc-status` of its headers
    /// (a trailers-only answer), if any.
    pub fn head(&mut self, status: u16, grpc: bool, grpc_status: Option<u32>) {
        self.grpc = grpc;
        self.answer.status = match (grpc, grpc_status) {
            (false, _) => status,
            (true, Some(code)) => code as u16,
            // Set by the trailers; UNKNOWN if none come.
            (true, None) => 2,
        };
    }

    /// One data frame of the answer.
    pub fn data(&mut self, bytes: &Bytes) {
        if self.answer.over {
            return;
        }
        self.len += bytes.len();
        if self.len > self.bound {
            self.answer.over = true;
            self.answer.body = Vec::new();
        } else {
            self.answer.body.push(bytes.clone());
        }
    }

    /// A gRPC call's trailers: its status.
    pub fn grpc_status(&mut self, code: u32) {
        if self.grpc {
            self.answer.status = code as u16;
        }
    }

    /// The answer ended whole: every copy gets it.
    pub fn end(self) {
        self.tx.send_replace(Some(Arc::new(self.answer)));
    }
}

impl LiveAnswer {
    /// The body in one piece.
    pub fn joined(&self) -> Bytes {
        join(&self.body)
    }
}

/// Frames in one piece (one frame: shared, not copied).
pub fn join(frames: &[Bytes]) -> Bytes {
    match frames {
        [one] => one.clone(),
        many => {
            let mut out = Vec::with_capacity(many.iter().map(Bytes::len).sum());
            for b in many {
                out.extend_from_slice(b);
            }
            Bytes::from(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_get_the_answer_when_it_ends_and_nothing_when_it_breaks_off() {
        let (mut tap, mut first) = LiveTap::new(10);
        let mut second = tap.waiter();
        tap.head(200, false, None);
        tap.data(&Bytes::from_static(b"[1,"));
        tap.data(&Bytes::from_static(b"2]"));
        tap.end();
        for w in [&mut first, &mut second] {
            let got = w.wait_for(Option::is_some).await.unwrap().clone().unwrap();
            assert_eq!(
                (got.status, &got.joined()[..], got.over),
                (200, &b"[1,2]"[..], false)
            );
        }
        let (mut tap, mut w) = LiveTap::new(4);
        tap.head(200, true, None);
        tap.data(&Bytes::from_static(b"12345"));
        tap.grpc_status(0);
        tap.end();
        let got = w.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert!(got.over && got.status == 0);
        let (tap, mut w) = LiveTap::new(4);
        drop(tap);
        assert!(w.wait_for(Option::is_some).await.is_err());
    }
}

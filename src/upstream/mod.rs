//! Layer 3 (upstream): the exchange with one instance. [`send`] uses an idle pooled connection
//! when there is one and sends again, on a fresh connection, what a closed pooled connection
//! could not take; [`failure`] classifies what went wrong (the one map); [`response`] is the
//! answer's body on its way back; [`headers`] strips what must not cross the proxy and sets a
//! deployment's own headers.

mod failure;
mod headers;
mod response;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};

use crate::body::RequestBody;
use crate::instance::{Conn, Conns, Ended, H2Pool, Instance, Pool, connect};

pub(crate) use failure::{Failure, Fault, classify};
pub(crate) use headers::{copy_head, set_deployment_headers, strip_hop_by_hop};
pub(crate) use response::{Held, ResponseBody, grpc_status};

/// A pooled connection idle for this long may have been closed by the instance while we were
/// sending: such a request is prepared so that it can be sent again.
pub(crate) const REPLAY_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(250);
/// Largest request body kept for such a resend.
pub(crate) const REPLAY_MAX_BODY: u64 = 64 * 1024;

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
pub(crate) type Pending = Option<Box<Request<RequestBody>>>;

/// Sends the request in `pending` to `instance`, on an idle
/// pooled connection when there is one. A request that a closed pooled connection could not take
/// is sent on another; a request on a connection that sat idle for a while is kept (small bodies)
/// and sent again on a new connection if that one closes without answering.
///
/// The request is taken from `pending` when it is handed to a connection, and put back whenever
/// it comes back unsent, so after [`Failure::Connect`] it is there for another instance. It is
/// borrowed rather than moved in so that the request's future holds it once, not once per layer.
pub(crate) async fn send(
    instance: &Instance,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Held), Failure> {
    match instance.conns() {
        // Boxed: a REST request's future does not grow by the HTTP/2 path's state.
        Conns::H2(h2) => Box::pin(send_h2(h2, instance, pending)).await,
        Conns::H1(pool) => send_h1(pool, instance, pending)
            .await
            .map(|(resp, conn)| (resp, Held::H1(conn))),
    }
}

/// Sends the request in `pending` on a stream of one of the instance's HTTP/2 connections. A
/// connection that closed or went away before taking the stream (the request comes back
/// unsent) is dropped and the request tried once more on another.
async fn send_h2(
    h2: &H2Pool,
    instance: &Instance,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Held), Failure> {
    for attempt in 0..2 {
        let mut lease = h2
            .lease(instance.addr(), instance.tls())
            .await
            .map_err(Failure::Connect)?;
        lease.resent = attempt > 0;
        let mut sender = lease.sender();
        if sender.ready().await.is_err() {
            h2.discard(&lease);
            continue;
        }
        let req = take(pending)?;
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, Held::H2(lease))),
            Err(mut e) => match e.take_message() {
                Some(r) => {
                    *pending = Some(Box::new(r));
                    h2.discard(&lease);
                }
                None => return Err(Failure::Broken(e.into_error())),
            },
        }
    }
    Err(Failure::Connect(std::io::Error::other(
        "the instance's HTTP/2 connections closed before taking the call",
    )))
}

/// [`send`] to a REST instance, over HTTP/1.1.
async fn send_h1(
    pool: &Pool,
    instance: &Instance,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Conn), Failure> {
    let mut resent = false;
    // Not `while let`: its scrutinee would be kept across the awaits in the loop.
    loop {
        let Some(mut conn) = pool.checkout() else {
            break;
        };
        let small = pending
            .as_ref()
            .and_then(|r| r.body().size_hint().upper())
            .is_some_and(|n| n <= REPLAY_MAX_BODY);
        if small && u128::from(conn.idle_us) >= REPLAY_AFTER_IDLE.as_micros() {
            // Cold paths are boxed: they would otherwise grow every request's future by their
            // state.
            return Box::pin(async move {
                let req = take(pending)?;
                let replay = prepare_replay(req).await?;
                send_replayable(instance, conn, replay, pending).await
            })
            .await;
        }
        if conn.sender.ready().await.is_err() {
            continue;
        }
        // Bound first: a temporary in the awaited expression would be kept across the await.
        let req = take(pending)?;
        match conn.sender.try_send_request(req).await {
            Ok(resp) => {
                conn.resent = resent;
                return Ok((resp, conn));
            }
            Err(mut e) => match e.take_message() {
                // Never written: the connection was closed. Try the next one.
                Some(r) => {
                    *pending = Some(Box::new(r));
                    resent = true;
                }
                None => return Err(Failure::Broken(e.into_error())),
            },
        }
    }
    Box::pin(async move {
        let (conn, ended) = connect(instance.addr(), instance.tls())
            .await
            .map_err(Failure::Connect)?;
        send_on_new(conn, ended, pending)
            .await
            .map(|(resp, mut conn)| {
                conn.resent = resent;
                (resp, conn)
            })
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
    ended: Ended,
    pending: &mut Pending,
) -> Result<(Response<Incoming>, Conn), Failure> {
    if let Err(e) = conn.sender.ready().await {
        // `ready` says only that the connection closed; its task knows why.
        let cause = ended.await.unwrap_or(e);
        return Err(Failure::Connect(std::io::Error::other(ClosedBeforeUse(
            cause,
        ))));
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

/// A new connection that closed before it took the request, and why: the cause is kept for
/// `classify`.
#[derive(Debug, thiserror::Error)]
#[error("the new connection closed before use: {}", crate::error::describe(.0))]
struct ClosedBeforeUse(#[source] hyper::Error);

async fn send_replayable(
    instance: &Instance,
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
    let result = match connect(instance.addr(), instance.tls()).await {
        Ok((conn, ended)) => send_on_new(conn, ended, pending).await,
        Err(e) => Err(Failure::Connect(e)),
    };
    let result = result.map(|(resp, mut conn)| {
        conn.resent = true;
        (resp, conn)
    });
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
    crate::error::find_cause::<std::io::Error>(err).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

//! Layer 4 (request path): traffic mirroring. A share of unpinned requests is copied to the
//! mirror deployment in the background: the live request's body is teed frame by frame
//! (`body::Tee`) and the copy's answer is read and discarded. A copy never delays or fails the
//! live request: when the tee's channel is full, the body is larger than
//! [`MIRROR_MAX_BODY`], [`MAX_IN_FLIGHT`] copies are out or no mirror instance is free, the
//! copy is dropped and counted as `dropped`. A failed copy is classified like a live exchange
//! (`upstream::classify`): the client's fault (its body not copied whole) counts as `dropped`,
//! any other as `error`. A copy carries the mirror deployment's own `headers` and bearer key,
//! never the live deployment's.

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{self, CopyBody, RequestBody, Tee};
use crate::limits::MIRROR_MAX_BODY;
use crate::routing::Table;
use crate::upstream::{self, Failure, Fault};

/// Copies in flight at most; more are dropped.
const MAX_IN_FLIGHT: usize = 64;

/// Limits copies in flight.
#[derive(Debug, Clone)]
pub(super) struct Mirroring {
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
    pub(super) fn start(
        &self,
        table: &Arc<Table>,
        req: &Request<RequestBody>,
        grpc: bool,
        roll: u8,
    ) -> Option<Tee> {
        let size = req.body().size_hint();
        let mirror = table.mirror.as_ref()?;
        if roll >= mirror.percent {
            return None;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            mirror.dropped.inc();
            return None;
        };
        if size.lower() > MIRROR_MAX_BODY {
            mirror.dropped.inc();
            return None;
        }
        let (head, ()) = upstream::copy_head(req, ()).into_parts();
        let (tee, body) = body::tee(size);
        tokio::spawn(copy(table.clone(), head, body, grpc, permit));
        tee
    }
}

/// Sends one copy — a gRPC call to the mirror's `grpc_instances` — and discards the answer,
/// counting it `ok` (for a gRPC call: status OK), `error` or `dropped`.
async fn copy(
    table: Arc<Table>,
    head: http::request::Parts,
    body: CopyBody,
    grpc: bool,
    _permit: OwnedSemaphorePermit,
) {
    let Some(mirror) = table.mirror.as_ref() else {
        return;
    };
    let dep = &table.deployments[mirror.index];
    let Some(slot) = dep.group(grpc).try_copy_slot() else {
        mirror.dropped.inc();
        return;
    };
    // A gRPC copy is sent whole: a gRPC server may answer as soon as it has the message and
    // reset the rest of the stream, which a request body still trickling through the tee would
    // turn into a spurious error.
    let body = if grpc {
        match body.collect().await {
            Ok(whole) => RequestBody::buffered(whole.to_bytes(), u64::MAX),
            Err(_) => {
                mirror.dropped.inc();
                return;
            }
        }
    } else {
        RequestBody::copy(body)
    };
    let instance = slot.instance();
    let mut req = Request::from_parts(head, body);
    if grpc {
        // The live call's target was made for the live instance: its scheme may differ here.
        super::grpc::to_h2(&mut req, instance);
    }
    upstream::set_deployment_headers(req.headers_mut(), &dep.headers);
    let mut pending = Some(Box::new(req));
    let exchange = async {
        let (resp, conn) = upstream::send(instance, &mut pending).await?;
        let mut ok = !resp.status().is_server_error();
        let in_headers = upstream::grpc_status(resp.headers());
        let answer = resp.into_body().collect().await.map_err(Failure::Broken)?;
        if grpc {
            let in_trailers = answer.trailers().and_then(upstream::grpc_status);
            ok &= in_headers.or(in_trailers) == Some(0);
        }
        conn.release(&slot);
        Ok::<_, Failure>(ok)
    };
    let timeout = dep.settings.request_timeout;
    let outcome = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Timeout {
                timeout_ms: timeout.as_millis() as u64,
                body_sent: true,
            })
        });
    match outcome {
        Ok(true) => mirror.ok.inc(),
        Ok(false) => mirror.error.inc(),
        // The live body could not be copied whole: the copy never went out complete.
        Err(f) if upstream::classify(&f).fault == Fault::Client => mirror.dropped.inc(),
        Err(f) => {
            tracing::debug!(deployment = %dep.name, error = ?f, "mirrored copy failed");
            mirror.error.inc()
        }
    }
}

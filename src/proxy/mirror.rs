//! Layer 4 (request path): traffic mirroring and shadow comparison. Each mirror target takes
//! its own share of unpinned requests (rolled on its own); a copy goes to the target in the
//! background: the live request's body is teed frame by frame (`body::Tee`, one tee for up to
//! three copies) and the copy's answer is read. With `mirror_compare`, the live answer is
//! tapped as it streams to the client (`shadow::LiveTap`) and each copy's task compares the two
//! (`shadow::compare`), off the request path, recording the verdict (`shadow::Evidence`,
//! `scoregate_shadow_*`).
//!
//! A copy never delays or fails the live request: a body over the mirror's bound, more than
//! [`MAX_IN_FLIGHT`] copies out, no free mirror instance, or a copy falling behind the live
//! body drops the copy, counted with its reason. A failed copy is classified like a live
//! exchange (`upstream::classify`): the client's fault (its body not copied whole) counts as
//! `dropped`, any other as `error`. A copy carries the mirror deployment's own `headers` and
//! bearer key, never the live deployment's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body;
use rand::RngExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{self, CopyBody, RequestBody, Tee};
use crate::metrics::MirrorDrop;
use crate::routing::{Mirror, Table};
use crate::shadow::{self, Evidence, LiveTap, LiveWaiter, Verdict};
use crate::telemetry::{Kind, Record};

use super::trip::Trip;
use crate::upstream::{self, Failure, Fault};

/// Copies in flight at most; more are dropped.
const MAX_IN_FLIGHT: usize = 64;

/// How long a copy waits for the live answer to end before its comparison is `incomparable`.
const LIVE_WAIT: Duration = Duration::from_secs(60);

/// Limits copies in flight; keeps what comparisons found.
#[derive(Debug, Clone)]
pub(super) struct Mirroring {
    in_flight: Arc<Semaphore>,
    evidence: Arc<Evidence>,
}

impl Mirroring {
    pub(super) fn new(evidence: Arc<Evidence>) -> Self {
        Mirroring {
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            evidence,
        }
    }

    /// [`Mirroring::start`] with the tee set on `req`'s body; returns the tap.
    pub(super) fn start_into(
        &self,
        table: &Arc<Table>,
        req: &mut Request<RequestBody>,
        grpc: bool,
        trip: &mut Trip,
    ) -> Option<Box<LiveTap>> {
        let (tee, tap) = self.start(table, req, grpc, trip.record.as_deref_mut());
        req.body_mut().set_tee(tee);
        tap
    }

    /// Starts the copies of `req` the dice ask for (its head now, its body as it streams).
    /// Returns the tee to feed with the live body and, when answers are compared, the tap to
    /// feed with the live answer (each `None` when not needed).
    fn start(
        &self,
        table: &Arc<Table>,
        req: &Request<RequestBody>,
        grpc: bool,
        mut live_record: Option<&mut Record>,
    ) -> (Option<Tee>, Option<Box<LiveTap>>) {
        let size = req.body().size_hint();
        let empty = size.exact() == Some(0);
        let mut tee: Option<Tee> = None;
        let mut tap: Option<Box<LiveTap>> = None;
        let mut rng = rand::rng();
        for (index, mirror) in table.mirrors.iter().enumerate() {
            if rng.random_range(0..100u8) >= mirror.percent {
                continue;
            }
            if size.lower() > table.mirror_max_body {
                dropped(mirror, MirrorDrop::BodyTooLarge);
                continue;
            }
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                dropped(mirror, MirrorDrop::Backlog);
                continue;
            };
            let body = match (&mut tee, empty) {
                (_, true) => body::empty_copy(),
                (Some(t), false) => match t.add(size) {
                    Some(b) => b,
                    None => continue,
                },
                (None, false) => {
                    let (t, b) = body::tee(size, table.mirror_max_body);
                    tee = t;
                    b
                }
            };
            let live = table.compare.as_ref().map(|c| match &tap {
                Some(t) => t.waiter(),
                None => {
                    let (t, w) = LiveTap::new(c.max_body_bytes);
                    tap = Some(Box::new(t));
                    w
                }
            });
            let (head, ()) = upstream::copy_head(req, ()).into_parts();
            // The copy's own record: the live request's ids, the mirror's deployment.
            let record = live_record.as_deref_mut().map(|live| {
                let name = table.deployments[mirror.index].name.clone();
                live.mirrored.push(name.clone());
                let mut r = live.clone();
                r.kind = Kind::Mirror { result: None };
                r.deployment = Some(name);
                r.route = None;
                r.mirrored = Vec::new();
                Box::new(r)
            });
            let job = Copy {
                table: table.clone(),
                index,
                record,
                grpc,
                live,
                evidence: self.evidence.clone(),
                _permit: permit,
            };
            tokio::spawn(job.run(head, body));
        }
        (tee, tap)
    }
}

/// Why a copy whose body was not copied whole was dropped: past the bound (known only once the
/// body streamed that far), or behind the live body.
fn abandoned(f: &Failure) -> MirrorDrop {
    let err: Option<&(dyn std::error::Error + 'static)> = match f {
        Failure::Broken(e) => Some(e),
        Failure::Client(e) => Some(&**e),
        _ => None,
    };
    match err.and_then(crate::error::find_cause::<body::Abandoned>) {
        Some(a) if a.too_large => MirrorDrop::BodyTooLarge,
        _ => MirrorDrop::Abandoned,
    }
}

/// Completes a copy's record with its answer (and the comparison's result) and hands it to the
/// access log and the span exporter.
fn copy_record(
    table: &Table,
    record: Option<Box<Record>>,
    answer: &Result<CopyAnswer, Option<Failure>>,
    result: Option<&'static str>,
) {
    let Some(mut r) = record else {
        return;
    };
    r.kind = Kind::Mirror { result };
    r.duration = r.start.elapsed().unwrap_or_default();
    r.completed = answer.is_ok();
    match answer {
        Ok(a) => {
            r.status = a.http_status;
            r.grpc_status = a.grpc_status;
            r.bytes_out = a.bytes;
            r.instance = Some(a.instance.clone());
            r.connect = a.connect;
        }
        Err(None) => r.error = Some("mirror_dropped"),
        Err(Some(f)) => {
            let e = upstream::classify(f).error;
            r.status = e.status().as_u16();
            r.error = Some(e.kind());
        }
    }
    super::trip::hand_on(table, r);
}

fn dropped(mirror: &Mirror, reason: MirrorDrop) {
    mirror.dropped.inc();
    mirror.shadow.dropped(reason);
}

/// One copy on its way to a mirror target.
struct Copy {
    table: Arc<Table>,
    /// Which of the table's mirrors.
    index: usize,
    grpc: bool,
    /// The live answer, when compared.
    live: Option<LiveWaiter>,
    evidence: Arc<Evidence>,
    /// The copy's record, when the access log or span export is on.
    record: Option<Box<Record>>,
    _permit: OwnedSemaphorePermit,
}

/// The copy's answer: status (gRPC status for a gRPC call), body up to the bound.
struct CopyAnswer {
    status: u16,
    body: Vec<Bytes>,
    over: bool,
    ok: bool,
    /// For the copy's record: HTTP status, gRPC status, body bytes, the instance and the time
    /// it took to open a connection to it.
    http_status: u16,
    grpc_status: Option<u32>,
    bytes: u64,
    instance: Arc<str>,
    connect: Option<Duration>,
}

impl Copy {
    /// Sends the copy — a gRPC call to the mirror's `grpc_instances` — reads its answer,
    /// counts it `ok` (for a gRPC call: status OK), `error` or `dropped`, and compares it when
    /// asked.
    async fn run(self, head: http::request::Parts, body: CopyBody) {
        let mirror = &self.table.mirrors[self.index];
        let dep = &self.table.deployments[mirror.index];
        let (method, path) = (head.method.clone(), head.uri.path().to_string());
        let answer = self.exchange(head, body).await;
        match &answer {
            Ok(a) if a.ok => mirror.ok.inc(),
            Ok(_) => mirror.error.inc(),
            // Counted where it was dropped.
            Err(None) => {}
            // The live body could not be copied whole: the copy never went out complete.
            Err(Some(f)) if upstream::classify(f).fault == Fault::Client => {
                dropped(mirror, abandoned(f))
            }
            Err(Some(f)) => {
                tracing::debug!(deployment = %dep.name, error = ?f, "mirrored copy failed");
                mirror.error.inc()
            }
        }
        let record = self.record;
        let (Some(mut live), Some(settings)) = (self.live, self.table.compare.as_ref()) else {
            copy_record(&self.table, record, &answer, None);
            return;
        };
        let live = match tokio::time::timeout(LIVE_WAIT, live.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        };
        let (verdict_only, live, copy) = match (&live, &answer) {
            (None, _) => (Some("the live answer did not end whole"), None, None),
            (_, Err(_)) => (Some("the copy failed"), None, None),
            (Some(l), Ok(_)) if l.over => (Some("answer over max_body_bytes"), None, None),
            (Some(_), Ok(c)) if c.over => (Some("answer over max_body_bytes"), None, None),
            (Some(l), Ok(c)) => (None, Some(l.clone()), Some(c)),
        };
        let (live_body, copy_body) = match (&live, copy) {
            (Some(l), Some(c)) => (l.joined(), shadow::join(&c.body)),
            _ => (Bytes::new(), Bytes::new()),
        };
        let outcome = match (verdict_only, &live, copy) {
            (None, Some(l), Some(c)) => shadow::compare(
                shadow::Answer {
                    status: l.status,
                    body: &live_body,
                    grpc: self.grpc,
                },
                shadow::Answer {
                    status: c.status,
                    body: &copy_body,
                    grpc: self.grpc,
                },
                settings,
            ),
            (why, _, _) => shadow::Outcome {
                verdict: Verdict::Incomparable(why.unwrap_or("incomparable")),
                max_difference: 0.0,
            },
        };
        let result = match outcome.verdict {
            Verdict::Match => 0,
            Verdict::Mismatch(_) => 1,
            Verdict::Incomparable(_) => 2,
        };
        mirror.shadow.compared(result, outcome.max_difference);
        let label = crate::metrics::SHADOW_RESULTS[result];
        copy_record(&self.table, record, &answer, Some(label));
        let seen = shadow::Seen {
            deployment: &dep.name,
            method: method.as_str(),
            path: &path,
            live_status: live.as_ref().map_or(0, |l| l.status),
            copy_status: answer.as_ref().map_or(0, |c| c.status),
            live_body: &live_body,
            copy_body: &copy_body,
        };
        self.evidence.record(seen, &outcome, SystemTime::now());
    }

    /// The exchange with one of the mirror's instances, within its request timeout. `Err(None)`:
    /// the copy was dropped (and counted) before it went out.
    async fn exchange(
        &self,
        head: http::request::Parts,
        body: CopyBody,
    ) -> Result<CopyAnswer, Option<Failure>> {
        let mirror = &self.table.mirrors[self.index];
        let dep = &self.table.deployments[mirror.index];
        let grpc = self.grpc;
        let Some(slot) = dep.group(grpc).try_copy_slot() else {
            dropped(mirror, MirrorDrop::Backlog);
            return Err(None);
        };
        // A gRPC copy is sent whole: a gRPC server may answer as soon as it has the message
        // and reset the rest of the stream, which a request body still trickling through the
        // tee would turn into a spurious error.
        let body = if grpc {
            match body.collect().await {
                Ok(whole) => RequestBody::buffered(whole.to_bytes(), u64::MAX),
                Err(a) => {
                    let reason = match a.too_large {
                        true => MirrorDrop::BodyTooLarge,
                        false => MirrorDrop::Abandoned,
                    };
                    dropped(mirror, reason);
                    return Err(None);
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
        let bound = self.table.compare.as_ref().map_or(0, |c| c.max_body_bytes);
        let exchange = async {
            let started = Instant::now();
            let (resp, conn) = upstream::send(instance, &mut pending).await?;
            mirror.shadow.copy_answered(started.elapsed());
            let http_status = resp.status();
            let in_headers = upstream::grpc_status(resp.headers());
            let mut body = resp.into_body();
            let mut out = CopyAnswer {
                status: http_status.as_u16(),
                body: Vec::new(),
                over: false,
                ok: !http_status.is_server_error(),
                http_status: http_status.as_u16(),
                grpc_status: None,
                bytes: 0,
                instance: instance.label().clone(),
                connect: conn.connect_time(),
            };
            let (mut len, mut in_trailers) = (0usize, None);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(Failure::Broken)?;
                if let Some(data) = frame.data_ref() {
                    len += data.len();
                    if len > bound {
                        // Not compared (or past the bound): read on, keep nothing.
                        out.over = bound > 0;
                        out.body = Vec::new();
                    } else {
                        out.body.push(data.clone());
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    in_trailers = upstream::grpc_status(t);
                }
            }
            out.bytes = len as u64;
            if grpc {
                let code = in_headers.or(in_trailers);
                out.ok &= code == Some(0);
                out.status = code.unwrap_or(2) as u16;
                out.grpc_status = code;
            }
            conn.release(&slot);
            Ok::<_, Failure>(out)
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
        outcome.map_err(Some)
    }
}

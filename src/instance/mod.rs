//! Layer 2 (one instance): a scoring instance's state — its health state machine, its idle
//! connections and the requests it is serving — and the claims a request holds on it
//! ([`Pick`] while choosing, [`Slot`] while exchanging). Knows nothing of deployments or tables:
//! routing sits above it and depends only on this value.

mod h2;
mod health;
mod pool;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;

use crate::addr::InstanceAddr;
use health::{Change, Health};

pub(crate) use h2::{H2Pool, Lease};
pub(crate) use pool::{Conn, Ended, Pool, connect};
pub(crate) use tls::Tls;

/// One scoring instance. Shared between tables across reloads when its deployment and address
/// stay the same, so its pooled connections and counters survive.
#[derive(Debug)]
pub struct Instance {
    /// The address connected to: as written in the file, or what its name resolved to.
    addr: InstanceAddr,
    /// The address as text, shared with the requests' records.
    label: Arc<str>,
    /// The host-name instance (as written) this address was discovered from.
    discovered_from: Option<InstanceAddr>,
    in_flight: AtomicU32,
    health: Health,
    conns: Conns,
    /// TLS to the instance (`None`: cleartext).
    tls: Option<Tls>,
    /// `scoregate_upstream_in_flight` of the instance's deployment.
    deployment_in_flight: IntGauge,
    /// `scoregate_instance_healthy` of this instance.
    healthy_gauge: IntGauge,
}

// === impl Instance ===

impl Instance {
    /// A healthy instance with no connections yet, reached over HTTP/2 when `grpc`, else
    /// HTTP/1.1, over `tls` when given (default cleartext); `deployment_in_flight` and
    /// `healthy_gauge` are its metric handles (the gauge is set to 1 here).
    pub(crate) fn new(
        addr: InstanceAddr,
        discovered_from: Option<InstanceAddr>,
        grpc: bool,
        tls: Option<Tls>,
        deployment_in_flight: IntGauge,
        healthy_gauge: IntGauge,
    ) -> Instance {
        healthy_gauge.set(1);
        Instance {
            label: Arc::from(addr.as_str()),
            addr,
            discovered_from,
            in_flight: AtomicU32::new(0),
            health: Health::default(),
            conns: if grpc {
                Conns::H2(H2Pool::default())
            } else {
                Conns::H1(Pool::default())
            },
            tls,
            deployment_in_flight,
            healthy_gauge,
        }
    }

    /// The address connected to.
    pub fn addr(&self) -> &InstanceAddr {
        &self.addr
    }

    /// The address as text, shared (for the access log and spans).
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The host-name instance this address was discovered from (`None`: written as is).
    pub fn discovered_from(&self) -> Option<&InstanceAddr> {
        self.discovered_from.as_ref()
    }

    /// `host:port`, the HTTP authority of requests sent to the instance.
    pub(crate) fn authority(&self) -> &str {
        self.addr.as_str()
    }

    /// The instance's connections: idle HTTP/1.1 ones, or multiplexed HTTP/2 ones.
    pub(crate) fn conns(&self) -> &Conns {
        &self.conns
    }

    /// TLS to the instance (`None`: cleartext).
    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Opens a connection as requests do — TCP, then the TLS handshake when the instance has
    /// TLS — and closes it: a health probe.
    pub(crate) async fn probe(&self) -> std::io::Result<()> {
        pool::open(&self.addr, self.tls.as_ref()).await.map(drop)
    }

    /// False while the instance is ejected.
    pub fn is_healthy(&self) -> bool {
        self.health.is_up()
    }

    /// Requests this instance is serving now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// An exchange with the instance got an answer.
    pub(crate) fn record_success(&self) {
        self.health.success();
    }

    /// An exchange with the instance failed (refused, broken, timed out): ejects it after
    /// failures in a row, or at once on probation.
    pub(crate) fn record_failure(&self) {
        if let Change::Ejected(time) = self.health.failure() {
            tracing::warn!(
                instance = %self.addr,
                ejected_for = ?time,
                "instance ejected after failures in a row; probing it in the background"
            );
            self.ejected();
        }
    }

    /// Ejects the instance now for the current ejection time (a failed probe, or an operator's
    /// test); the only other way out of rotation is [`Instance::record_failure`].
    pub(crate) fn eject(&self) -> Duration {
        let time = self.health.eject();
        self.ejected();
        time
    }

    /// True when the instance is ejected and its ejection time is up: probe it.
    pub(crate) fn probe_due(&self) -> bool {
        self.health.probe_due()
    }

    /// Back in rotation (on probation) after a successful probe.
    pub(crate) fn reinstate(&self) {
        self.health.reinstate();
        self.healthy_gauge.set(1);
    }

    fn ejected(&self) {
        self.healthy_gauge.set(0);
        match &self.conns {
            Conns::H1(pool) => pool.clear(),
            Conns::H2(h2) => h2.clear(),
        }
    }

    /// Claims one request slot if fewer than `limit` (0 = unlimited) are taken.
    pub(crate) fn try_claim(self: &Arc<Self>, limit: u32) -> Option<Pick<'_>> {
        let taken = if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_ok()
        };
        // Not `then_some`: an eager Pick would be dropped, giving back a slot never taken.
        taken.then(|| Pick { instance: self })
    }
}

/// An instance's connections, by the protocol it is reached over.
// The HTTP/1.1 pool is inline (cache-padded queue ends): boxing it would add a pointer chase
// to every REST request, to save a few hundred bytes per gRPC instance.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Conns {
    /// A REST instance: idle HTTP/1.1 connections.
    H1(Pool),
    /// A gRPC instance: multiplexed HTTP/2 connections.
    H2(H2Pool),
}

/// A claim on an instance while a request is being routed: one of its request slots, given
/// back on drop unless it becomes a [`Slot`].
#[derive(Debug)]
pub struct Pick<'a> {
    instance: &'a Arc<Instance>,
}

// === impl Pick ===

impl<'a> Pick<'a> {
    /// The instance claimed.
    pub fn instance(&self) -> &'a Arc<Instance> {
        self.instance
    }

    /// Keeps the claim for the exchange, holding the deployment's queue `permit` if any;
    /// `counted` requests show in `scoregate_upstream_in_flight` (mirrored copies do not).
    pub(crate) fn into_slot(self, permit: Option<OwnedSemaphorePermit>, counted: bool) -> Slot {
        let instance = self.instance.clone();
        std::mem::forget(self);
        if counted {
            instance.deployment_in_flight.inc();
        }
        Slot {
            instance,
            _permit: permit,
            counted,
        }
    }
}

impl Drop for Pick<'_> {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's claim on an instance: released (in-flight count and queue permit) on drop, which
/// happens when the response body has finished streaming or the exchange failed.
#[derive(Debug)]
pub(crate) struct Slot {
    instance: Arc<Instance>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Counted in `scoregate_upstream_in_flight` (live requests; mirrored copies are not).
    counted: bool,
}

// === impl Slot ===

impl Slot {
    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Moves the claim to the instance of `pick` (a retry elsewhere), keeping the queue permit.
    pub(crate) fn move_to(&mut self, pick: Pick<'_>) {
        let next = pick.instance.clone();
        std::mem::forget(pick);
        if self.counted {
            next.deployment_in_flight.inc();
        }
        let old = std::mem::replace(&mut self.instance, next);
        release(&old, self.counted);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Runs before the permit is released, so a permit holder always finds a free instance.
        release(&self.instance, self.counted);
    }
}

fn release(instance: &Instance, counted: bool) {
    instance.in_flight.fetch_sub(1, Ordering::Relaxed);
    if counted {
        instance.deployment_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Arc<Instance> {
        let gauge = |n: &str| IntGauge::new(n, "h").expect("gauge");
        Arc::new(Instance::new(
            InstanceAddr::parse("127.0.0.1:9").expect("addr"),
            None,
            false,
            None,
            gauge("in_flight"),
            gauge("healthy"),
        ))
    }

    #[test]
    fn claims_respect_the_limit_and_are_given_back_on_drop() {
        let i = instance();
        let a = i.try_claim(2).expect("first");
        let b = i.try_claim(2).expect("second");
        assert!(i.try_claim(2).is_none());
        assert_eq!(i.in_flight(), 2);
        drop(a);
        let slot = b.into_slot(None, true);
        assert_eq!((i.in_flight(), i.deployment_in_flight.get()), (1, 1));
        drop(slot);
        assert_eq!((i.in_flight(), i.deployment_in_flight.get()), (0, 0));
    }

    #[test]
    fn a_slot_moved_to_another_instance_releases_the_first() {
        let (a, b) = (instance(), instance());
        let mut slot = a.try_claim(0).expect("a").into_slot(None, true);
        slot.move_to(b.try_claim(0).expect("b"));
        assert_eq!((a.in_flight(), a.deployment_in_flight.get()), (0, 0));
        assert_eq!((b.in_flight(), b.deployment_in_flight.get()), (1, 1));
        drop(slot);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn every_ejection_drops_the_healthy_gauge_and_a_probe_brings_it_back() {
        let i = instance();
        for _ in 0..5 {
            i.record_failure();
        }
        assert!(!i.is_healthy());
        assert_eq!(i.healthy_gauge.get(), 0);
        i.reinstate();
        assert_eq!(i.healthy_gauge.get(), 1);
        i.eject();
        assert!(!i.is_healthy());
        assert_eq!(i.healthy_gauge.get(), 0);
    }
}

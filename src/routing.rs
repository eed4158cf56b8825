//! The routing table: compiled once from a validated [`EndpointConfig`], read by every request
//! through one `ArcSwap::load`. Second step of the data path (config → `routing` → proxy): it
//! chooses the deployment (pin, then weighted random) and the instance (power of two choices on
//! requests in flight, within the per-instance concurrency limit).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};
use rand::{Rng, RngExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Auth, EndpointConfig, RequestSettings};
use crate::discovery::Names;
use crate::error::ProxyError;
use crate::health::{Change, Health};
use crate::metrics::{DeploymentMetrics, Metrics};
use crate::upstream::Pool;
use prometheus::IntGauge;

/// One scoring instance. Shared between tables across reloads when its deployment and address
/// stay the same, so its pooled connections and counters survive.
#[derive(Debug)]
pub struct Instance {
    /// The instance exactly as written in the file, or the address its name resolved to.
    pub addr: Box<str>,
    /// The host-name instance (as written) this address was discovered from.
    pub discovered_from: Option<Box<str>>,
    /// `host:port` for the upstream URI.
    pub authority: Authority,
    in_flight: AtomicU32,
    /// Failure count and ejection state.
    pub health: Health,
    /// Idle keep-alive connections to the instance.
    pub pool: Pool,
    /// `scoregate_upstream_in_flight` of the instance's deployment.
    deployment_in_flight: IntGauge,
    /// `scoregate_instance_healthy` of this instance.
    healthy_gauge: IntGauge,
}

impl Instance {
    fn new(
        addr: &str,
        discovered_from: Option<&str>,
        deployment: &str,
        dm: &DeploymentMetrics,
        metrics: &Metrics,
    ) -> Option<Self> {
        let healthy_gauge = metrics.instance_healthy(deployment, addr);
        healthy_gauge.set(1);
        Some(Instance {
            addr: addr.into(),
            discovered_from: discovered_from.map(Into::into),
            authority: Authority::from_str(addr).ok()?,
            in_flight: AtomicU32::new(0),
            health: Health::default(),
            pool: Pool::default(),
            deployment_in_flight: dm.in_flight().clone(),
            healthy_gauge,
        })
    }

    /// False while the instance is ejected.
    pub fn is_healthy(&self) -> bool {
        self.health.is_up()
    }

    /// Ejects the instance now (for the current ejection time), or takes it back.
    pub fn set_healthy(&self, healthy: bool) {
        if healthy {
            self.reinstate();
        } else if self.health.is_up() {
            self.health.eject();
            self.ejected();
        }
    }

    /// An exchange with the instance got an answer.
    pub fn record_success(&self) {
        self.health.success();
    }

    /// An exchange with the instance failed (refused, broken, timed out).
    pub fn record_failure(&self) {
        if let Change::Ejected(time) = self.health.failure() {
            tracing::warn!(
                instance = %self.addr,
                ejected_for = ?time,
                "instance ejected after failures in a row; probing it in the background"
            );
            self.ejected();
        }
    }

    fn ejected(&self) {
        self.healthy_gauge.set(0);
        self.pool.clear();
    }

    /// Back in rotation after a successful probe.
    pub fn reinstate(&self) {
        self.health.reinstate();
        self.healthy_gauge.set(1);
    }

    /// Requests this instance is serving now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Gives back a slot taken by [`Deployment::pick_instance`] without a [`Slot`] (benchmarks).
    #[doc(hidden)]
    pub fn release_for_bench(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes one slot if fewer than `limit` (0 = unlimited) are taken.
    fn try_take(&self, limit: u32) -> bool {
        if limit == 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A request's claim on an instance: released (in-flight count and queue permit) on drop, which
/// happens when the response body has finished streaming or the exchange failed.
#[derive(Debug)]
pub struct Slot {
    pub instance: Arc<Instance>,
    _permit: Option<OwnedSemaphorePermit>,
    /// Counted in `scoregate_upstream_in_flight` (live requests; mirrored copies are not).
    counted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Runs before the permit is released, so a permit holder always finds a free instance.
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.counted {
            self.instance.deployment_in_flight.dec();
        }
    }
}

/// One deployment in the live table.
#[derive(Debug)]
pub struct Deployment {
    pub name: Box<str>,
    /// `x-deployment` value, built once.
    pub header_value: HeaderValue,
    /// Live weight 0–100.
    pub weight: u8,
    pub instances: Box<[Arc<Instance>]>,
    pub settings: RequestSettings,
    /// With `max_concurrent_requests_per_instance` > 0: limit × instances permits, granted in
    /// arrival order.
    limiter: Option<Arc<Semaphore>>,
    /// Metric handles, shared by every table in which the deployment lives.
    pub metrics: Arc<DeploymentMetrics>,
}

impl Deployment {
    /// Claims an instance, waiting up to `max_queue_wait` when all are at their limit. When
    /// every instance is ejected the answer is immediate.
    pub async fn acquire(&self) -> Result<Slot, ProxyError> {
        // Without a limit nothing waits: no future state for the queue on the common path.
        if self.limiter.is_none()
            && let Some(i) = self.pick_instance(&mut rand::rng(), None)
        {
            let instance = self.instances[i].clone();
            instance.deployment_in_flight.inc();
            return Ok(Slot {
                instance,
                _permit: None,
                counted: true,
            });
        }
        Box::pin(self.acquire_queued()).await
    }

    /// [`Deployment::acquire`] with a queue (or no instance free right now).
    async fn acquire_queued(&self) -> Result<Slot, ProxyError> {
        if self.instances.is_empty() {
            return Err(ProxyError::NoInstances);
        }
        let limit = self.settings.max_concurrent_per_instance;
        let wait = self.settings.max_queue_wait;
        let overloaded = || ProxyError::Overloaded {
            limit,
            wait_ms: wait.as_millis() as u64,
        };
        let none_healthy = || ProxyError::NoHealthyInstance;
        if !self.instances.iter().any(|i| i.is_healthy()) {
            return Err(none_healthy());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let permit = match &self.limiter {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) if wait.is_zero() => return Err(overloaded()),
                Err(_) => Some(
                    tokio::time::timeout_at(deadline, sem.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .ok_or_else(overloaded)?,
                ),
            },
        };
        let i = loop {
            if let Some(i) = self.pick_instance(&mut rand::rng(), None) {
                break i;
            }
            if !self.instances.iter().any(|i| i.is_healthy()) {
                return Err(none_healthy());
            }
            // Only right after a reload that changed the limit or the instances: requests
            // admitted by the previous table still hold the instances' slots.
            if tokio::time::Instant::now() >= deadline {
                return Err(overloaded());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let instance = self.instances[i].clone();
        instance.deployment_in_flight.inc();
        Ok(Slot {
            instance,
            _permit: permit,
            counted: true,
        })
    }

    /// A slot for a mirrored copy, now or never: a queue permit if the deployment has a limit,
    /// and a healthy instance with room (not counted as a live request in flight).
    pub fn try_copy_slot(&self) -> Option<Slot> {
        let permit = match &self.limiter {
            Some(sem) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let i = self.pick_instance(&mut rand::rng(), None)?;
        Some(Slot {
            instance: self.instances[i].clone(),
            _permit: permit,
            counted: false,
        })
    }

    /// Moves `slot` to another healthy instance with room (for a retry after a refused
    /// connection), keeping its queue permit; gives it back unchanged when there is none.
    pub fn reassign(&self, slot: Slot) -> Result<Slot, Slot> {
        let Some(failed) = self
            .instances
            .iter()
            .position(|i| Arc::ptr_eq(i, &slot.instance))
        else {
            return Err(slot);
        };
        match self.pick_instance(&mut rand::rng(), Some(failed)) {
            Some(i) => {
                let instance = self.instances[i].clone();
                instance.deployment_in_flight.inc();
                let mut slot = slot;
                // The old claim is released by dropping the replaced instance handle's slot.
                let old = std::mem::replace(&mut slot.instance, instance);
                old.in_flight.fetch_sub(1, Ordering::Relaxed);
                old.deployment_in_flight.dec();
                Ok(slot)
            }
            None => Err(slot),
        }
    }

    /// Chooses a healthy instance (other than `exclude`) and takes a slot on it: the less
    /// loaded of two random ones; with a limit, another one with room if that one is full.
    /// `None` when no healthy instance has room.
    pub fn pick_instance<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let limit = self.settings.max_concurrent_per_instance;
        let n = self.instances.len();
        if n == 0 {
            // A host name that has not resolved yet.
            return None;
        }
        let usable = |i: usize| Some(i) != exclude && self.instances[i].is_healthy();
        let first = if n == 1 {
            0
        } else {
            let a = rng.random_range(0..n);
            let b = (a + 1 + rng.random_range(0..n - 1)) % n;
            match (usable(a), usable(b)) {
                (true, true) if self.instances[b].in_flight() < self.instances[a].in_flight() => b,
                (false, true) => b,
                _ => a,
            }
        };
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&i| usable(i) && self.instances[i].try_take(limit))
    }
}

/// The immutable routing table. Compiled once per valid file.
#[derive(Debug)]
pub struct Table {
    /// Counts successful loads with new content; 1 for the first.
    pub generation: u64,
    pub pin_header: HeaderName,
    /// In `traffic:` order, then the other deployments.
    pub deployments: Box<[Deployment]>,
    /// (exclusive cumulative upper bound, deployment index) for weights > 0.
    cumulative: Box<[(u32, usize)]>,
    /// 100, or 0 when no deployment takes unpinned traffic.
    pub total_weight: u32,
    pub max_request_body_bytes: u64,
    known_names: Box<str>,
    /// Metric handles for requests refused before routing (`deployment="none"`).
    pub unrouted: Arc<DeploymentMetrics>,
    /// Header whose value chooses the deployment by [`sticky_hash`].
    pub sticky_header: Option<HeaderName>,
    /// (exclusive cumulative hash bound, deployment index) for weights > 0, for sticky keys.
    sticky_bounds: Box<[(u32, usize)]>,
    /// Where copies of unpinned requests go.
    pub mirror: Option<Mirror>,
    /// SHA-256 digests of the accepted keys (`auth_mode: key`).
    pub keys: Option<Box<[[u8; 32]]>>,
}

/// The live mirror: deployment, share of unpinned requests and its counters.
#[derive(Debug)]
pub struct Mirror {
    pub index: usize,
    /// 1–50.
    pub percent: u8,
    pub ok: prometheus::IntCounter,
    pub error: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
}

/// The sticky split's hash: MurmurHash2, 32 bits, seed 0 (the hash of nginx `split_clients`).
/// A key goes to the first deployment, in `traffic:` order, whose cumulative weight `W` (in
/// percent) satisfies `hash < W * 4294967295 / 100`; the last one with weight takes the rest.
pub fn sticky_hash(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The hash bound of a cumulative weight, as nginx `split_clients` computes it.
fn sticky_bound(cumulative_percent: u32) -> u32 {
    (u64::from(cumulative_percent) * 0xffff_ffff / 100) as u32
}

/// The outcome of choosing a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub pinned: bool,
}

impl Table {
    /// Builds the table from a file with addresses only (a host-name instance gets no
    /// instances): see [`Table::compile_resolved`].
    pub fn compile(
        cfg: &EndpointConfig,
        generation: u64,
        previous: Option<&Table>,
        metrics: &Metrics,
    ) -> Table {
        Table::compile_resolved(cfg, generation, previous, metrics, &Names::default())
    }

    /// Builds the table; a host-name instance stands for the addresses `names` knows for it.
    /// Instances and metric handles of `previous` with the same deployment (and address) are
    /// kept; the series of deployments and instances that are gone are dropped.
    pub fn compile_resolved(
        cfg: &EndpointConfig,
        generation: u64,
        previous: Option<&Table>,
        metrics: &Metrics,
        names: &Names,
    ) -> Table {
        let mut deployments = Vec::with_capacity(cfg.deployments.len());
        let mut cumulative = Vec::new();
        let mut total = 0u32;
        for (index, d) in cfg.deployments.iter().enumerate() {
            let old = previous.and_then(|t| t.deployment(&d.name));
            let dm = old.map_or_else(
                || Arc::new(metrics.deployment(&d.name)),
                |o| o.metrics.clone(),
            );
            metrics.set_weight(&d.name, d.weight);
            // (address, the name it came from): a name stands for its addresses; an address
            // reached twice (two names, or a name and the address itself) counts once.
            let mut wanted: Vec<(String, Option<&str>)> = Vec::new();
            for written in &d.instances {
                match names.addresses(written) {
                    Some(addrs) => wanted.extend(
                        addrs
                            .iter()
                            .map(|a| (a.to_string(), Some(written.as_str()))),
                    ),
                    None => wanted.push((written.clone(), None)),
                }
            }
            let mut seen = std::collections::HashSet::new();
            wanted.retain(|(a, _)| seen.insert(a.clone()));
            let instances: Box<[Arc<Instance>]> = wanted
                .iter()
                .filter_map(|(addr, from)| {
                    old.and_then(|o| {
                        o.instances
                            .iter()
                            .find(|i| &*i.addr == addr && i.discovered_from.as_deref() == *from)
                            .cloned()
                    })
                    .or_else(|| Instance::new(addr, *from, &d.name, &dm, metrics).map(Arc::new))
                })
                .collect();
            if let Some(o) = old {
                for gone in o
                    .instances
                    .iter()
                    .filter(|i| !wanted.iter().any(|(a, _)| *a == *i.addr))
                {
                    metrics.remove_instance(&d.name, &gone.addr);
                }
            }
            let limit = d.request.max_concurrent_per_instance as usize;
            // The admission queue survives a reload that keeps the limit and the instance
            // count, so that slots are neither leaked nor doubled.
            let keep = old.and_then(|o| {
                (o.settings.max_concurrent_per_instance == d.request.max_concurrent_per_instance
                    && o.instances.len() == instances.len())
                .then(|| o.limiter.clone())
            });
            let limiter = keep.unwrap_or_else(|| {
                (limit > 0).then(|| {
                    Arc::new(Semaphore::new(
                        limit
                            .saturating_mul(instances.len())
                            .min(Semaphore::MAX_PERMITS),
                    ))
                })
            });
            if d.weight > 0 {
                total += u32::from(d.weight);
                cumulative.push((total, index));
            }
            deployments.push(Deployment {
                name: d.name.as_str().into(),
                header_value: HeaderValue::from_str(&d.name)
                    .unwrap_or(HeaderValue::from_static("invalid")),
                weight: d.weight,
                instances,
                settings: d.request.clone(),
                limiter,
                metrics: dm,
            });
        }
        for gone in previous
            .iter()
            .flat_map(|t| t.deployments.iter())
            .filter(|o| !cfg.deployments.iter().any(|d| d.name == *o.name))
        {
            let addrs: Vec<&str> = gone.instances.iter().map(|i| &*i.addr).collect();
            metrics.remove_deployment(&gone.metrics, &addrs);
        }
        let sticky_bounds: Box<[(u32, usize)]> = cumulative
            .iter()
            .map(|&(cum, index)| (sticky_bound(cum), index))
            .collect();
        let known_names = cfg
            .deployments
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
            .into();
        Table {
            generation,
            pin_header: cfg.pin_header.clone(),
            deployments: deployments.into(),
            cumulative: cumulative.into(),
            total_weight: total,
            max_request_body_bytes: cfg.max_request_body_bytes,
            known_names,
            unrouted: previous.map_or_else(|| Arc::new(metrics.unrouted()), |t| t.unrouted.clone()),
            sticky_header: cfg.sticky_header.clone(),
            sticky_bounds,
            mirror: cfg.mirror.as_ref().and_then(|m| {
                let index = cfg
                    .deployments
                    .iter()
                    .position(|d| d.name == m.deployment)?;
                let counter =
                    |result: &str| metrics.mirror.with_label_values(&[&m.deployment, result]);
                Some(Mirror {
                    index,
                    percent: m.percent,
                    ok: counter("ok"),
                    error: counter("error"),
                    dropped: counter("dropped"),
                })
            }),
            keys: match &cfg.auth {
                Auth::Key(k) => Some(k.digests.clone().into_boxed_slice()),
                Auth::None => None,
            },
        }
    }

    /// The deployment named `name`.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| &*d.name == name)
    }

    /// Chooses the deployment for a request's headers: pinned, else sticky, else weighted
    /// random.
    pub fn choose_for<R: Rng + ?Sized>(
        &self,
        headers: &http::HeaderMap,
        rng: &mut R,
    ) -> Result<Choice, ProxyError> {
        let pin = headers.get(&self.pin_header);
        if pin.is_none()
            && self.total_weight > 0
            && let Some(key) = self.sticky_header.as_ref().and_then(|h| headers.get(h))
        {
            let hash = sticky_hash(key.as_bytes());
            let index = self
                .sticky_bounds
                .iter()
                .find(|(bound, _)| hash < *bound)
                .map_or(self.sticky_bounds[self.sticky_bounds.len() - 1].1, |b| b.1);
            return Ok(Choice {
                index,
                pinned: false,
            });
        }
        self.choose(pin, rng)
    }

    /// Chooses the deployment: the pinned one if `pin` is given, else weighted random.
    pub fn choose<R: Rng + ?Sized>(
        &self,
        pin: Option<&HeaderValue>,
        rng: &mut R,
    ) -> Result<Choice, ProxyError> {
        if let Some(pin) = pin {
            let wanted = pin.as_bytes();
            return match self
                .deployments
                .iter()
                .position(|d| d.name.as_bytes() == wanted)
            {
                Some(index) => Ok(Choice {
                    index,
                    pinned: true,
                }),
                None => Err(ProxyError::UnknownPin {
                    header: self.pin_header.clone(),
                    value: String::from_utf8_lossy(wanted).into_owned(),
                    known: self.known_names.to_string(),
                }),
            };
        }
        if self.total_weight == 0 {
            return Err(ProxyError::NoTraffic {
                header: self.pin_header.clone(),
            });
        }
        let x = rng.random_range(0..self.total_weight);
        let index = self
            .cumulative
            .iter()
            .find(|(upper, _)| x < *upper)
            .map_or(self.cumulative[self.cumulative.len() - 1].1, |c| c.1);
        Ok(Choice {
            index,
            pinned: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::path::Path;

    fn table(yaml: &str) -> Table {
        let loaded = parse_str(yaml, Path::new("t.yaml")).expect("valid");
        Table::compile(&loaded.config, 1, None, &Metrics::new())
    }

    const TWO: &str = "traffic: {blue: 90, green: 10}\ndeployments:\n  blue: {instances: [127.0.0.1:9001, 127.0.0.1:9002]}\n  green: {instances: [127.0.0.1:9101]}\n";

    #[test]
    fn weighted_choice_follows_weights_with_a_seeded_rng() {
        let t = table(TWO);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[t.choose(None, &mut rng).unwrap().index] += 1;
        }
        // 90/10 over 100k: sigma of the green count is ~95, allow 5 sigma.
        assert!((counts[1] as i64 - 10_000).abs() < 475, "{counts:?}");
    }

    #[test]
    fn zero_weight_is_never_chosen_unpinned_but_can_be_pinned() {
        let t = table(&TWO.replace("blue: 90, green: 10", "blue: 100, green: 0"));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            assert_eq!(t.choose(None, &mut rng).unwrap().index, 0);
        }
        let pin = HeaderValue::from_static("green");
        let c = t.choose(Some(&pin), &mut rng).unwrap();
        assert_eq!((c.index, c.pinned), (1, true));
    }

    #[test]
    fn unknown_pin_lists_the_deployments() {
        let t = table(TWO);
        let err = t
            .choose(Some(&HeaderValue::from_static("purple")), &mut rand::rng())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown deployment \"purple\" in the x-api-version header; known deployments: blue, green"
        );
    }

    #[test]
    fn all_zero_weights_refuse_unpinned_requests() {
        let t = table(&TWO.replace("blue: 90, green: 10", "blue: 0, green: 0"));
        assert!(matches!(
            t.choose(None, &mut rand::rng()),
            Err(ProxyError::NoTraffic { .. })
        ));
    }

    #[test]
    fn power_of_two_choices_prefers_the_idle_instance() {
        let t = table(TWO);
        let d = &t.deployments[0];
        d.instances[0].in_flight.store(5, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let i = d.pick_instance(&mut rng, None);
            assert_eq!(i, Some(1));
            d.instances[1].in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn instances_survive_a_recompile() {
        let t1 = table(TWO);
        let loaded = parse_str(
            &TWO.replace("90, green: 10", "50, green: 50"),
            Path::new("t"),
        )
        .unwrap()
        .config;
        let t2 = Table::compile(&loaded, 2, Some(&t1), &Metrics::new());
        assert!(Arc::ptr_eq(
            &t1.deployments[0].instances[1],
            &t2.deployments[0].instances[1]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_deployment_answers_overload_after_the_queue_wait() {
        let t = table(
            "traffic: {blue: 100}\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request: {max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 200}\n",
        );
        let d = &t.deployments[0];
        let held = d.acquire().await.unwrap();
        let start = tokio::time::Instant::now();
        let err = d.acquire().await.unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded { .. }));
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(200));
        drop(held);
        let again = d.acquire().await.unwrap();
        assert_eq!(again.instance.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_survive_a_reload_without_doubling_slots() {
        let file = |w: u8, limit: u32| {
            format!(
                "traffic: {{blue: {w}, green: {}}}\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request: {{max_concurrent_requests_per_instance: {limit}, max_queue_wait_ms: 100}}\n  green: {{instances: [127.0.0.1:9002]}}\n",
                100 - w
            )
        };
        let metrics = Metrics::new();
        let compile = |src: String, prev: Option<&Table>| {
            let cfg = parse_str(&src, Path::new("t")).unwrap().config;
            Table::compile(&cfg, 1, prev, &metrics)
        };
        let t1 = compile(file(100, 1), None);
        let held = t1.deployments[0].acquire().await.unwrap();
        // A weight change keeps the queue: the slot held under t1 still counts.
        let t2 = compile(file(50, 1), Some(&t1));
        assert!(matches!(
            t2.deployments[0].acquire().await,
            Err(ProxyError::Overloaded { .. })
        ));
        // A limit change builds a new queue; the instance's own count still refuses a second
        // request (after the queue wait, without spinning).
        let t3 = compile(file(50, 2), Some(&t2));
        let second = t3.deployments[0].acquire().await.unwrap();
        assert!(matches!(
            t3.deployments[0].acquire().await,
            Err(ProxyError::Overloaded { .. })
        ));
        assert_eq!(second.instance.in_flight(), 2);
        drop(held);
        drop(second);
        assert_eq!(t3.deployments[0].instances[0].in_flight(), 0);
        let a = t3.deployments[0].acquire().await.unwrap();
        let b = t3.deployments[0].acquire().await.unwrap();
        assert_eq!(b.instance.in_flight(), 2);
        drop((a, b));
    }

    #[test]
    fn sticky_hash_is_nginx_split_clients_murmurhash2() {
        // Values printed by nginx 1.22's split_clients for the same keys.
        assert_eq!(sticky_hash(b""), 0);
        assert_eq!(sticky_hash(b"x"), 0x1635_7ce4);
        assert_eq!(sticky_hash(b"alice"), 0x1c96_2259);
        assert_eq!(sticky_hash(b"bob"), 0x5459_bb03);
        assert_eq!(sticky_hash(b"user-42"), 0xe087_0305);
    }

    #[test]
    fn sticky_keys_follow_nginx_split_clients_buckets() {
        let t = table(
            "sticky_header: x-user-id\ntraffic: {a-dep: 33, b-dep: 33, c-dep: 34}\ndeployments:\n  a-dep: {instances: [127.0.0.1:1]}\n  b-dep: {instances: [127.0.0.1:2]}\n  c-dep: {instances: [127.0.0.1:3]}\n",
        );
        let route = |key: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-user-id", HeaderValue::from_str(key).unwrap());
            let c = t.choose_for(&h, &mut rand::rng()).unwrap();
            t.deployments[c.index].name.to_string()
        };
        // nginx: split_clients "$http_x_user_id" $d { 33% a; 33% b; * c; }
        assert_eq!(route("user-1"), "a-dep");
        assert_eq!(route("alice"), "a-dep");
        assert_eq!(route("12345"), "c-dep");
        assert_eq!(route("some long key value with spaces"), "b-dep");
    }

    #[test]
    fn a_host_name_stands_for_its_addresses_and_kept_addresses_keep_their_instance() {
        let src = "traffic: {blue: 100}\ndeployments:\n  blue: {instances: [scoring:80, 127.0.0.1:9001]}\n";
        let cfg = parse_str(src, Path::new("t.yaml")).expect("valid").config;
        let m = Metrics::new();
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().expect("address");
        let names = |list: &[&str]| {
            let list: Vec<_> = list.iter().map(|s| addr(s)).collect();
            Names::default().refresh_with(&cfg, &m, |_| Ok(list.clone()))
        };
        let addrs = |t: &Table| -> Vec<(String, Option<String>)> {
            t.deployments[0]
                .instances
                .iter()
                .map(|i| {
                    (
                        i.addr.to_string(),
                        i.discovered_from.as_deref().map(String::from),
                    )
                })
                .collect()
        };
        let first =
            Table::compile_resolved(&cfg, 1, None, &m, &names(&["10.0.0.1:80", "10.0.0.2:80"]));
        let from = Some("scoring:80".to_string());
        assert_eq!(
            addrs(&first),
            [
                ("10.0.0.1:80".to_string(), from.clone()),
                ("10.0.0.2:80".to_string(), from.clone()),
                ("127.0.0.1:9001".to_string(), None),
            ]
        );
        // 10.0.0.1 leaves, 10.0.0.3 joins: 10.0.0.2 and the written address keep their state.
        let second = Table::compile_resolved(
            &cfg,
            1,
            Some(&first),
            &m,
            &names(&["10.0.0.2:80", "10.0.0.3:80"]),
        );
        assert_eq!(
            addrs(&second)
                .iter()
                .map(|a| a.0.as_str())
                .collect::<Vec<_>>(),
            ["10.0.0.2:80", "10.0.0.3:80", "127.0.0.1:9001"]
        );
        assert!(Arc::ptr_eq(
            &first.deployments[0].instances[1],
            &second.deployments[0].instances[0]
        ));
        assert!(Arc::ptr_eq(
            &first.deployments[0].instances[2],
            &second.deployments[0].instances[2]
        ));
        // A name that never resolved leaves its deployment without instances: no panic, 503.
        let none = Table::compile_resolved(&cfg, 1, None, &m, &Names::default());
        assert_eq!(none.deployments[0].instances.len(), 1);
        let only_name = parse_str(
            "deployments:\n  blue: {instances: [scoring:80]}\n",
            Path::new("t.yaml"),
        )
        .expect("valid")
        .config;
        let empty = Table::compile_resolved(&only_name, 1, None, &m, &Names::default());
        let d = &empty.deployments[0];
        assert!(d.instances.is_empty());
        assert!(d.try_copy_slot().is_none());
        assert!(matches!(
            block_on(d.acquire()),
            Err(ProxyError::NoInstances)
        ));
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}

//! Layer 3 (routing): the live table, compiled from a checked [`EndpointConfig`] by
//! [`compile`] (pure) and read by every request through one `ArcSwap::load`. It chooses the
//! deployment (pin, then sticky key, then weighted random) and the instance (power of two
//! choices on requests in flight, within the per-instance concurrency limit).

mod compile;
mod sticky;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rand::{Rng, RngExt};
use tokio::sync::Semaphore;

use crate::config::{RequestSettings, UpstreamTls};
use crate::error::ProxyError;
use crate::instance::{Instance, Pick, Slot};
use crate::metrics::DeploymentMetrics;

pub use compile::{Compiled, compile};
pub(crate) use sticky::sticky_hash;

/// One deployment in the live table.
#[derive(Debug)]
pub struct Deployment {
    pub(crate) name: Arc<str>,
    /// `x-deployment` value, built once.
    pub(crate) header_value: HeaderValue,
    /// Live weight 0–100.
    pub(crate) weight: u8,
    pub(crate) settings: RequestSettings,
    /// Set on every request forwarded to the deployment, replacing the client's: its `headers`,
    /// then `Authorization` from `bearer_key_file` (sensitive). Default none (no allocation).
    pub(crate) headers: Box<[(HeaderName, HeaderValue)]>,
    /// The TLS its instances were made with (`None`: cleartext), compared on reload.
    pub(crate) tls: Option<UpstreamTls>,
    /// Metric handles, shared by every table in which the deployment lives.
    pub(crate) metrics: Arc<DeploymentMetrics>,
    /// The REST instances (`instances`), reached over HTTP/1.1.
    pub rest: Group,
    /// The gRPC instances (`grpc_instances`), reached over HTTP/2.
    pub grpc: Group,
}

/// One list of a deployment's instances and its admission queue.
#[derive(Debug)]
pub struct Group {
    pub(crate) instances: Box<[Arc<Instance>]>,
    /// False when the file names no such list for the deployment.
    pub(crate) configured: bool,
    /// `max_concurrent_requests_per_instance` and `max_queue_wait_ms`.
    limit: u32,
    wait: Duration,
    /// With a limit > 0: limit × instances permits, granted in arrival order.
    limiter: Option<Arc<Semaphore>>,
}

// === impl Deployment ===

impl Deployment {
    /// The list a request goes to: `grpc_instances` for gRPC, `instances` for the rest.
    pub(crate) fn group(&self, grpc: bool) -> &Group {
        if grpc { &self.grpc } else { &self.rest }
    }

    /// Every instance of the deployment, REST then gRPC.
    pub(crate) fn all_instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.rest.instances.iter().chain(self.grpc.instances.iter())
    }

    /// [`Group::pick`] on the REST instances.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R, exclude: Option<usize>) -> Option<Pick<'_>> {
        self.rest.pick(rng, exclude)
    }
}

// === impl Group ===

impl Group {
    /// Claims an instance, waiting up to `max_queue_wait` when all are at their limit. When
    /// every instance is ejected the answer is immediate.
    pub(crate) async fn acquire(&self) -> Result<Slot, ProxyError> {
        // Without a limit nothing waits: no future state for the queue on the common path.
        if self.limiter.is_none()
            && let Some(pick) = self.pick(&mut rand::rng(), None)
        {
            return Ok(pick.into_slot(None, true));
        }
        Box::pin(self.acquire_queued()).await
    }

    /// [`Group::acquire`] with a queue (or no instance free right now).
    async fn acquire_queued(&self) -> Result<Slot, ProxyError> {
        if self.instances.is_empty() {
            return Err(ProxyError::NoInstances);
        }
        let (limit, wait) = (self.limit, self.wait);
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
        loop {
            if let Some(pick) = self.pick(&mut rand::rng(), None) {
                return Ok(pick.into_slot(permit, true));
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
        }
    }

    /// A slot for a mirrored copy, now or never: a queue permit if the deployment has a limit,
    /// and a healthy instance with room (not counted as a live request in flight).
    pub(crate) fn try_copy_slot(&self) -> Option<Slot> {
        let permit = match &self.limiter {
            Some(sem) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let pick = self.pick(&mut rand::rng(), None)?;
        Some(pick.into_slot(permit, false))
    }

    /// Moves `slot` to another healthy instance with room (for a retry after a refused
    /// connection), keeping its queue permit. False, and the slot unchanged, when there is none.
    pub(crate) fn reassign(&self, slot: &mut Slot) -> bool {
        let Some(failed) = self
            .instances
            .iter()
            .position(|i| Arc::ptr_eq(i, slot.instance()))
        else {
            return false;
        };
        match self.pick(&mut rand::rng(), Some(failed)) {
            Some(pick) => {
                slot.move_to(pick);
                true
            }
            None => false,
        }
    }

    /// Chooses a healthy instance (other than index `exclude`) and claims a slot on it: the
    /// less loaded of two random ones; with a limit, another one with room if that one is full.
    /// `None` when no healthy instance has room.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R, exclude: Option<usize>) -> Option<Pick<'_>> {
        let limit = self.limit;
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
            .filter(|&i| usable(i))
            .find_map(|i| self.instances[i].try_claim(limit))
    }
}

/// The immutable routing table. Compiled once per valid file.
#[derive(Debug)]
pub struct Table {
    pub(crate) pin_header: HeaderName,
    /// In `traffic:` order, then the other deployments.
    pub deployments: Box<[Deployment]>,
    /// (exclusive cumulative upper bound, deployment index) for weights > 0.
    cumulative: Box<[(u32, usize)]>,
    /// 100, or 0 when no deployment takes unpinned traffic.
    pub(crate) total_weight: u32,
    pub(crate) max_request_body_bytes: u64,
    known_names: Box<str>,
    /// Metric handles for requests refused before routing (`deployment="none"`).
    pub(crate) unrouted: Arc<DeploymentMetrics>,
    /// Header whose value chooses the deployment by [`sticky_hash`].
    pub(crate) sticky_header: Option<HeaderName>,
    /// (exclusive cumulative hash bound, deployment index) for weights > 0, for sticky keys.
    sticky_bounds: Box<[(u32, usize)]>,
    /// Where copies of unpinned requests go (up to 3, each rolled on its own).
    pub(crate) mirrors: Box<[Mirror]>,
    /// How the copies' answers are compared with the live ones (`None`: not compared).
    pub(crate) compare: Option<Arc<crate::shadow::CompareSettings>>,
    /// Largest request body copied to a mirror.
    pub(crate) mirror_max_body: u64,
    /// SHA-256 digests of the accepted keys (`auth_mode: key`).
    pub(crate) keys: Option<Box<[[u8; 32]]>>,
    /// The data-plane listener's TLS, read per new connection (certificates rotate with the
    /// table).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin listener's TLS.
    pub(crate) admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// The access log and the span exporter (default neither).
    pub(crate) telemetry: Telemetry,
}

/// Where a table's finished requests go: the access log and the span exporter.
#[derive(Default)]
pub(crate) struct Telemetry {
    pub(crate) log: Option<LogSink>,
    pub(crate) otlp: Option<crate::telemetry::Exporter>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("log", &self.log.as_ref().map(|l| l.writer.path()))
            .field("otlp", &self.otlp.as_ref().map(|o| o.endpoint()))
            .finish()
    }
}

impl Telemetry {
    /// Whether requests get a record (something logs or exports it).
    pub(crate) fn on(&self) -> bool {
        self.log.is_some() || self.otlp.is_some()
    }
}

/// The access log of a table: its writer (shared by tables with the same path), how lines are
/// written, and the share of requests logged.
pub(crate) struct LogSink {
    pub(crate) writer: Arc<crate::telemetry::Writer>,
    pub(crate) options: crate::telemetry::LineOptions,
    /// 0–1; errors are logged whatever it is.
    pub(crate) sample: f64,
}

/// A live mirror: deployment, share of unpinned requests and its counters.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) index: usize,
    /// 1–100.
    pub(crate) percent: u8,
    pub(crate) ok: prometheus::IntCounter,
    pub(crate) error: prometheus::IntCounter,
    pub(crate) dropped: prometheus::IntCounter,
    /// Comparisons, drops by reason, the copy's answer time.
    pub(crate) shadow: crate::metrics::ShadowMetrics,
}

/// The outcome of choosing a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub pinned: bool,
    /// Chosen by the sticky key's hash.
    pub sticky: bool,
}

// === impl Table ===

impl Table {
    /// The deployment named `name`.
    pub(crate) fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| &*d.name == name)
    }

    /// Chooses the deployment for a request's headers: pinned, else sticky, else weighted
    /// random.
    pub(crate) fn choose_for<R: Rng + ?Sized>(
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
                sticky: true,
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
                    sticky: false,
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
            sticky: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, parse_str};
    use crate::discovery::Names;
    use crate::metrics::Metrics;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::path::Path;

    fn table(yaml: &str) -> Table {
        let loaded = parse_str(yaml, Path::new("t.yaml")).expect("valid");
        build(&loaded.config, None, &Metrics::new())
    }

    fn build(cfg: &EndpointConfig, previous: Option<&Table>, m: &Metrics) -> Table {
        compile(cfg, &Names::default(), previous).apply(m)
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
        let busy: Vec<_> = (0..5)
            .filter_map(|_| d.rest.instances[0].try_claim(0))
            .collect();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let pick = d.pick(&mut rng, None).expect("an instance");
            assert!(Arc::ptr_eq(pick.instance(), &d.rest.instances[1]));
        }
        drop(busy);
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
        let t2 = build(&loaded, Some(&t1), &Metrics::new());
        assert!(Arc::ptr_eq(
            &t1.deployments[0].rest.instances[1],
            &t2.deployments[0].rest.instances[1]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_deployment_answers_overload_after_the_queue_wait() {
        let t = table(
            "traffic: {blue: 100}\ndeployments:\n  blue:\n    instances: [127.0.0.1:9001]\n    request: {max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 200}\n",
        );
        let d = &t.deployments[0];
        let held = d.rest.acquire().await.unwrap();
        let start = tokio::time::Instant::now();
        let err = d.rest.acquire().await.unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded { .. }));
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(200));
        drop(held);
        let again = d.rest.acquire().await.unwrap();
        assert_eq!(again.instance().in_flight(), 1);
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
            build(&cfg, prev, &metrics)
        };
        let t1 = compile(file(100, 1), None);
        let held = t1.deployments[0].rest.acquire().await.unwrap();
        // A weight change keeps the queue: the slot held under t1 still counts.
        let t2 = compile(file(50, 1), Some(&t1));
        assert!(matches!(
            t2.deployments[0].rest.acquire().await,
            Err(ProxyError::Overloaded { .. })
        ));
        // A limit change builds a new queue; the instance's own count still refuses a second
        // request (after the queue wait, without spinning).
        let t3 = compile(file(50, 2), Some(&t2));
        let second = t3.deployments[0].rest.acquire().await.unwrap();
        assert!(matches!(
            t3.deployments[0].rest.acquire().await,
            Err(ProxyError::Overloaded { .. })
        ));
        assert_eq!(second.instance().in_flight(), 2);
        drop(held);
        drop(second);
        assert_eq!(t3.deployments[0].rest.instances[0].in_flight(), 0);
        let a = t3.deployments[0].rest.acquire().await.unwrap();
        let b = t3.deployments[0].rest.acquire().await.unwrap();
        assert_eq!(b.instance().in_flight(), 2);
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
                .rest
                .instances
                .iter()
                .map(|i| {
                    (
                        i.addr().to_string(),
                        i.discovered_from().map(ToString::to_string),
                    )
                })
                .collect()
        };
        let first = compile(&cfg, &names(&["10.0.0.1:80", "10.0.0.2:80"]), None).apply(&m);
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
        let second = compile(&cfg, &names(&["10.0.0.2:80", "10.0.0.3:80"]), Some(&first)).apply(&m);
        assert_eq!(
            addrs(&second)
                .iter()
                .map(|a| a.0.as_str())
                .collect::<Vec<_>>(),
            ["10.0.0.2:80", "10.0.0.3:80", "127.0.0.1:9001"]
        );
        assert!(Arc::ptr_eq(
            &first.deployments[0].rest.instances[1],
            &second.deployments[0].rest.instances[0]
        ));
        assert!(Arc::ptr_eq(
            &first.deployments[0].rest.instances[2],
            &second.deployments[0].rest.instances[2]
        ));
        // A name that never resolved leaves its deployment without instances: no panic, 503.
        let none = compile(&cfg, &Names::default(), None).apply(&m);
        assert_eq!(none.deployments[0].rest.instances.len(), 1);
        let only_name = parse_str(
            "deployments:\n  blue: {instances: [scoring:80]}\n",
            Path::new("t.yaml"),
        )
        .expect("valid")
        .config;
        let empty = compile(&only_name, &Names::default(), None).apply(&m);
        let d = &empty.deployments[0];
        assert!(d.rest.instances.is_empty());
        assert!(d.rest.try_copy_slot().is_none());
        assert!(matches!(
            block_on(d.rest.acquire()),
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

#[cfg(test)]
mod compile_tests {
    use super::*;
    use crate::config::parse_str;
    use crate::discovery::Names;
    use crate::metrics::Metrics;
    use std::path::Path;

    #[test]
    fn compiling_is_pure_and_the_series_appear_when_applied() {
        let file = |g: &str| {
            format!(
                "traffic: {{blue: 100}}\ndeployments:\n  blue: {{instances: [127.0.0.1:9001]}}\n  {g}: {{instances: [127.0.0.1:9002]}}\n"
            )
        };
        let cfg = |g: &str| parse_str(&file(g), Path::new("t")).expect("valid").config;
        let m = Metrics::new();
        let first = compile(&cfg("green"), &Names::default(), None);
        assert!(!m.render().contains("deployment=\"green\""));
        let live = first.apply(&m);
        assert!(m.render().contains(
            "scoregate_instance_healthy{deployment=\"green\",instance=\"127.0.0.1:9002\"} 1"
        ));
        // A new file: compiled (green gone, teal new) but not applied leaves the series alone.
        let next = compile(&cfg("teal"), &Names::default(), Some(&live));
        assert_eq!(
            next.instances("blue"),
            [("127.0.0.1:9001".to_string(), true)]
        );
        assert_eq!(
            next.instances("teal"),
            [("127.0.0.1:9002".to_string(), false)]
        );
        let text = m.render();
        assert!(text.contains("deployment=\"green\"") && !text.contains("deployment=\"teal\""));
        let _ = next.apply(&m);
        let text = m.render();
        assert!(!text.contains("deployment=\"green\"") && text.contains("deployment=\"teal\""));
    }

    #[test]
    fn instances_are_kept_across_reloads_only_while_their_tls_is_unchanged() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).expect("ca");
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).expect("write");
        std::fs::write(dir.path().join("green.key"), "s3cret\n").expect("write");
        let file = dir.path().join("e.yaml");
        let cfg = |tls: &str| {
            let yaml = format!(
                "traffic: {{blue: 100}}\ndeployments:\n  blue:\n    instances: [scoring.example:443]\n    grpc_instances: [127.0.0.1:9002]\n{tls}    headers: {{azureml-model-deployment: blue}}\n    bearer_key_file: green.key\n"
            );
            parse_str(&yaml, &file).expect("valid").config
        };
        let m = Metrics::new();
        // The host name resolves to an address: the name verified is still the one written.
        let build = |c: &crate::config::EndpointConfig, p: Option<&Table>, m: &Metrics| {
            let resolved = "10.0.0.1:443".parse().expect("address");
            let names = Names::default().refresh_with(c, m, |_| Ok(vec![resolved]));
            compile(c, &names, p).apply(m)
        };
        let tls = "    tls: {ca_file: ca.crt}\n";
        let first = build(&cfg(tls), None, &m);
        let d = &first.deployments[0];
        let name = |i: &Instance| format!("{:?}", i.tls());
        assert_eq!(d.rest.instances[0].addr().as_str(), "10.0.0.1:443");
        assert!(name(&d.rest.instances[0]).contains("scoring.example"));
        assert!(name(&d.grpc.instances[0]).contains("127.0.0.1"));
        let headers: Vec<_> = d.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(headers, ["azureml-model-deployment", "authorization"]);
        assert_eq!(d.headers[1].1, "Bearer s3cret");
        assert!(d.headers[1].1.is_sensitive() && !format!("{first:?}").contains("s3cret"));

        let kept = |next: &Table, prev: &Table| {
            next.deployments[0]
                .all_instances()
                .zip(prev.deployments[0].all_instances())
                .all(|(a, b)| Arc::ptr_eq(a, b))
        };
        let same = build(&cfg(tls), Some(&first), &m);
        assert!(kept(&same, &first), "unchanged tls keeps the instances");
        let renamed = build(
            &cfg("    tls: {ca_file: ca.crt, server_name: other.example}\n"),
            Some(&same),
            &m,
        );
        assert!(
            !renamed.deployments[0]
                .all_instances()
                .zip(same.deployments[0].all_instances())
                .any(|(a, b)| Arc::ptr_eq(a, b))
        );
        assert!(name(&renamed.deployments[0].rest.instances[0]).contains("other.example"));
        let plain = build(&cfg(""), Some(&renamed), &m);
        assert!(plain.deployments[0].rest.instances[0].tls().is_none());
        assert!(!kept(&plain, &renamed));
        // A CA file whose content changed is a changed `tls`.
        let again = build(&cfg(tls), Some(&plain), &m);
        let other =
            rcgen::generate_simple_self_signed(vec!["ca2.example".to_string()]).expect("ca");
        std::fs::write(dir.path().join("ca.crt"), other.cert.pem()).expect("write");
        let rotated = build(&cfg(tls), Some(&again), &m);
        assert!(!kept(&rotated, &again));
    }
}

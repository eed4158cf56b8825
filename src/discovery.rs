//! Layer 2 (instance addresses): an instance written as `host:port` with a host name (a
//! Kubernetes headless Service, say) stands for every address the name resolves to through the
//! system resolver (`/etc/hosts`, then DNS). [`Names`] is what is known of the file's names;
//! `control::dns` resolves them again every `dns_refresh_ms` (default 5 s) and only signals the
//! loader, which compiles a new table from the same file (same generation). Removed addresses drain: requests
//! in flight keep their instance until they end. A failed lookup, or one with no addresses,
//! keeps the last known addresses, and is logged and counted.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime};

use crate::addr::InstanceAddr;
use crate::config::EndpointConfig;
use crate::metrics::Metrics;

/// How long the start and a reload wait for the lookups of names new to the file.
pub const FIRST_LOOKUP_DEADLINE: Duration = Duration::from_secs(2);

/// The addresses `instance` resolves to, sorted and without repeats; IPv4 only when it has
/// IPv4 addresses at all (as Envoy's `V4_PREFERRED`: servers listening on `0.0.0.0` are not
/// reachable on the name's IPv6 addresses). Blocking (the system resolver): call it off the
/// async workers.
pub fn resolve(instance: &InstanceAddr) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = instance
        .as_str()
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    if addrs.iter().any(SocketAddr::is_ipv4) {
        addrs.retain(SocketAddr::is_ipv4);
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("the name resolved to no addresses".into());
    }
    Ok(addrs)
}

/// What is known of one name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The last addresses the name resolved to (empty until a lookup succeeds).
    pub addrs: Vec<SocketAddr>,
    /// The last lookup's error, while lookups fail.
    pub error: Option<String>,
    /// When the last lookup succeeded.
    pub resolved_at: Option<SystemTime>,
}

/// Every host-name instance of the live file and what it resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    map: BTreeMap<InstanceAddr, Entry>,
}

impl Names {
    /// The addresses behind `instance` when it is a name (empty until it resolves), `None`
    /// when it is an address.
    pub fn addresses(&self, instance: &InstanceAddr) -> Option<&[SocketAddr]> {
        if !instance.is_name() {
            return None;
        }
        Some(self.map.get(instance).map_or(&[], |e| &e.addrs))
    }

    /// The names and what is known of them, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&InstanceAddr, &Entry)> {
        self.map.iter()
    }

    /// Whether the two know the same addresses for the same names (errors aside).
    pub fn same_addresses(&self, other: &Names) -> bool {
        self.map.len() == other.map.len()
            && self
                .map
                .iter()
                .zip(&other.map)
                .all(|((a, x), (b, y))| a == b && x.addrs == y.addrs)
    }

    /// Resolves every host-name instance of `cfg` with `lookup` (blocking), keeping the last
    /// addresses of a name whose lookup fails; names no longer in `cfg` are dropped.
    pub fn refresh_with(
        &self,
        cfg: &EndpointConfig,
        metrics: &Metrics,
        lookup: impl Fn(&InstanceAddr) -> Result<Vec<SocketAddr>, String>,
    ) -> Names {
        self.merge(cfg, metrics, |name| Some(lookup(name)))
    }

    /// [`Names::refresh_with`] through the system resolver.
    pub fn refresh(&self, cfg: &EndpointConfig, metrics: &Metrics) -> Names {
        self.refresh_with(cfg, metrics, resolve)
    }

    /// For the start and a reload, which must not wait on a slow resolver: names already known
    /// keep their addresses (the periodic refresh looks them up again); names new to `cfg`
    /// are looked up in parallel for at most `deadline`. A lookup still running then leaves
    /// its name without addresses until a later refresh.
    pub fn add_new(&self, cfg: &EndpointConfig, metrics: &Metrics, deadline: Duration) -> Names {
        // Once each: a name in two deployments is one lookup.
        let new: std::collections::BTreeSet<InstanceAddr> = names_in(cfg)
            .filter(|n| !self.map.contains_key(*n))
            .cloned()
            .collect();
        let mut found: BTreeMap<InstanceAddr, Result<Vec<SocketAddr>, String>> = BTreeMap::new();
        if !new.is_empty() {
            let (tx, rx) = std::sync::mpsc::channel();
            for name in &new {
                let (tx, name) = (tx.clone(), name.clone());
                // A lookup that outlives the deadline finishes in the background, unused.
                std::thread::spawn(move || {
                    let result = resolve(&name);
                    let _ = tx.send((name, result));
                });
            }
            let until = std::time::Instant::now() + deadline;
            while found.len() < new.len() {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok((name, result)) => {
                        found.insert(name, result);
                    }
                    Err(_) => break,
                }
            }
        }
        self.merge(cfg, metrics, |name| {
            if self.map.contains_key(name) {
                None
            } else {
                Some(found.remove(name).unwrap_or_else(|| {
                    Err(format!(
                        "no answer within {deadline:?}; looked up again at the next refresh"
                    ))
                }))
            }
        })
    }

    /// The names of `cfg` with `outcome` applied (`None`: keep what is known).
    fn merge(
        &self,
        cfg: &EndpointConfig,
        metrics: &Metrics,
        mut outcome: impl FnMut(&InstanceAddr) -> Option<Result<Vec<SocketAddr>, String>>,
    ) -> Names {
        let mut map = BTreeMap::new();
        for name in names_in(cfg) {
            if map.contains_key(name) {
                continue;
            }
            let old = self.map.get(name).cloned().unwrap_or_default();
            let Some(result) = outcome(name) else {
                map.insert(name.clone(), old);
                continue;
            };
            let entry = match result {
                Ok(addrs) => {
                    if old.addrs != addrs {
                        tracing::info!(
                            name = %name,
                            addresses = %list(&addrs),
                            "instance name resolved"
                        );
                    }
                    Entry {
                        addrs,
                        error: None,
                        resolved_at: Some(SystemTime::now()),
                    }
                }
                Err(error) => {
                    metrics.dns_error(name.as_str());
                    if old.error.as_deref() != Some(error.as_str()) {
                        tracing::warn!(
                            name = %name,
                            error = %error,
                            kept = %list(&old.addrs),
                            "cannot resolve instance name; keeping its last known addresses"
                        );
                    }
                    Entry {
                        error: Some(error),
                        ..old
                    }
                }
            };
            map.insert(name.clone(), entry);
        }
        for gone in self.map.keys().filter(|n| !map.contains_key(*n)) {
            metrics.forget_dns_name(gone.as_str());
        }
        Names { map }
    }
}

/// The host-name instances of `cfg` (repeats included).
pub fn names_in(cfg: &EndpointConfig) -> impl Iterator<Item = &InstanceAddr> {
    cfg.deployments
        .iter()
        .flat_map(|d| d.instances.iter().chain(&d.grpc_instances))
        .filter(|i| i.is_name())
}

fn list(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    fn cfg(instances: &str) -> EndpointConfig {
        let src = format!("deployments:\n  blue:\n    instances: {instances}\n");
        parse_str(&src, Path::new("t.yaml"))
            .map(|l| l.config)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn name(s: &str) -> InstanceAddr {
        InstanceAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses_and_a_new_set_replaces_them() {
        let c = cfg("[scoring:80, 127.0.0.1:9]");
        let m = Metrics::new();
        let first = Names::default().refresh_with(&c, &m, |_| {
            Ok(vec![addr("10.0.0.1:80"), addr("10.0.0.2:80")])
        });
        assert_eq!(
            first.addresses(&name("scoring:80")).map(<[_]>::len),
            Some(2)
        );
        assert_eq!(first.addresses(&name("127.0.0.1:9")), None);

        let failed = first.refresh_with(&c, &m, |_| Err("no such host".into()));
        assert!(failed.same_addresses(&first));
        let (_, entry) = failed
            .entries()
            .next()
            .unwrap_or_else(|| panic!("no entry"));
        assert_eq!(entry.error.as_deref(), Some("no such host"));
        assert_eq!(m.dns_errors("scoring:80"), 1);

        let moved = failed.refresh_with(&c, &m, |_| Ok(vec![addr("10.0.0.3:80")]));
        assert!(!moved.same_addresses(&failed));
        assert_eq!(
            moved.addresses(&name("scoring:80")),
            Some(&[addr("10.0.0.3:80")][..])
        );
        assert_eq!(
            moved.entries().next().and_then(|(_, e)| e.error.clone()),
            None
        );
    }

    #[test]
    fn a_name_never_resolved_has_no_addresses_and_dropped_names_are_forgotten() {
        let m = Metrics::new();
        let none = Names::default().refresh_with(&cfg("[scoring:80]"), &m, |_| Err("x".into()));
        assert_eq!(none.addresses(&name("scoring:80")), Some(&[][..]));
        assert_eq!(m.dns_errors("scoring:80"), 1);
        let other = none.refresh_with(&cfg("[other:80]"), &m, |_| Ok(vec![addr("10.0.0.9:80")]));
        assert_eq!(
            other.entries().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["other:80"]
        );
        // The series of a name no longer in the file is gone.
        assert!(!m.render().contains("scoring:80"), "{}", m.render());
    }

    #[test]
    fn a_reload_looks_up_only_names_new_to_the_file() {
        let m = Metrics::new();
        let before = Names::default()
            .refresh_with(&cfg("[scoring:80]"), &m, |_| Ok(vec![addr("10.0.0.1:80")]));
        // `scoring` is known: kept without a lookup (it would not resolve here); `localhost`
        // is new: looked up now.
        // `localhost` twice (two deployments may name it): still one wait, not the deadline.
        let started = std::time::Instant::now();
        let after = before.add_new(
            &cfg("[scoring:80, localhost:9]\n  green:\n    instances: [localhost:9]"),
            &m,
            Duration::from_secs(5),
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            after.addresses(&name("scoring:80")),
            Some(&[addr("10.0.0.1:80")][..])
        );
        let local = after.addresses(&name("localhost:9")).unwrap_or_default();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn localhost_resolves_through_the_system_resolver() {
        let addrs = resolve(&name("localhost:9")).unwrap_or_else(|e| panic!("{e}"));
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        // IPv4 is preferred: `localhost` often also has `::1`.
        assert!(addrs.iter().all(SocketAddr::is_ipv4), "{addrs:?}");
        assert!(resolve(&name("no-such-host.invalid:9")).is_err());
    }
}

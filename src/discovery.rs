//! Instance discovery by DNS. Beside the data path: an instance written as `host:port` with a
//! host name (a Kubernetes headless Service, say) stands for every address the name resolves
//! to through the system resolver (`/etc/hosts`, then DNS). The names are resolved again every
//! `dns_refresh_ms` (default 5 s); a changed address set only signals the [`Loader`], which
//! compiles a new table from the same file (same generation). Removed addresses drain: requests
//! in flight keep their instance until they end. A failed lookup, or one with no addresses,
//! keeps the last known addresses, and is logged and counted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::EndpointConfig;
use crate::metrics::Metrics;
use crate::reload::Loader;

/// Whether an instance (as written, `host:port` or `[v6]:port`) names a host to resolve
/// rather than an address.
pub fn is_name(instance: &str) -> bool {
    if instance.starts_with('[') {
        return false;
    }
    match instance.rsplit_once(':') {
        Some((host, _)) => host.parse::<IpAddr>().is_err(),
        None => false,
    }
}

/// The addresses `instance` resolves to, sorted and without repeats. Blocking (the system
/// resolver): call it off the async workers.
pub fn resolve(instance: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = instance
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
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
    map: BTreeMap<String, Entry>,
}

impl Names {
    /// The addresses behind `instance` when it is a name (empty until it resolves), `None`
    /// when it is an address.
    pub fn addresses(&self, instance: &str) -> Option<&[SocketAddr]> {
        if !is_name(instance) {
            return None;
        }
        Some(self.map.get(instance).map_or(&[], |e| &e.addrs))
    }

    /// The names and what is known of them, in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
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
        lookup: impl Fn(&str) -> Result<Vec<SocketAddr>, String>,
    ) -> Names {
        let mut map = BTreeMap::new();
        for name in cfg
            .deployments
            .iter()
            .flat_map(|d| d.instances.iter())
            .filter(|i| is_name(i))
        {
            if map.contains_key(name) {
                continue;
            }
            let old = self.map.get(name).cloned().unwrap_or_default();
            let entry = match lookup(name) {
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
                    metrics.dns_error(name);
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
            metrics.forget_dns_name(gone);
        }
        Names { map }
    }

    /// [`Names::refresh_with`] through the system resolver.
    pub fn refresh(&self, cfg: &EndpointConfig, metrics: &Metrics) -> Names {
        self.refresh_with(cfg, metrics, resolve)
    }
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

/// Resolves the live file's names every `dns_refresh_ms` until the process ends; the loader
/// applies a changed address set.
pub async fn run(loader: Arc<Loader>) {
    loop {
        tokio::time::sleep(loader.dns_refresh()).await;
        let l = loader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || l.rediscover()).await {
            tracing::error!(error = %e, "instance discovery failed; trying again");
        }
    }
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

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn names_are_told_from_addresses() {
        assert!(is_name("scoring-blue:8080"));
        assert!(is_name("scoring-blue.ns.svc.cluster.local:8080"));
        assert!(!is_name("10.0.0.5:8080"));
        assert!(!is_name("[::1]:8080"));
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses_and_a_new_set_replaces_them() {
        let c = cfg("[scoring:80, 127.0.0.1:9]");
        let m = Metrics::new();
        let first = Names::default().refresh_with(&c, &m, |_| {
            Ok(vec![addr("10.0.0.1:80"), addr("10.0.0.2:80")])
        });
        assert_eq!(first.addresses("scoring:80").map(<[_]>::len), Some(2));
        assert_eq!(first.addresses("127.0.0.1:9"), None);

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
            moved.addresses("scoring:80"),
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
        assert_eq!(none.addresses("scoring:80"), Some(&[][..]));
        assert_eq!(m.dns_errors("scoring:80"), 1);
        let other = none.refresh_with(&cfg("[other:80]"), &m, |_| Ok(vec![addr("10.0.0.9:80")]));
        assert_eq!(
            other.entries().map(|(n, _)| n).collect::<Vec<_>>(),
            ["other:80"]
        );
        // The series of a name no longer in the file is gone.
        assert!(!m.render().contains("scoring:80"), "{}", m.render());
    }

    #[test]
    fn localhost_resolves_through_the_system_resolver() {
        let addrs = resolve("localhost:9").unwrap_or_else(|e| panic!("{e}"));
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(resolve("no-such-host.invalid:9").is_err());
    }
}

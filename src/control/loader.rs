//! Layer 5 (control): the one loader, the only writer of the live table. Every trigger —
//! a file event, the periodic check, SIGHUP, a DNS refresh — reaches it on one channel and is
//! applied by [`Loader::apply`]: read and check the file (or take the names' new addresses),
//! compile a table (pure), register its series and swap it in. A file that fails to load keeps
//! the table that is live. Blocking (file I/O, lookups of new names): run off the async
//! workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{self, EndpointConfig, Loaded};
use crate::discovery::{FIRST_LOOKUP_DEADLINE, Names};
use crate::metrics::Metrics;
use crate::routing::{Table, compile};

/// What asked for a reload.
#[derive(Debug, Clone)]
pub(crate) enum Trigger {
    /// A change in the file's directory (settled).
    Event,
    /// The periodic content check.
    Poll,
    /// SIGHUP: always a counted reload attempt, even when nothing changed.
    Signal,
    /// The names of the live file `config`, known as `before`, were resolved again, to
    /// `names`.
    Resolved {
        config: Arc<EndpointConfig>,
        before: Names,
        names: Names,
    },
}

/// What the loader knows of the file: the last content or error seen, and what is live.
#[derive(Debug)]
struct State {
    /// The last outcome (fingerprint, or the error), to skip unchanged files.
    last_seen: Result<String, String>,
    /// The fingerprint of the live table (file and keys file).
    applied: String,
    /// The endpoint file's text behind the live table.
    source: String,
    generation: u64,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    loaded_at: SystemTime,
    last_error: Option<String>,
    /// The live file, for resolving its names again.
    config: Arc<EndpointConfig>,
    /// What its host-name instances resolved to.
    names: Names,
}

/// A snapshot of the loader's state, for the admin listener and logs.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    /// The endpoint's `name`, if the file gives one.
    pub name: Option<String>,
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub last_error: Option<String>,
    pub source: String,
    /// Host-name instances and what they resolved to.
    pub names: Names,
}

/// Reads the endpoint file and swaps the live table.
pub(crate) struct Loader {
    path: PathBuf,
    /// The files the live configuration read besides the endpoint file (certificates, keys,
    /// CAs), for the watcher.
    files: tokio::sync::watch::Sender<Vec<PathBuf>>,
    table: Arc<ArcSwap<Table>>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

// === impl Loader ===

impl Loader {
    /// Starts from the file as loaded at start-up (generation 1). Host-name instances are
    /// looked up first, in parallel, for at most [`FIRST_LOOKUP_DEADLINE`] (blocking; a file
    /// of addresses only does no lookup).
    pub(crate) fn new(path: &Path, loaded: &Loaded, metrics: Arc<Metrics>) -> Loader {
        let names = Names::default().add_new(&loaded.config, &metrics, FIRST_LOOKUP_DEADLINE);
        let table = compile(&loaded.config, &names, None).apply(&metrics);
        let table = Arc::new(ArcSwap::from_pointee(table));
        metrics.config_generation.set(1);
        metrics.config_last_reload_success.set(1);
        set_tls_expiry(&metrics, &loaded.config);
        Loader {
            path: path.to_path_buf(),
            files: tokio::sync::watch::Sender::new(files_of(&loaded.config)),
            table,
            metrics,
            state: Mutex::new(State {
                last_seen: Ok(loaded.fingerprint.clone()),
                applied: loaded.fingerprint.clone(),
                source: loaded.source.clone(),
                generation: 1,
                listen: loaded.config.listen,
                admin_listen: loaded.config.admin_listen,
                loaded_at: SystemTime::now(),
                last_error: None,
                config: Arc::new(loaded.config.clone()),
                names,
            }),
        }
    }

    /// How often host-name instances are resolved again (`dns_refresh_ms`).
    pub(crate) fn dns_refresh(&self) -> Duration {
        self.lock().config.dns_refresh
    }

    /// The live file and what its names resolved to, for the DNS refresh.
    pub(crate) fn names(&self) -> (Arc<EndpointConfig>, Names) {
        let st = self.lock();
        (st.config.clone(), st.names.clone())
    }

    /// The process's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live table, for the data plane.
    pub(crate) fn table(&self) -> Arc<ArcSwap<Table>> {
        self.table.clone()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The files to watch besides the endpoint file, as they change.
    pub(crate) fn files(&self) -> tokio::sync::watch::Receiver<Vec<PathBuf>> {
        self.files.subscribe()
    }

    /// The loader's state now.
    pub(crate) fn status(&self) -> Status {
        let st = self.lock();
        Status {
            name: st.config.name.clone(),
            generation: st.generation,
            loaded_at: st.loaded_at,
            last_error: st.last_error.clone(),
            source: st.source.clone(),
            names: st.names.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state holds plain values: a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a trigger: the one path by which a table goes live. Returns whether one did.
    pub(crate) fn apply(&self, trigger: Trigger) -> bool {
        match trigger {
            Trigger::Resolved {
                config,
                before,
                names,
            } => self.apply_addresses(&config, &before, names),
            file => self.apply_file(file),
        }
    }

    /// New addresses for the live file's names: a table from the same file (same generation).
    fn apply_addresses(&self, config: &Arc<EndpointConfig>, before: &Names, names: Names) -> bool {
        let mut st = self.lock();
        if !Arc::ptr_eq(&st.config, config) || !st.names.same_addresses(before) {
            // The file or its addresses changed since the lookups started: what was applied
            // meanwhile stands, and the next refresh starts from it.
            return false;
        }
        let changed = !names.same_addresses(&st.names);
        st.names = names;
        if !changed {
            return false;
        }
        let generation = st.generation;
        self.swap(&st.config, &st.names);
        tracing::info!(generation, "instance addresses changed: new table live");
        true
    }

    /// Compiles the table for `cfg` and `names`, registers its series and swaps it in.
    fn swap(&self, cfg: &EndpointConfig, names: &Names) {
        let compiled = compile(cfg, names, Some(&self.table.load()));
        self.table.store(Arc::new(compiled.apply(&self.metrics)));
    }

    /// Reads the file and applies it if it is valid and differs from the live one.
    fn apply_file(&self, trigger: Trigger) -> bool {
        // Read and validate every time (the file is small): a change of the keys file alone
        // must be seen too. What was seen is compared by fingerprint (or error text).
        let outcome = config::load_file(&self.path).map_err(|e| e.to_string());
        let seen = outcome
            .as_ref()
            .map(|l| l.fingerprint.clone())
            .map_err(Clone::clone);
        // Names new to a file that would go live are looked up before the lock is taken, for
        // at most FIRST_LOOKUP_DEADLINE: a slow resolver must not hold back a weights change.
        // Known names keep their addresses until the periodic refresh.
        let names = match &outcome {
            Ok(l) => {
                let known = {
                    let st = self.lock();
                    (l.fingerprint != st.applied).then(|| st.names.clone())
                };
                known.map(|n| n.add_new(&l.config, &self.metrics, FIRST_LOOKUP_DEADLINE))
            }
            Err(_) => None,
        };
        let mut st = self.lock();
        if !matches!(trigger, Trigger::Signal) && seen == st.last_seen {
            return false;
        }
        st.last_seen = seen;
        let loaded = match outcome {
            Ok(l) => l,
            Err(e) => {
                self.fail(&mut st, e);
                return false;
            }
        };
        for w in &loaded.warnings {
            tracing::warn!(
                "{}:{}:{}: {}",
                self.path.display(),
                w.line,
                w.column,
                w.message
            );
        }
        let cfg = &loaded.config;
        if let Some(e) = tls_switch(&st.config, cfg) {
            self.fail(&mut st, format!("{}: {e}", self.path.display()));
            return false;
        }
        if cfg.listen != st.listen || cfg.admin_listen != st.admin_listen {
            tracing::warn!(
                listen = %st.listen,
                admin_listen = %st.admin_listen,
                "listen and admin_listen are read at start only: the running addresses are kept \
                 (restart to move them)"
            );
        }
        st.last_error = None;
        self.metrics.reload(true);
        if loaded.fingerprint == st.applied {
            tracing::info!(
                generation = st.generation,
                ?trigger,
                "endpoint file reloaded: content unchanged"
            );
            return false;
        }
        let names = names.unwrap_or_else(|| st.names.clone());
        st.generation += 1;
        self.swap(cfg, &names);
        set_tls_expiry(&self.metrics, cfg);
        log_rotations(&st.config, cfg);
        self.files.send_if_modified(|files| {
            let new = files_of(cfg);
            let changed = *files != new;
            *files = new;
            changed
        });
        st.names = names;
        st.loaded_at = SystemTime::now();
        self.metrics.config_generation.set(st.generation as i64);
        tracing::info!(
            generation = st.generation,
            traffic = %cfg.traffic_summary(),
            ?trigger,
            "endpoint file reloaded: new table live"
        );
        st.applied = loaded.fingerprint;
        st.source = loaded.source;
        st.config = Arc::new(loaded.config);
        true
    }

    fn fail(&self, st: &mut State, error: String) {
        tracing::error!(
            "endpoint file not applied; generation {} keeps serving:\n{error}",
            st.generation
        );
        st.last_error = Some(error);
        self.metrics.reload(false);
    }
}

/// Why `new` cannot replace `live` by a reload: a listener's TLS turned on or off (the
/// listeners are bound, and speak TLS or not, from the start; certificates rotate).
fn tls_switch(live: &EndpointConfig, new: &EndpointConfig) -> Option<String> {
    for (what, was, is) in [
        ("tls", live.tls.is_some(), new.tls.is_some()),
        (
            "admin_tls",
            live.admin_tls.is_some(),
            new.admin_tls.is_some(),
        ),
    ] {
        if was != is {
            let verb = if is { "added" } else { "removed" };
            return Some(format!(
                "`{what}` was {verb}: a listener's TLS is turned on or off at start only \
                 (restart to do it; a changed certificate or key is applied by a reload)"
            ));
        }
    }
    None
}

/// The files `cfg` read besides the endpoint file, each once.
fn files_of(cfg: &EndpointConfig) -> Vec<PathBuf> {
    let mut files = cfg.files();
    files.sort();
    files.dedup();
    files
}

/// Logs each listener whose certificate or key changed.
fn log_rotations(live: &EndpointConfig, new: &EndpointConfig) {
    for (listener, was, is) in [
        ("data", &live.tls, &new.tls),
        ("admin", &live.admin_tls, &new.admin_tls),
    ] {
        if let (Some(was), Some(is)) = (was, is)
            && was != is
        {
            tracing::info!(
                listener,
                certificate = %is.pair.info.summary(),
                "TLS certificate changed: new connections are served with it"
            );
        }
    }
}

/// The listeners' certificate expiry series.
fn set_tls_expiry(metrics: &Metrics, cfg: &EndpointConfig) {
    for (listener, tls) in [("data", &cfg.tls), ("admin", &cfg.admin_tls)] {
        let at = tls.as_ref().map(|t| t.pair.info.not_after_unix());
        metrics.tls_expiry(listener, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "traffic: {blue: 100, green: 0}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n  green: {instances: [127.0.0.1:9002]}\n";
    const V2: &str = "traffic: {blue: 0, green: 100}\ndeployments:\n  blue: {instances: [127.0.0.1:9001]}\n  green: {instances: [127.0.0.1:9002]}\n";

    fn setup() -> (tempfile::TempDir, PathBuf, Loader, Arc<Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoint.yaml");
        std::fs::write(&path, V1).unwrap();
        let loaded = config::load_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let loader = Loader::new(&path, &loaded, metrics.clone());
        (dir, path, loader, metrics)
    }

    /// A self-signed pair written beside the endpoint file as `NAME.crt` and `NAME.key`.
    fn pair(dir: &Path, name: &str) {
        let c = rcgen::generate_simple_self_signed(vec!["scoring.test".to_string()]).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), c.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            c.signing_key.serialize_pem(),
        )
        .unwrap();
    }

    #[test]
    fn tls_is_turned_on_or_off_at_start_only_and_a_new_pair_applies() {
        let (dir, path, loader, metrics) = setup();
        pair(dir.path(), "a");
        let with_tls = format!("tls: {{cert_file: a.crt, key_file: a.key}}\n{V2}");
        std::fs::write(&path, &with_tls).unwrap();
        assert!(!loader.apply(Trigger::Event));
        let error = loader.status().last_error.unwrap();
        assert!(
            error.contains("`tls` was added") && error.contains("restart"),
            "{error}"
        );
        assert_eq!(green_weight(&loader), 0);
        assert!(
            !metrics
                .render()
                .contains("scoregate_tls_certificate_expiry_seconds")
        );

        // Started with TLS: a new pair in the same files is a change; removing `tls` is not.
        let loaded = config::load_file(&path).unwrap();
        let loader = Loader::new(&path, &loaded, metrics.clone());
        let first = loader.table().load().tls.clone().unwrap();
        assert!(
            metrics
                .render()
                .contains("scoregate_tls_certificate_expiry_seconds{listener=\"data\"}")
        );
        pair(dir.path(), "a");
        assert!(loader.apply(Trigger::Event));
        let second = loader.table().load().tls.clone().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the new pair did not go live"
        );
        std::fs::write(&path, V1).unwrap();
        assert!(!loader.apply(Trigger::Event));
        assert!(last_error(&loader).contains("`tls` was removed"));
        assert_eq!(green_weight(&loader), 100);
    }

    fn last_error(l: &Loader) -> String {
        l.status().last_error.unwrap_or_default()
    }

    fn green_weight(l: &Loader) -> u8 {
        l.table().load().deployment("green").unwrap().weight
    }

    #[test]
    fn a_valid_change_swaps_the_table_and_bumps_the_generation() {
        let (_d, path, loader, metrics) = setup();
        std::fs::write(&path, V2).unwrap();
        assert!(loader.apply(Trigger::Event));
        assert_eq!(green_weight(&loader), 100);
        assert_eq!(loader.status().generation, 2);
        assert_eq!(metrics.config_generation.get(), 2);
        // Same content again: nothing happens, nothing is counted.
        assert!(!loader.apply(Trigger::Poll));
        assert!(
            metrics
                .render()
                .contains("scoregate_config_reloads_total{result=\"success\"} 1")
        );
    }

    #[test]
    fn invalid_empty_and_missing_files_keep_the_table() {
        let (_d, path, loader, metrics) = setup();
        for bad in [
            "traffic: [",
            "",
            "traffic: {blue: 100, green: 0}\ndeployments:\n  blue: {inst",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(!loader.apply(Trigger::Event));
            assert_eq!(green_weight(&loader), 0);
            assert!(
                loader
                    .status()
                    .last_error
                    .unwrap()
                    .contains("endpoint.yaml:")
            );
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!loader.apply(Trigger::Event));
        assert!(last_error(&loader).contains("cannot read the file"));
        // A missing file seen again by the periodic check is not counted twice.
        assert!(!loader.apply(Trigger::Poll));
        let text = metrics.render();
        assert!(
            text.contains("scoregate_config_reloads_total{result=\"error\"} 4"),
            "{text}"
        );
        assert!(text.contains("scoregate_config_last_reload_success 0"));
        assert_eq!(loader.status().generation, 1);
        std::fs::write(&path, V2).unwrap();
        assert!(loader.apply(Trigger::Event));
        assert_eq!(green_weight(&loader), 100);
        assert_eq!(loader.status().last_error, None);
        assert!(
            metrics
                .render()
                .contains("scoregate_config_last_reload_success 1")
        );
    }

    #[test]
    fn sighup_counts_a_reload_without_a_new_generation_for_the_same_content() {
        let (_d, _path, loader, metrics) = setup();
        assert!(!loader.apply(Trigger::Signal));
        assert_eq!(loader.status().generation, 1);
        assert!(
            metrics
                .render()
                .contains("scoregate_config_reloads_total{result=\"success\"} 1")
        );
    }

    #[test]
    fn a_new_listen_address_is_not_applied() {
        let (_d, path, loader, _m) = setup();
        std::fs::write(&path, format!("listen: 127.0.0.1:1234\n{V2}")).unwrap();
        assert!(loader.apply(Trigger::Event));
        assert_eq!(green_weight(&loader), 100);
        assert_eq!(loader.lock().listen, "127.0.0.1:8080".parse().unwrap());
    }
}

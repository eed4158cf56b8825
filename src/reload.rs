//! Hot reload: the only writer of the live table. The watcher only signals (directory events,
//! SIGHUP, a periodic content check); the [`Loader`] decides: it reads, parses and validates the
//! file and swaps in a new table only when the whole file is valid. A failed load keeps the old
//! table. Beside the data path, which sees its work through one `ArcSwap::load`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, EndpointConfig, Loaded};
use crate::discovery::{FIRST_LOOKUP_DEADLINE, Names};
use crate::metrics::Metrics;
use crate::routing::Table;

/// Quiet time after the last file event before the file is read (writers often take several
/// system calls to replace a file).
pub const SETTLE: Duration = Duration::from_millis(100);
/// Longest settle, however busy the directory is.
pub const MAX_SETTLE: Duration = Duration::from_millis(500);
/// How often the file's content is checked even without events (a missed event, a watcher
/// that died, a symlink whose target lives elsewhere).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A change in the file's directory.
    Event,
    /// The periodic content check.
    Poll,
    /// SIGHUP: always a counted reload attempt, even when nothing changed.
    Signal,
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
pub struct Status {
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
pub struct Loader {
    path: PathBuf,
    table: Arc<ArcSwap<Table>>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl Loader {
    /// Starts from the file as loaded at start-up (generation 1). Host-name instances are
    /// looked up first, in parallel, for at most [`FIRST_LOOKUP_DEADLINE`] (blocking; a file
    /// of addresses only does no lookup).
    pub fn new(path: &Path, loaded: &Loaded, metrics: Arc<Metrics>) -> Loader {
        let names = Names::default().add_new(&loaded.config, &metrics, FIRST_LOOKUP_DEADLINE);
        let table = Arc::new(ArcSwap::from_pointee(Table::compile_resolved(
            &loaded.config,
            1,
            None,
            &metrics,
            &names,
        )));
        metrics.config_generation.set(1);
        metrics.config_last_reload_success.set(1);
        Loader {
            path: path.to_path_buf(),
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
    pub fn dns_refresh(&self) -> Duration {
        self.lock().config.dns_refresh
    }

    /// Resolves the live file's host-name instances again and, when an address set changed,
    /// swaps in a table from the same file (same generation) with the new addresses. Blocking
    /// (the system resolver): call it off the async workers. Returns whether a table went live.
    pub fn rediscover(&self) -> bool {
        let (cfg, names, generation) = {
            let st = self.lock();
            (st.config.clone(), st.names.clone(), st.generation)
        };
        if crate::discovery::names_in(&cfg).next().is_none() {
            return false;
        }
        // Resolved without the lock: lookups may take seconds.
        let fresh = names.refresh(&cfg, &self.metrics);
        let mut st = self.lock();
        if st.generation != generation {
            // A reload won the race and resolved the names itself.
            return false;
        }
        let changed = !fresh.same_addresses(&st.names);
        st.names = fresh;
        if !changed {
            return false;
        }
        let table = Table::compile_resolved(
            &cfg,
            st.generation,
            Some(&self.table.load()),
            &self.metrics,
            &st.names,
        );
        self.table.store(Arc::new(table));
        tracing::info!(
            generation = st.generation,
            "instance addresses changed: new table live"
        );
        true
    }

    /// The live table, for the data plane.
    pub fn table(&self) -> Arc<ArcSwap<Table>> {
        self.table.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loader's state now.
    pub fn status(&self) -> Status {
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

    /// Reads the file and applies it if it is valid and differs from the live one. Blocking
    /// (file I/O): call it off the async workers. Returns whether a new table went live.
    pub fn reload(&self, trigger: Trigger) -> bool {
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
        if trigger != Trigger::Signal && seen == st.last_seen {
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
        let table = Table::compile_resolved(
            cfg,
            st.generation,
            Some(&self.table.load()),
            &self.metrics,
            &names,
        );
        self.table.store(Arc::new(table));
        st.names = names;
        st.loaded_at = SystemTime::now();
        self.metrics.config_generation.set(st.generation as i64);
        tracing::info!(
            generation = st.generation,
            traffic = %traffic_map(cfg),
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

/// `blue=90 green=10`, in table order.
pub fn traffic_map(cfg: &EndpointConfig) -> String {
    crate::ops::show(&crate::ops::weights(cfg), "")
}

enum WatchMsg {
    Changed,
    Failed(String),
}

/// Watches the directory holding the file (so renames, symlink swaps and re-creations are all
/// seen), non-recursively. Access events (including the loader's own reads) are ignored.
fn start_watcher(
    dir: &Path,
    tx: mpsc::UnboundedSender<WatchMsg>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => return,
            Ok(_) => WatchMsg::Changed,
            Err(e) => WatchMsg::Failed(e.to_string()),
        };
        let _ = tx.send(msg);
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; relying on the periodic check");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory; relying on the periodic check");
        return None;
    }
    Some(watcher)
}

/// Runs the reload loop until the process ends: events (settled), the periodic check, SIGHUP.
pub async fn watch(loader: Arc<Loader>) {
    let dir = match loader.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = start_watcher(&dir, tx.clone());
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut hup = hangup();
    loop {
        let trigger = tokio::select! {
            Some(msg) = rx.recv() => match msg {
                WatchMsg::Changed => Trigger::Event,
                WatchMsg::Failed(e) => {
                    tracing::warn!(error = %e, "file watcher failed; restarting it at the next check");
                    watcher = None;
                    continue;
                }
            },
            _ = poll.tick() => {
                if watcher.is_none() {
                    watcher = start_watcher(&dir, tx.clone());
                }
                Trigger::Poll
            }
            _ = recv_hup(&mut hup) => Trigger::Signal,
        };
        if trigger == Trigger::Event {
            // Settle: wait until the directory has been quiet for SETTLE, but no longer than
            // MAX_SETTLE (a directory written to all the time must not hold reloads back).
            let deadline = tokio::time::Instant::now() + MAX_SETTLE;
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
        let l = loader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || l.reload(trigger)).await {
            tracing::error!(error = %e, "reload task failed");
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn recv_hup(hup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(h) = hup {
        h.recv().await;
        return;
    }
    let _ = hup;
    std::future::pending::<()>().await
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

    fn green_weight(l: &Loader) -> u8 {
        l.table().load().deployment("green").unwrap().weight
    }

    #[test]
    fn a_valid_change_swaps_the_table_and_bumps_the_generation() {
        let (_d, path, loader, metrics) = setup();
        std::fs::write(&path, V2).unwrap();
        assert!(loader.reload(Trigger::Event));
        assert_eq!(green_weight(&loader), 100);
        assert_eq!(loader.status().generation, 2);
        assert_eq!(metrics.config_generation.get(), 2);
        // Same content again: nothing happens, nothing is counted.
        assert!(!loader.reload(Trigger::Poll));
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
            assert!(!loader.reload(Trigger::Event));
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
        assert!(!loader.reload(Trigger::Event));
        assert!(
            loader
                .status()
                .last_error
                .unwrap()
                .contains("cannot read the file")
        );
        // A missing file seen again by the periodic check is not counted twice.
        assert!(!loader.reload(Trigger::Poll));
        let text = metrics.render();
        assert!(
            text.contains("scoregate_config_reloads_total{result=\"error\"} 4"),
            "{text}"
        );
        assert!(text.contains("scoregate_config_last_reload_success 0"));
        assert_eq!(loader.status().generation, 1);
        std::fs::write(&path, V2).unwrap();
        assert!(loader.reload(Trigger::Event));
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
        assert!(!loader.reload(Trigger::Signal));
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
        assert!(loader.reload(Trigger::Event));
        assert_eq!(green_weight(&loader), 100);
        assert_eq!(loader.lock().listen, "127.0.0.1:8080".parse().unwrap());
    }
}

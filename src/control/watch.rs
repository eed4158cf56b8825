//! Layer 5 (control): the endpoint file's sources of triggers. Watches the directory holding
//! the file (so renames, symlink swaps and re-creations are all seen), checks it periodically
//! and listens for SIGHUP; it only signals the loader, which decides.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::loader::Trigger;

/// Quiet time after the last file event before the file is read (writers often take several
/// system calls to replace a file).
const SETTLE: Duration = Duration::from_millis(100);
/// Longest settle, however busy the directory is.
const MAX_SETTLE: Duration = Duration::from_millis(500);
/// How often the file's content is checked even without events (a missed event, a watcher
/// that died, a symlink whose target lives elsewhere).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

enum WatchMsg {
    Changed,
    Failed(String),
}

/// The names of the files read (the endpoint file and those it names): only events about
/// them, or about a Kubernetes volume's `..data` swap, wake anything. A directory shared with
/// busy files (logs, a load tool's output) costs nothing then.
#[derive(Debug, Default)]
struct Interest {
    names: Mutex<Vec<OsString>>,
}

impl Interest {
    fn set(&self, files: impl Iterator<Item = PathBuf>) {
        let names = files.filter_map(|f| f.file_name().map(|n| n.to_os_string()));
        let mut kept = self.names.lock().unwrap_or_else(|e| e.into_inner());
        *kept = names.collect();
    }

    /// Whether an event about `paths` may concern a file read (no path: it may).
    fn concerns(&self, paths: &[PathBuf]) -> bool {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        paths.is_empty()
            || paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    names.iter().any(|w| w == n) || n.to_string_lossy().starts_with("..")
                })
            })
    }
}

/// Watches the directory holding the file (so renames, symlink swaps and re-creations are all
/// seen), non-recursively. Access events (including the loader's own reads) and events about
/// other files are ignored.
fn start_watcher(
    dir: &Path,
    tx: mpsc::UnboundedSender<WatchMsg>,
    interest: Arc<Interest>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => return,
            Ok(ev) if !interest.concerns(&ev.paths) => return,
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

/// Watches `extra` directories too (those of certificates and keys the file names), as far as
/// they can be; what cannot be watched is left to the periodic check.
fn watch_extra(
    watcher: &mut Option<notify::RecommendedWatcher>,
    extra: &[PathBuf],
    watched: &mut Vec<PathBuf>,
) {
    let Some(w) = watcher else {
        watched.clear();
        return;
    };
    for gone in watched.iter().filter(|d| !extra.contains(d)) {
        let _ = w.unwatch(gone);
    }
    watched.retain(|d| extra.contains(d));
    let new: Vec<&PathBuf> = extra.iter().filter(|d| !watched.contains(d)).collect();
    for dir in new {
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir.clone()),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory; relying on the periodic check")
            }
        }
    }
}

/// Signals the loader until the process ends or the loader is gone: a settled change to the
/// file or to the files it names (`files`, watched in their directories), the periodic
/// content check, SIGHUP.
pub(super) async fn run(
    path: PathBuf,
    mut files: tokio::sync::watch::Receiver<Vec<PathBuf>>,
    triggers: mpsc::Sender<Trigger>,
) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let interest = Arc::new(Interest::default());
    // The endpoint file and the files it names; the directories of the latter besides its own.
    let follow = |files: &[PathBuf], watcher: &mut Option<_>, watched: &mut Vec<PathBuf>| {
        interest.set(std::iter::once(path.clone()).chain(files.iter().cloned()));
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|d| *d != dir)
            .collect();
        dirs.sort();
        dirs.dedup();
        watch_extra(watcher, &dirs, watched);
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = start_watcher(&dir, tx.clone(), interest.clone());
    let mut watched = Vec::new();
    follow(&files.borrow_and_update(), &mut watcher, &mut watched);
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
                    watcher = start_watcher(&dir, tx.clone(), interest.clone());
                    watched.clear();
                    follow(&files.borrow(), &mut watcher, &mut watched);
                }
                Trigger::Poll
            }
            Ok(()) = files.changed() => {
                follow(&files.borrow_and_update(), &mut watcher, &mut watched);
                continue;
            }
            _ = recv_hup(&mut hup) => Trigger::Signal,
        };
        if matches!(trigger, Trigger::Event) {
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
        if triggers.send(trigger).await.is_err() {
            return;
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

    #[test]
    fn only_events_about_the_files_read_or_a_volume_swap_concern_the_loader() {
        let interest = Interest::default();
        interest.set(
            [
                PathBuf::from("/etc/sg/endpoint.yaml"),
                PathBuf::from("/etc/tls/tls.crt"),
            ]
            .into_iter(),
        );
        let about = |p: &str| interest.concerns(&[PathBuf::from(p)]);
        assert!(about("/etc/sg/endpoint.yaml") && about("/etc/tls/tls.crt"));
        assert!(about("/etc/tls/..data") && about("/etc/tls/..2026_12_03_06_00_00.123"));
        assert!(!about("/etc/sg/access.log") && !about("/etc/sg/endpoint.yaml.swp"));
        // A rename names both ends: the new name is enough.
        assert!(interest.concerns(&[
            PathBuf::from("/etc/sg/.tmp123"),
            PathBuf::from("/etc/sg/endpoint.yaml")
        ]));
        assert!(interest.concerns(&[]));
    }
}

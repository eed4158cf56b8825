//! Layer 5 (control): what changes the live table, and when. [`loader`] is the one consumer
//! of a channel of triggers; [`watch`] (file events, the periodic check, SIGHUP) and [`dns`]
//! (the refresh of host names) only send on it. [`probe`] brings ejected instances back;
//! SIGUSR1 reopens the access log.

mod dns;
mod loader;
mod probe;
mod watch;

use std::sync::Arc;

use tokio::sync::mpsc;

pub(crate) use loader::Loader;

/// Triggers waiting for the loader at most; a source waits when it is full.
const TRIGGERS: usize = 16;

/// Starts the sources, the prober and the loader's consumer task, for as long as the process
/// runs.
pub(crate) fn spawn(loader: Arc<Loader>) {
    let (tx, rx) = mpsc::channel(TRIGGERS);
    tokio::spawn(watch::run(
        loader.path().to_path_buf(),
        loader.files(),
        tx.clone(),
    ));
    tokio::spawn(dns::run(loader.clone(), tx));
    tokio::spawn(probe::run(loader.table()));
    tokio::spawn(reopen_on_usr1(loader.table()));
    tokio::spawn(consume(loader, rx));
}

/// SIGUSR1 reopens the access log, as nginx does: after logrotate moved the file, lines go to
/// a new file at the path. (A file moved away is also noticed without the signal, within a
/// second.) Not a reload: the table stays.
async fn reopen_on_usr1(table: Arc<arc_swap::ArcSwap<crate::routing::Table>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1; the access log is reopened only when moved");
        return;
    };
    while usr1.recv().await.is_some() {
        if let Some(log) = &table.load().telemetry.log {
            tracing::info!(path = %log.writer.path().display(), "SIGUSR1: reopening the access log");
            log.writer.reopen();
        }
    }
}

/// Applies each trigger in turn, off the async workers.
async fn consume(loader: Arc<Loader>, mut triggers: mpsc::Receiver<loader::Trigger>) {
    while let Some(trigger) = triggers.recv().await {
        let l = loader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || l.apply(trigger)).await {
            tracing::error!(error = %e, "reload task failed");
        }
    }
}

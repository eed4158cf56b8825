//! Layer 5 (control): what changes the live table, and when. [`loader`] is the one consumer
//! of a channel of triggers; [`watch`] (file events, the periodic check, SIGHUP) and [`dns`]
//! (the refresh of host names) only send on it. [`probe`] brings ejected instances back.

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
    tokio::spawn(consume(loader, rx));
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

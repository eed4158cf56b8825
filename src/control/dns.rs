//! Layer 5 (control): the DNS refresh. Every `dns_refresh_ms` it resolves the live file's host
//! names again, off the async workers and off the loader (a slow resolver holds back nothing),
//! and signals the loader with what it found; the loader decides whether a table changes.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::discovery::names_in;

use super::loader::{Loader, Trigger};

/// Resolves and signals until the process ends or the loader is gone.
pub(super) async fn run(loader: Arc<Loader>, triggers: mpsc::Sender<Trigger>) {
    loop {
        tokio::time::sleep(loader.dns_refresh()).await;
        let (config, names) = loader.names();
        if names_in(&config).next().is_none() {
            continue;
        }
        let metrics = loader.metrics().clone();
        let lookup = tokio::task::spawn_blocking(move || {
            let fresh = names.refresh(&config, &metrics);
            (config, names, fresh)
        });
        let (config, before, names) = match lookup.await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "instance discovery failed; trying again");
                continue;
            }
        };
        if triggers
            .send(Trigger::Resolved {
                config,
                before,
                names,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

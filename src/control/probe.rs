//! Layer 5 (control): active checks of ejected instances. Every [`CHECK_EVERY`] it probes the
//! ejected instances of the live table whose ejection time is up (a TCP connect, and the TLS
//! handshake for an instance reached over TLS) and sweeps idle pooled connections. Changes only
//! instances' own state, never the table.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::instance::{Conns, Instance};
use crate::routing::Table;

/// How often ejected instances are checked and idle connections swept.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take to connect (and finish its TLS handshake).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Can a connection to the instance be opened now (over TLS, with its certificate verified,
/// when the instance has TLS)? If not, why.
async fn probe(instance: &Instance) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, instance.probe()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {PROBE_TIMEOUT:?}")),
    }
}

/// Probes ejected instances whose time is up and sweeps idle connections, until the process
/// ends.
pub(super) async fn run(table: Arc<ArcSwap<Table>>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let table = table.load_full();
        // Probes run side by side, so one unreachable instance does not delay the others.
        let mut probes = tokio::task::JoinSet::new();
        for d in table.deployments.iter() {
            for i in d.all_instances() {
                if let Conns::H1(pool) = i.conns() {
                    pool.sweep();
                }
                if i.probe_due() {
                    let (name, i) = (d.name.clone(), i.clone());
                    probes.spawn(async move {
                        match probe(&i).await {
                            Ok(()) => {
                                i.reinstate();
                                tracing::info!(deployment = %name, instance = %i.addr(), "instance answers again: back in rotation (on probation)");
                            }
                            Err(error) => {
                                let time = i.eject();
                                tracing::warn!(deployment = %name, instance = %i.addr(), ejected_for = ?time, %error, "instance still unreachable: ejected again");
                            }
                        }
                    });
                }
            }
        }
        while probes.join_next().await.is_some() {}
    }
}

//! Layer 3 (routing): building a table, in two steps. [`compile`] is pure: from a checked file,
//! the addresses its names resolved to and the live table, it works out every deployment, which
//! instances are kept (with their connections, health and slots) and which are new or gone.
//! [`Compiled::apply`] then registers the new metric series, drops the series of what is gone
//! and returns the table to swap in; the loader calls it once, right before the swap.

use std::collections::HashSet;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::addr::InstanceAddr;
use crate::config::{
    Auth, DeploymentConfig, EndpointConfig, LogFormat, RequestSettings, UpstreamTls,
};
use crate::discovery::Names;
use crate::instance::{Instance, Tls};
use crate::metrics::{DeploymentMetrics, Metrics};
use crate::telemetry::{Exporter, Format, LineOptions, Writer};

use super::sticky::sticky_bound;
use super::{Deployment, Group, LogSink, Mirror, Table, Telemetry};

/// A table compiled and not yet live: nothing registered anywhere.
#[derive(Debug)]
pub struct Compiled {
    deployments: Vec<Planned>,
    /// (exclusive cumulative upper bound, deployment index) for weights > 0.
    cumulative: Vec<(u32, usize)>,
    total_weight: u32,
    pin_header: http::HeaderName,
    sticky_header: Option<http::HeaderName>,
    max_request_body_bytes: u64,
    keys: Option<Box<[[u8; 32]]>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// (deployment index, percent, deployment name) of each mirror.
    mirrors: Vec<(usize, u8, String)>,
    compare: Option<Arc<crate::shadow::CompareSettings>>,
    mirror_max_body: u64,
    unrouted: Option<Arc<DeploymentMetrics>>,
    /// Instances of kept deployments that are gone: (deployment, address).
    gone_instances: Vec<(String, String)>,
    /// Deployments that are gone, with their instances' addresses.
    gone_deployments: Vec<(Arc<DeploymentMetrics>, Vec<String>)>,
    telemetry: PlannedTelemetry,
}

/// One deployment of a compiled table.
#[derive(Debug)]
struct Planned {
    name: String,
    weight: u8,
    settings: RequestSettings,
    /// TLS to its instances.
    tls: Option<UpstreamTls>,
    /// `headers`, then `Authorization` from `bearer_key_file`.
    headers: Box<[(HeaderName, HeaderValue)]>,
    rest: PlannedGroup,
    grpc: PlannedGroup,
    /// The live deployment's metric handles, when it is kept.
    metrics: Option<Arc<DeploymentMetrics>>,
}

/// One list of a planned deployment's instances.
#[derive(Debug)]
struct PlannedGroup {
    instances: Vec<PlannedInstance>,
    configured: bool,
    limiter: Option<Arc<Semaphore>>,
}

#[derive(Debug)]
enum PlannedInstance {
    Kept(Arc<Instance>),
    New {
        addr: InstanceAddr,
        discovered_from: Option<InstanceAddr>,
    },
}

/// Compiles `cfg`; a host-name instance stands for the addresses `names` knows for it.
/// Instances and metric handles of `previous` with the same deployment (and address) are kept;
/// instances only while the deployment's `tls` is unchanged too (its connections were made
/// with it).
pub fn compile(cfg: &EndpointConfig, names: &Names, previous: Option<&Table>) -> Compiled {
    let mut deployments = Vec::with_capacity(cfg.deployments.len());
    let mut cumulative = Vec::new();
    let mut total = 0u32;
    let mut gone_instances = Vec::new();
    for (index, d) in cfg.deployments.iter().enumerate() {
        let old = previous.and_then(|t| t.deployment(&d.name));
        let keep = old.is_some_and(|o| o.tls == d.tls);
        let mut plan = |written, old| {
            plan_group(
                written,
                names,
                old,
                keep,
                &d.request,
                &d.name,
                &mut gone_instances,
            )
        };
        let rest = plan(&d.instances, old.map(|o| &o.rest));
        let grpc = plan(&d.grpc_instances, old.map(|o| &o.grpc));
        if d.weight > 0 {
            total += u32::from(d.weight);
            cumulative.push((total, index));
        }
        deployments.push(Planned {
            name: d.name.clone(),
            weight: d.weight,
            settings: d.request.clone(),
            tls: d.tls.clone(),
            headers: upstream_headers(d),
            rest,
            grpc,
            metrics: old.map(|o| o.metrics.clone()),
        });
    }
    let gone_deployments = previous
        .iter()
        .flat_map(|t| t.deployments.iter())
        .filter(|o| !cfg.deployments.iter().any(|d| d.name == *o.name))
        .map(|o| {
            let addrs = o.all_instances().map(|i| i.addr().to_string()).collect();
            (o.metrics.clone(), addrs)
        })
        .collect();
    let mirrors = cfg
        .mirrors
        .iter()
        .filter_map(|m| {
            let index = cfg
                .deployments
                .iter()
                .position(|d| d.name == m.deployment)?;
            Some((index, m.percent, m.deployment.clone()))
        })
        .collect();
    Compiled {
        deployments,
        cumulative,
        total_weight: total,
        pin_header: cfg.pin_header.clone(),
        sticky_header: cfg.sticky_header.clone(),
        max_request_body_bytes: cfg.max_request_body_bytes,
        keys: match &cfg.auth {
            Auth::Key(k) => Some(k.digests.clone().into_boxed_slice()),
            Auth::None => None,
        },
        tls: cfg.tls.as_ref().map(|t| t.server.0.clone()),
        admin_tls: cfg.admin_tls.as_ref().map(|t| t.server.0.clone()),
        mirrors,
        compare: cfg.mirror_compare.clone().map(Arc::new),
        mirror_max_body: cfg.mirror_max_body_bytes,
        unrouted: previous.map(|t| t.unrouted.clone()),
        gone_instances,
        gone_deployments,
        telemetry: plan_telemetry(cfg, previous),
    }
}

/// The access log and exporter a table will have: the live table's writer when the path is
/// the same (its thread and file stay), its exporter when the endpoint is the same.
fn plan_telemetry(cfg: &EndpointConfig, previous: Option<&Table>) -> PlannedTelemetry {
    let old = previous.map(|t| &t.telemetry);
    PlannedTelemetry {
        writer: cfg.access_log.as_ref().and_then(|a| {
            old.and_then(|t| t.log.as_ref())
                .filter(|l| l.writer.path() == a.path)
                .map(|l| l.writer.clone())
        }),
        access_log: cfg.access_log.clone(),
        exporter: cfg.otlp_endpoint.as_deref().and_then(|e| {
            old.and_then(|t| t.otlp.as_ref())
                .filter(|x| x.endpoint() == e)
                .cloned()
        }),
        otlp_endpoint: cfg.otlp_endpoint.clone(),
    }
}

/// The access log and exporter of a compiled table, kept from the live one or to be started.
#[derive(Debug)]
struct PlannedTelemetry {
    access_log: Option<crate::config::AccessLogConfig>,
    writer: Option<Arc<Writer>>,
    otlp_endpoint: Option<String>,
    exporter: Option<Exporter>,
}

impl PlannedTelemetry {
    /// Opens what is not kept: a new writer thread, a new exporter task (inside the runtime).
    fn start(self, metrics: &Metrics) -> Telemetry {
        let log = self.access_log.map(|a| LogSink {
            writer: self
                .writer
                .unwrap_or_else(|| Writer::open(a.path.clone(), metrics.telemetry.clone())),
            options: LineOptions {
                format: match a.format {
                    LogFormat::Json => Format::Json,
                    LogFormat::Text => Format::Text,
                },
                log_query: a.log_query,
            },
            sample: a.sample,
        });
        let otlp = self.exporter.or_else(|| {
            let endpoint = self.otlp_endpoint?;
            Exporter::start(&endpoint, metrics.telemetry.clone())
                .inspect_err(|e| tracing::error!(error = %e, "spans will not be exported"))
                .ok()
        });
        Telemetry { log, otlp }
    }
}

/// The headers set on every request forwarded to `d`: its `headers`, then `Authorization`
/// from its `bearer_key_file` (a sensitive value). Empty, and not allocated, when it has none.
fn upstream_headers(d: &DeploymentConfig) -> Box<[(HeaderName, HeaderValue)]> {
    let bearer = d
        .bearer
        .iter()
        .map(|b| (http::header::AUTHORIZATION, b.value.clone()));
    d.headers.iter().cloned().chain(bearer).collect()
}

/// Plans one list of a deployment's instances: with `keep`, instances of the live list `old`
/// with the same address (and name) are kept; the others are new; those of `old` no longer
/// wanted go to `gone`. The admission queue survives when the limit and the instance count
/// stay.
fn plan_group(
    written: &[InstanceAddr],
    names: &Names,
    old: Option<&Group>,
    keep: bool,
    request: &RequestSettings,
    deployment: &str,
    gone: &mut Vec<(String, String)>,
) -> PlannedGroup {
    let wanted = addresses(written, names);
    let instances: Vec<PlannedInstance> = wanted
        .iter()
        .map(|(addr, from)| {
            let kept = old.filter(|_| keep).and_then(|o| {
                o.instances
                    .iter()
                    .find(|i| i.addr() == addr && i.discovered_from() == from.as_ref())
            });
            match kept {
                Some(i) => PlannedInstance::Kept(i.clone()),
                None => PlannedInstance::New {
                    addr: addr.clone(),
                    discovered_from: from.clone(),
                },
            }
        })
        .collect();
    if let Some(o) = old {
        gone.extend(
            o.instances
                .iter()
                .filter(|i| !wanted.iter().any(|(a, _)| a == i.addr()))
                .map(|i| (deployment.to_string(), i.addr().to_string())),
        );
    }
    let limit = request.max_concurrent_per_instance;
    let keep = old.and_then(|o| {
        (o.limit == limit && o.instances.len() == instances.len()).then(|| o.limiter.clone())
    });
    let limiter = keep.unwrap_or_else(|| {
        (limit > 0).then(|| {
            Arc::new(Semaphore::new(
                (limit as usize)
                    .saturating_mul(instances.len())
                    .min(Semaphore::MAX_PERMITS),
            ))
        })
    });
    PlannedGroup {
        instances,
        configured: !written.is_empty(),
        limiter,
    }
}

/// The addresses of a deployment's instances, each with the name it came from: a name stands
/// for its addresses; an address reached twice (two names, or a name and the address itself)
/// counts once.
fn addresses(written: &[InstanceAddr], names: &Names) -> Vec<(InstanceAddr, Option<InstanceAddr>)> {
    let mut wanted = Vec::new();
    for w in written {
        match names.addresses(w) {
            Some(addrs) => wanted.extend(
                addrs
                    .iter()
                    .map(|a| (InstanceAddr::from_socket(*a), Some(w.clone()))),
            ),
            None => wanted.push((w.clone(), None)),
        }
    }
    let mut seen = HashSet::new();
    wanted.retain(|(a, _)| seen.insert(a.clone()));
    wanted
}

/// TLS to one instance written as `written` (the host-name instance it was discovered from, if
/// any): the deployment's shared configuration for HTTP/2 (`grpc`) or HTTP/1.1, and its
/// `server_name`, by default the host as written (also the requests' `Host`).
fn instance_tls(tls: &UpstreamTls, grpc: bool, written: &InstanceAddr) -> Tls {
    let config = if grpc { &tls.h2 } else { &tls.h1 };
    let name = tls.server_name.as_deref().unwrap_or(written.host());
    Tls::new(config.0.clone(), name, written.port())
}

// === impl Compiled ===

impl Compiled {
    /// The addresses of deployment `name`'s instances, in table order, and whether each is
    /// kept from the live table.
    #[cfg(test)]
    pub(crate) fn instances(&self, name: &str) -> Vec<(String, bool)> {
        self.deployments
            .iter()
            .filter(|d| d.name == name)
            .flat_map(|d| d.rest.instances.iter().chain(&d.grpc.instances))
            .map(|i| match i {
                PlannedInstance::Kept(i) => (i.addr().to_string(), true),
                PlannedInstance::New { addr, .. } => (addr.to_string(), false),
            })
            .collect()
    }

    /// The table to swap in: registers the series of new deployments and
    /// instances, sets the weights, and drops the series of what is gone.
    pub fn apply(self, metrics: &Metrics) -> Table {
        for (deployment, addr) in &self.gone_instances {
            metrics.remove_instance(deployment, addr);
        }
        for (m, addrs) in &self.gone_deployments {
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            metrics.remove_deployment(m, &addrs);
        }
        let known_names = self
            .deployments
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
            .into();
        let mirrors = self
            .mirrors
            .into_iter()
            .map(|(index, percent, name)| {
                let counter = |result: &str| metrics.mirror.with_label_values(&[&name, result]);
                Mirror {
                    index,
                    percent,
                    ok: counter("ok"),
                    error: counter("error"),
                    dropped: counter("dropped"),
                    shadow: metrics.shadow(&name),
                }
            })
            .collect();
        let deployments: Box<[Deployment]> = self
            .deployments
            .into_iter()
            .map(|d| {
                let dm = d
                    .metrics
                    .unwrap_or_else(|| Arc::new(metrics.deployment(&d.name)));
                metrics.set_weight(&d.name, d.weight);
                let group = |g: PlannedGroup, grpc: bool| Group {
                    instances: g
                        .instances
                        .into_iter()
                        .map(|i| match i {
                            PlannedInstance::Kept(i) => i,
                            PlannedInstance::New {
                                addr,
                                discovered_from,
                            } => {
                                let healthy = metrics.instance_healthy(&d.name, addr.as_str());
                                let tls = d.tls.as_ref().map(|t| {
                                    instance_tls(t, grpc, discovered_from.as_ref().unwrap_or(&addr))
                                });
                                Arc::new(Instance::new(
                                    addr,
                                    discovered_from,
                                    grpc,
                                    tls,
                                    dm.in_flight().clone(),
                                    healthy,
                                ))
                            }
                        })
                        .collect(),
                    configured: g.configured,
                    limit: d.settings.max_concurrent_per_instance,
                    wait: d.settings.max_queue_wait,
                    limiter: g.limiter,
                };
                Deployment {
                    header_value: HeaderValue::from_str(&d.name)
                        .unwrap_or(HeaderValue::from_static("invalid")),
                    rest: group(d.rest, false),
                    grpc: group(d.grpc, true),
                    name: d.name.into(),
                    weight: d.weight,
                    settings: d.settings,
                    tls: d.tls,
                    headers: d.headers,
                    metrics: dm,
                }
            })
            .collect();
        let sticky_bounds = self
            .cumulative
            .iter()
            .map(|&(cum, index)| (sticky_bound(cum), index))
            .collect();
        Table {
            pin_header: self.pin_header,
            deployments,
            cumulative: self.cumulative.into(),
            total_weight: self.total_weight,
            max_request_body_bytes: self.max_request_body_bytes,
            known_names,
            unrouted: self
                .unrouted
                .unwrap_or_else(|| Arc::new(metrics.unrouted())),
            sticky_header: self.sticky_header,
            sticky_bounds,
            mirrors,
            compare: self.compare,
            mirror_max_body: self.mirror_max_body,
            keys: self.keys,
            tls: self.tls,
            admin_tls: self.admin_tls,
            telemetry: self.telemetry.start(metrics),
        }
    }
}

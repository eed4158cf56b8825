//! Layer 7 (CLI): the commands behind the command line, each wiring the layers below:
//! `check`, `traffic`, `swap`, `run`, `demo`, `score-server`, `rollout`, `load`. `cli` parses
//! the arguments and calls these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use std::process::ExitCode;

use crate::admin::{self, Admin};
use crate::config::{self, ConfigError, EndpointConfig, Loaded};
use crate::control::{self, Loader};
use crate::discovery::names_in;
use crate::metrics::Metrics;
use crate::proxy::{self, ClientLimits, Proxy};
use crate::scoring::{Model, ScoreServer};
use crate::shadow::Evidence;

/// A failure that stops a command, with the message the user sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Warnings as `PATH:LINE:COL: warning: message` lines.
pub(crate) fn format_warnings(path: &Path, loaded: &Loaded) -> String {
    loaded
        .warnings
        .iter()
        .map(|w| {
            format!(
                "{}:{}:{}: warning: {}\n",
                path.display(),
                w.line,
                w.column,
                w.message
            )
        })
        .collect()
}

/// The effective traffic table, as `check` prints it.
pub(crate) fn traffic_table(cfg: &EndpointConfig) -> String {
    let mut out = String::new();
    let width = cfg
        .deployments
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max("deployment".len());
    let list = |l: &[crate::addr::InstanceAddr]| {
        l.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
    };
    let grpc = cfg.deployments.iter().any(|d| !d.grpc_instances.is_empty());
    // With gRPC instances, a second column; the REST column keeps its width.
    let rest_width = cfg
        .deployments
        .iter()
        .map(|d| list(&d.instances).len())
        .max()
        .unwrap_or(0)
        .max("instances".len());
    if grpc {
        out.push_str(&format!(
            "{:<width$}  weight  {:<rest_width$}  grpc_instances\n",
            "deployment", "instances"
        ));
    } else {
        out.push_str(&format!("{:<width$}  weight  instances\n", "deployment"));
    }
    for d in &cfg.deployments {
        let rest = if d.instances.is_empty() {
            "-".to_string()
        } else {
            list(&d.instances)
        };
        if grpc {
            let g = if d.grpc_instances.is_empty() {
                "-".to_string()
            } else {
                list(&d.grpc_instances)
            };
            out.push_str(&format!(
                "{:<width$}  {:>5}%  {rest:<rest_width$}  {g}\n",
                d.name, d.weight
            ));
        } else {
            out.push_str(&format!("{:<width$}  {:>5}%  {rest}\n", d.name, d.weight));
        }
    }
    if cfg.total_weight() == 0 {
        out.push_str("no deployment takes unpinned traffic: such requests get 503\n");
    }
    out
}

/// `scoregate check PATH`: the report on stdout and the warnings on stderr (exit 0), or the
/// errors (exit 1).
pub(crate) fn check_command(path: &Path) -> ExitCode {
    match check(path) {
        Ok((report, warnings)) => {
            eprint!("{warnings}");
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `scoregate traffic PATH [name=weight ...]`: shows the traffic table, or sets weights.
pub(crate) fn traffic(path: &Path, weights: &[String]) -> Result<String, String> {
    if weights.is_empty() {
        return check(path)
            .map(|(report, _)| report)
            .map_err(|e| e.to_string());
    }
    crate::ops::parse_assignments(path, weights)
        .and_then(|a| crate::ops::set_weights(path, &a))
        .map(|w| {
            format!(
                "{}: traffic set: {}\n",
                path.display(),
                crate::ops::show(&w, "")
            )
        })
        .map_err(|e| e.to_string())
}

/// `scoregate swap PATH`.
pub(crate) fn swap(path: &Path) -> Result<String, String> {
    crate::ops::swap(path)
        .map(|w| {
            format!(
                "{}: swapped: {}\n",
                path.display(),
                crate::ops::show(&w, "")
            )
        })
        .map_err(|e| e.to_string())
}

/// `scoregate rollout`: exit 0 when completed, 2 when rolled back, 1 when stopped.
pub(crate) async fn rollout(path: &Path, opts: &crate::rollout::Options) -> ExitCode {
    use crate::rollout::Outcome;
    match crate::rollout::run(path, opts).await {
        Ok(Outcome::Completed) => ExitCode::SUCCESS,
        Ok(Outcome::RolledBack(why)) => {
            eprintln!("rollout rolled back: {why}");
            ExitCode::from(2)
        }
        Ok(Outcome::Aborted(why)) => {
            eprintln!("rollout stopped: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `scoregate load`: the report on stdout; exit 1 when a request failed.
pub(crate) async fn load(opts: crate::loadgen::Options) -> ExitCode {
    match crate::loadgen::run(opts).await {
        Ok(report) => {
            print!("{}", report.text);
            if report.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The exit of a serving command: its error on stderr, exit 1.
pub(crate) fn exit(result: Result<(), AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `scoregate check PATH`: the report printed on success.
pub(crate) fn check(path: &Path) -> Result<(String, String), ConfigError> {
    let loaded = config::load_file(path)?;
    let c = &loaded.config;
    let mut report = format!(
        "{}: valid\nendpoint {}, listen {}, admin {}, pin header {}\n",
        path.display(),
        c.name.as_deref().unwrap_or("(unnamed)"),
        c.listen,
        c.admin_listen,
        c.pin_header
    );
    if let Some(h) = &c.sticky_header {
        report.push_str(&format!("sticky split by {h}\n"));
    }
    for m in &c.mirrors {
        report.push_str(&format!(
            "mirror: {}% of unpinned requests copied to {}\n",
            m.percent, m.deployment
        ));
    }
    if let (Some(cmp), false) = (&c.mirror_compare, c.mirrors.is_empty()) {
        report.push_str(&format!(
            "mirror_compare: answers compared (abs {}, rel {}, ignoring {}, up to {} bytes)\n",
            cmp.abs_tolerance,
            cmp.rel_tolerance,
            if cmp.ignore.is_empty() {
                "nothing".to_string()
            } else {
                cmp.ignore.join(", ")
            },
            cmp.max_body_bytes
        ));
    }
    if let Some(a) = &c.access_log {
        report.push_str(&format!(
            "access log: {} ({}, {}% of requests and every error{})\n",
            if a.path.as_os_str() == "-" {
                "standard output".to_string()
            } else {
                a.path.display().to_string()
            },
            match a.format {
                config::LogFormat::Json => "json",
                config::LogFormat::Text => "text",
            },
            a.sample * 100.0,
            if a.log_query {
                ", with query strings"
            } else {
                ""
            }
        ));
    }
    if let Some(e) = &c.otlp_endpoint {
        report.push_str(&format!("spans exported over OTLP/gRPC to {e}\n"));
    }
    if let config::Auth::Key(k) = &c.auth {
        report.push_str(&format!(
            "auth: key ({} keys from {})\n",
            k.digests.len(),
            k.file.display()
        ));
    }
    for (what, tls) in [("tls", &c.tls), ("admin_tls", &c.admin_tls)] {
        if let Some(t) = tls {
            report.push_str(&format!(
                "{what}: {} ({}); {}\n",
                t.pair.cert_file.display(),
                t.pair.info.summary(),
                match &t.client_ca {
                    Some(ca) => format!(
                        "client certificates required, signed by {}",
                        ca.file.display()
                    ),
                    None => "no client certificates".to_string(),
                },
            ));
        }
    }
    for d in &c.deployments {
        if let Some(t) = &d.tls {
            report.push_str(&format!(
                "deployment {}: TLS to its instances, trusting {}{}{}\n",
                d.name,
                t.ca.as_ref().map_or("the system's roots".to_string(), |r| r
                    .file
                    .display()
                    .to_string()),
                t.server_name
                    .as_ref()
                    .map_or(String::new(), |n| format!(", verifying the name {n}")),
                t.client.as_ref().map_or(String::new(), |p| format!(
                    ", client certificate {}",
                    p.cert_file.display()
                )),
            ));
        }
    }
    let names: Vec<&str> = names_in(c).map(|n| n.as_str()).collect();
    if !names.is_empty() {
        report.push_str(&format!(
            "host names, resolved to all their addresses at start and every {}: {}\n",
            humantime::format_duration(c.dns_refresh),
            names.join(", ")
        ));
    }
    report.push('\n');
    report.push_str(&traffic_table(c));
    Ok((report, format_warnings(path, &loaded)))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// A running proxy.
pub(crate) struct Running {
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    loader: Arc<Loader>,
}

impl Running {
    /// Stops accepting at once and waits for the requests in flight (up to the drain time),
    /// then writes the access log lines and sends the spans still queued (2 s at most each).
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
        let table = self.loader.table().load_full();
        if let Some(otlp) = &table.telemetry.otlp {
            otlp.flush(Duration::from_secs(2)).await;
        }
        if let Some(log) = &table.telemetry.log {
            let writer = log.writer.clone();
            let _ = tokio::task::spawn_blocking(move || writer.flush(Duration::from_secs(2))).await;
        }
    }
}

/// Loads `path`, binds the admin listener and the data plane, and starts serving and watching
/// the file in the background.
pub(crate) async fn start(path: &Path, drain: Duration) -> Result<Running, AppError> {
    let loaded = config::load_file(path)?;
    eprint!("{}", format_warnings(path, &loaded));
    let cfg = &loaded.config;
    let admin = bind("admin", cfg.admin_listen).await?;
    let listener = bind("data plane", cfg.listen).await?;
    let admin_listen = admin.local_addr().unwrap_or(cfg.admin_listen);
    let listen = listener.local_addr().unwrap_or(cfg.listen);

    let metrics = Arc::new(Metrics::new());
    let loader = Arc::new(Loader::new(path, &loaded, metrics.clone()));
    tracing::info!(
        file = %path.display(),
        generation = 1,
        traffic = %cfg.traffic_summary(),
        "endpoint file loaded"
    );
    let evidence = Arc::new(Evidence::default());
    let failures = Arc::new(crate::telemetry::FailedRequests::default());
    tokio::spawn(admin::serve(
        admin,
        Arc::new(Admin::new(
            loader.clone(),
            metrics,
            evidence.clone(),
            failures.clone(),
        )),
        cfg.admin_tls.is_some(),
    ));
    tracing::info!(addr = %admin_listen, "admin listening");
    let proxy = Arc::new(Proxy::new(loader.table(), evidence, failures));
    let limits = ClientLimits {
        header_timeout: cfg.client_header_timeout,
        tls: cfg.tls.is_some(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(proxy::serve(listener, proxy, limits, stopped, drain));
    control::spawn(loader.clone());
    tracing::info!(addr = %listen, "data plane listening");
    Ok(Running {
        listen,
        admin_listen,
        stop,
        serving,
        loader,
    })
}

/// `scoregate run`: serves until Ctrl-C or SIGTERM.
pub(crate) async fn run(path: &Path, drain: Duration) -> Result<(), AppError> {
    let running = start(path, drain).await?;
    wait_for_shutdown().await;
    running.shutdown().await;
    Ok(())
}

/// `scoregate score-server`: REST on `addr`, and gRPC on `grpc_addr` when given.
pub(crate) async fn score_server(
    server: ScoreServer,
    addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
) -> Result<(), AppError> {
    let listener = bind("scoring server", addr).await?;
    let grpc = match grpc_addr {
        Some(a) => Some((bind("gRPC scoring server", a).await?, a)),
        None => None,
    };
    let local = listener.local_addr().unwrap_or(addr);
    // The REST line first: tests wait for it and read its address.
    tracing::info!(
        addr = %local,
        deployment = %server.name,
        model = server.model.name(),
        "scoring server listening"
    );
    let grpc = grpc.map(|(listener, a)| {
        tracing::info!(
            addr = %listener.local_addr().unwrap_or(a),
            deployment = %server.name,
            model = server.model.name(),
            "gRPC scoring server listening"
        );
        listener
    });
    tokio::spawn(server.serve(Some(listener), grpc));
    wait_for_shutdown().await;
    Ok(())
}

/// The listener of a demo scoring server on `inst`, or none when `inst` is a host name.
async fn demo_listener(
    what: &'static str,
    inst: Option<&crate::addr::InstanceAddr>,
) -> Result<Option<TcpListener>, AppError> {
    let Some(inst) = inst else {
        return Ok(None);
    };
    match inst.socket_addr() {
        Some(addr) => bind(what, addr).await.map(Some),
        None => {
            tracing::warn!(instance = %inst, "demo starts scoring servers only on IP:PORT instances");
            Ok(None)
        }
    }
}

/// `scoregate demo`: scoring servers for every instance of the file (`blue` runs model v1,
/// `green` v2, other deployments alternate by position), REST on `instances` and gRPC on
/// `grpc_instances` (the n-th of each share one server), then the proxy.
pub(crate) async fn demo(
    path: PathBuf,
    drain: Duration,
    disagreeing_green: Option<f64>,
) -> Result<(), AppError> {
    let loaded = config::load_file(&path)?;
    for (i, d) in loaded.config.deployments.iter().enumerate() {
        let model = match d.name.as_str() {
            "blue" => Model::V1,
            "green" if disagreeing_green.is_some() => Model::V1,
            "green" => Model::V2,
            _ if i % 2 == 0 => Model::V1,
            _ => Model::V2,
        };
        let disagree_rate = match d.name.as_str() {
            "green" => disagreeing_green.unwrap_or(0.0),
            _ => 0.0,
        };
        for n in 0..d.instances.len().max(d.grpc_instances.len()) {
            let rest = demo_listener("demo scoring server", d.instances.get(n)).await?;
            let grpc = demo_listener("demo gRPC scoring server", d.grpc_instances.get(n)).await?;
            if rest.is_none() && grpc.is_none() {
                continue;
            }
            let server = ScoreServer {
                disagree_rate,
                ..ScoreServer::new(&d.name, model)
            };
            tokio::spawn(server.serve(rest, grpc));
        }
    }
    let running = start(&path, drain).await?;
    let url = format!("http://{}", running.listen);
    let pin = loaded.config.pin_header.as_str();
    let names: Vec<&str> = loaded
        .config
        .deployments
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let pinned = names.get(1).or(names.first()).copied().unwrap_or("green");
    println!(
        "\nscoregate demo is running: {} behind {url}\n\n{}\nTry:\n  \
         curl {url}/score\n  \
         curl -H '{pin}: {pinned}' {url}/score\n  \
         curl -X POST -H 'content-type: application/json' -d '{{\"data\": [[1,2,3,4,5,6,7,8,9,10]]}}' {url}/score\n  \
         curl -X POST -H 'content-type: application/json' -d '{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,3],\"datatype\":\"FP64\",\"data\":[1,2,3]}}]}}' {url}/v2/models/{model}/infer\n  \
         load-test/load_test.sh 20 {url}/score\n  \
         scoregate load --grpc {url} --duration 2s\n\n\
         Edit {file} (or copy a config/step-*.yaml over it) and traffic follows within a second;\n\
         status page: http://{admin}/   metrics: http://{admin}/metrics{log}\n\nCtrl-C stops the demo.",
        servers_text(&loaded.config),
        traffic_table(&loaded.config),
        log = match &loaded.config.access_log {
            Some(a) => format!(
                "\naccess log: {path} (every answer carries x-request-id; find one: grep ID {path})",
                path = a.path.display()
            ),
            None => String::new(),
        },
        file = path.display(),
        admin = running.admin_listen,
        model = crate::scoring::MODEL_NAME,
    );
    wait_for_shutdown().await;
    running.shutdown().await;
    Ok(())
}

/// The demo's scoring servers, like `4 scoring servers (4 REST and 4 gRPC listeners)`.
fn servers_text(cfg: &EndpointConfig) -> String {
    let count = |f: fn(&config::DeploymentConfig) -> usize| -> usize {
        cfg.deployments.iter().map(f).sum()
    };
    let servers = count(|d| d.instances.len().max(d.grpc_instances.len()));
    let (rest, grpc) = (
        count(|d| d.instances.len()),
        count(|d| d.grpc_instances.len()),
    );
    if grpc == 0 {
        format!("{servers} scoring servers")
    } else {
        format!("{servers} scoring servers ({rest} REST and {grpc} gRPC listeners)")
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

//! Layer 7 (CLI): the `scoregate` command line. Parses arguments and hands each command to
//! [`app`](crate::app); `main.rs` only calls [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app;
use crate::scoring::{Model, ScoreServer};

/// Traffic-splitting reverse proxy for model-scoring endpoints.
#[derive(Parser)]
#[command(name = "scoregate", version, about)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with an endpoint file.
    Run {
        /// The endpoint file.
        #[arg(long, default_value = "config/endpoint.yaml")]
        config: PathBuf,
        /// Seconds requests in flight get to finish after SIGTERM or Ctrl-C.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
    },
    /// Start built-in scoring servers for every instance of the demo file, and the proxy.
    Demo {
        /// The demo's endpoint file.
        #[arg(long, default_value = "config/demo.yaml")]
        config: PathBuf,
        /// Seconds requests in flight get to finish after Ctrl-C.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        /// Start green as a retrained v1 whose predictions are off on this share (0.0 to 1.0)
        /// instead of model v2: a candidate to judge by shadow comparison.
        #[arg(long, value_parser = parse_rate)]
        disagreeing_green: Option<f64>,
    },
    /// Validate an endpoint file and print its traffic table.
    Check {
        /// The endpoint file.
        path: PathBuf,
    },
    /// Show the traffic table, or set weights (`blue=90 green=10`), rewriting only the
    /// `traffic:` map, atomically.
    Traffic {
        /// The endpoint file.
        path: PathBuf,
        /// New weights as name=weight; deployments not named keep theirs. None: show.
        weights: Vec<String>,
    },
    /// Swap the deployment at 0% and the one at 100% (blue/green swap).
    Swap {
        /// The endpoint file.
        path: PathBuf,
    },
    /// Staged canary: move traffic to a deployment step by step, judging each step by the
    /// running proxy's metrics; roll back on a breach (exit 2).
    Rollout {
        /// The endpoint file the running proxy serves.
        path: PathBuf,
        #[command(flatten)]
        opts: crate::rollout::Options,
    },
    /// Send sustained load to a URL and report throughput, latency, the split and the request
    /// ids of the first failed requests (each request carries its own x-request-id).
    Load {
        /// The endpoint, like http://127.0.0.1:8080/score; with --grpc the server, like
        /// http://127.0.0.1:8080.
        url: String,
        /// How long, like 30s.
        #[arg(long, default_value = "10s", value_parser = crate::rollout::parse_duration)]
        duration: Duration,
        /// Requests in flight at once (REST: each on its own keep-alive connection).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Pin every request to this deployment (x-api-version).
        #[arg(long)]
        pin: Option<String>,
        /// Extra header, `name: value` (repeatable); gRPC metadata with --grpc.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// POST this JSON body instead of GET.
        #[arg(long, conflicts_with = "grpc")]
        data: Option<String>,
        /// Send Open Inference Protocol ModelInfer RPCs (model `scorer`, one row of 10 FP64
        /// features) over HTTP/2 instead of REST requests.
        #[arg(long)]
        grpc: bool,
        /// With --grpc: HTTP/2 connections the RPCs in flight share.
        #[arg(long, default_value = "1", value_parser = parse_count, requires = "grpc")]
        connections: usize,
    },
    /// Run one built-in scoring server.
    ScoreServer {
        /// The deployment this server belongs to (reported in every answer).
        #[arg(long)]
        name: String,
        /// Address to listen on, REST over HTTP/1.1 (port 0 picks a free port, logged at
        /// start).
        #[arg(long)]
        listen: SocketAddr,
        /// Address to serve the Open Inference Protocol's gRPC service on, too (port 0 picks
        /// a free port, logged at start).
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Model version.
        #[arg(long, value_enum, default_value_t = Model::V1)]
        model: Model,
        /// Delay before every /score and inference answer (REST and gRPC), in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Share of /score and inference requests that fail, REST with 500, gRPC with
        /// INTERNAL (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        error_rate: f64,
        /// Share of predictions that are off by +1.0, each rolled at random (0.0 to 1.0): a
        /// model that disagrees on a known share, for shadow comparison.
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        disagree_rate: f64,
        /// Uniform noise of up to ± this added to every prediction.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
    },
}

fn parse_header(h: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("`{h}` is not a header like 'x-user-id: 42'"))?;
    Ok((
        k.trim()
            .parse()
            .map_err(|_| format!("`{k}` is not a header name"))?,
        v.trim()
            .parse()
            .map_err(|_| format!("`{v}` is not a header value"))?,
    ))
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a count of 1 or more")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a rate from 0.0 to 1.0")),
    }
}

/// Logs go to stderr through a background writer, so that a burst of warnings (an instance
/// going down under load) never blocks a request on a slow terminal or pipe. The guard flushes
/// what is left when `main` returns.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Prints a command's report (stdout) or error (stderr, exit 1).
fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The file commands need no runtime and log nothing.
    let command = match cli.command {
        Command::Check { path } => return app::check_command(&path),
        Command::Traffic { path, weights } => return finish(app::traffic(&path, &weights)),
        Command::Swap { path } => return finish(app::swap(&path)),
        other => other,
    };
    let _log_guard = init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scoregate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Run {
                config,
                drain_timeout,
            } => app::exit(app::run(&config, Duration::from_secs(drain_timeout)).await),
            Command::Demo {
                config,
                drain_timeout,
                disagreeing_green,
            } => app::exit(
                app::demo(
                    config,
                    Duration::from_secs(drain_timeout),
                    disagreeing_green,
                )
                .await,
            ),
            Command::ScoreServer {
                name,
                listen,
                grpc_listen,
                model,
                delay_ms,
                error_rate,
                disagree_rate,
                noise,
            } => {
                let server = ScoreServer {
                    name,
                    model,
                    delay: Duration::from_millis(delay_ms),
                    error_rate,
                    disagree_rate,
                    noise: noise.abs(),
                };
                app::exit(app::score_server(server, listen, grpc_listen).await)
            }
            Command::Rollout { path, opts } => app::rollout(&path, &opts).await,
            Command::Load {
                url,
                duration,
                concurrency,
                pin,
                headers,
                data,
                grpc,
                connections,
            } => {
                let headers = match load_headers(pin, &headers) {
                    Ok(h) => h,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                };
                app::load(crate::loadgen::Options {
                    url,
                    duration,
                    concurrency,
                    headers,
                    body: data.map(bytes::Bytes::from),
                    grpc,
                    connections,
                })
                .await
            }
            Command::Check { .. } | Command::Traffic { .. } | Command::Swap { .. } => {
                ExitCode::SUCCESS
            }
        }
    })
}

/// The headers of `load`: the pin (as `x-api-version`) and each `name: value`.
fn load_headers(
    pin: Option<String>,
    headers: &[String],
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut hs = Vec::new();
    if let Some(p) = pin {
        let v =
            http::HeaderValue::from_str(&p).map_err(|_| format!("`{p}` is not a header value"))?;
        hs.push((http::HeaderName::from_static("x-api-version"), v));
    }
    for h in headers {
        hs.push(parse_header(h)?);
    }
    Ok(hs)
}

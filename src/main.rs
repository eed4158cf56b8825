//! The `scoregate` command line: parses arguments and hands over to `scoregate::app`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use scoregate::app::{self, AppError};
use scoregate::scoring::{Model, ScoreServer};

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
    },
    /// Validate an endpoint file and print its traffic table.
    Check {
        /// The endpoint file.
        path: PathBuf,
    },
    /// Run one built-in scoring server.
    ScoreServer {
        /// The deployment this server belongs to (reported in every answer).
        #[arg(long)]
        name: String,
        /// Address to listen on (port 0 picks a free port, logged at start).
        #[arg(long)]
        listen: SocketAddr,
        /// Model version.
        #[arg(long, value_enum, default_value_t = Model::V1)]
        model: Model,
        /// Delay before every /score answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Share of /score requests answered with 500 (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
        error_rate: f64,
    },
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a rate from 0.0 to 1.0")),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Check { path } = &cli.command {
        return match app::check(path) {
            Ok((report, warnings)) => {
                eprint!("{warnings}");
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scoregate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), AppError> = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                config,
                drain_timeout,
            } => app::run(&config, Duration::from_secs(drain_timeout)).await,
            Command::Demo {
                config,
                drain_timeout,
            } => app::demo(config, Duration::from_secs(drain_timeout)).await,
            Command::ScoreServer {
                name,
                listen,
                model,
                delay_ms,
                error_rate,
            } => {
                let server = ScoreServer {
                    name,
                    model,
                    delay: Duration::from_millis(delay_ms),
                    error_rate,
                };
                app::score_server(server, listen).await
            }
            Command::Check { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

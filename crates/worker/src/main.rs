use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::{config::LogArgs, serve::Stopped};
use worker::Config;

/// RustyBalancer worker: CPU-bound jobs behind HTTP.
#[derive(Debug, Parser)]
#[command(name = "worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe GET /health of the worker on this host's configured port; exit 0 if healthy.
    Healthcheck {
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = common::config::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("worker: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck { timeout }) = cli.command {
        return match runtime.block_on(worker::healthcheck(&cli.config, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("unhealthy: {err}");
                ExitCode::FAILURE
            }
        };
    }
    common::telemetry::init(&cli.log);
    match runtime.block_on(serve(cli.config)) {
        Ok(Stopped::Aborted) => {
            tracing::error!("stopped answering (simulated crash)");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = format!("{err:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<Stopped> {
    let address = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (TARGET_PORT / WORKER_HOST)"))?;
    let shutdown = common::shutdown::on_signal();
    Ok(worker::run(listener, config, shutdown).await)
}

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use common::{
    cli::{self, Command},
    config::LogArgs,
    serve::Stopped,
};
use worker::{Config, Listeners};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cli::runtime("worker", &mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Some(Command::Healthcheck { timeout }) = cli.command {
        return cli::health_exit(runtime.block_on(worker::healthcheck(&cli.config, timeout)));
    }
    common::telemetry::init(&cli.log);
    cli::run_exit("worker", runtime.block_on(serve(cli.config)))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let address = SocketAddr::new(config.host, config.port);
    let traffic = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (TARGET_PORT / WORKER_HOST)"))?;
    let chaos = if config.chaos {
        let address = SocketAddr::new(config.host, config.chaos_port);
        Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!("cannot listen on {address} (WORKER_CHAOS_PORT / WORKER_HOST)")
                })?,
        )
    } else {
        None
    };
    let shutdown = common::shutdown::on_signal();
    match worker::serve(Listeners { traffic, chaos }, config, shutdown).await {
        Stopped::Aborted => anyhow::bail!("stopped answering (simulated crash)"),
        Stopped::Drained | Stopped::GraceExpired => Ok(()),
    }
}

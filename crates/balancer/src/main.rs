use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use balancer::{Config, Listeners};
use clap::{Parser, Subcommand};
use common::config::LogArgs;

/// RustyBalancer balancer: a streaming reverse proxy over the worker containers.
#[derive(Debug, Parser)]
#[command(name = "balancer", version, about)]
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
    /// Probe GET /health on this host's admin port; exit 0 if healthy.
    Healthcheck {
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = common::config::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The control plane (admin port, agent, reports) runs here; traffic gets its own threads
    // (BALANCER_THREADS), started by `balancer::run`.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("balancer: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck { timeout }) = cli.command {
        return match runtime.block_on(balancer::healthcheck(&cli.config, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("unhealthy: {err}");
                ExitCode::FAILURE
            }
        };
    }
    common::telemetry::init(&cli.log);
    match runtime.block_on(serve(cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = format!("{err:#}"), "balancer failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await.with_context(|| {
        format!(
            "cannot listen on {}:{} and :{} (BALANCER_HOST / HOST_PORT_HTTP_BALANCER / HOST_PORT_ADMIN_BALANCER)",
            config.host, config.port, config.admin_port
        )
    })?;
    let shutdown = common::shutdown::on_signal();
    balancer::run(listeners, config, shutdown).await;
    Ok(())
}

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::config::LogArgs;
use deployment_agent::{Config, Listeners};

/// RustyBalancer deployment agent: scores, scales and publishes worker containers.
#[derive(Debug, Parser)]
#[command(name = "deployment-agent", version, about)]
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
    /// Probe GET /health on the configured HTTP port; exit 0 if healthy.
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("deployment-agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck) = cli.command {
        return runtime.block_on(healthcheck(cli.config.http_port));
    }
    let config = cli.config.normalized();
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    common::telemetry::init(&cli.log);
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = format!("{err:#}"), "deployment agent failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bind = |port: u16| async move {
        let address = SocketAddr::new(config.host, port);
        tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))
    };
    let listeners = Listeners {
        http: bind(config.http_port).await?,
        ws: bind(config.ws_port).await?,
        grpc: bind(config.grpc_port).await?,
    };
    let shutdown = common::shutdown::on_signal();
    deployment_agent::run(listeners, config, shutdown).await
}

async fn healthcheck(port: u16) -> ExitCode {
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    match common::serve::probe_health(localhost, port, std::time::Duration::from_secs(2)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}

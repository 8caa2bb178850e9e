use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use common::{
    cli::{self, Command},
    config::LogArgs,
};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match cli::runtime(
        "deployment-agent",
        &mut tokio::runtime::Builder::new_multi_thread(),
    ) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Some(Command::Healthcheck { timeout }) = cli.command {
        let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
        let probe = common::serve::probe_health(localhost, cli.config.http_port, timeout);
        return cli::health_exit(runtime.block_on(probe));
    }
    let config = cli.config.normalized();
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    common::telemetry::init(&cli.log);
    cli::run_exit("deployment-agent", runtime.block_on(serve(config)))
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

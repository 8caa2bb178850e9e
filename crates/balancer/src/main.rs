use std::process::ExitCode;

use anyhow::Context;
use balancer::{Config, Listeners};
use clap::Parser;
use common::{
    cli::{self, Command},
    config::LogArgs,
};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The control plane (admin port, agent, reports) runs here; traffic gets its own threads
    // (BALANCER_THREADS), started by `balancer::run`.
    let runtime = match cli::runtime(
        "balancer",
        &mut tokio::runtime::Builder::new_current_thread(),
    ) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Some(Command::Healthcheck { timeout }) = cli.command {
        return cli::health_exit(runtime.block_on(balancer::healthcheck(&cli.config, timeout)));
    }
    common::telemetry::init(&cli.log);
    cli::run_exit("balancer", runtime.block_on(serve(cli.config)))
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

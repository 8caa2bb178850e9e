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
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(Some(true)) => ExitCode::SUCCESS,
        _ => {
            eprintln!("unhealthy: no 200 from /health on port {port}");
            ExitCode::FAILURE
        }
    }
}

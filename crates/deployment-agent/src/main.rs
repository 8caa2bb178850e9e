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
    let untuned = with_malloc_tunables();
    common::telemetry::init(&cli.log);
    if let Some(err) = untuned {
        tracing::warn!(cause = %err, "cannot re-execute with GLIBC_TUNABLES; glibc's allocator defaults apply");
    }
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
    Ok(deployment_agent::run(listeners, config, shutdown).await?)
}

/// glibc's allocator keeps small freed chunks in per-thread caches (tcache) and fastbins, and
/// those pin the heap: after 500 WebSocket subscribers came and left, 2.4 MiB of the agent's
/// 8 MiB stayed resident for good. Without them freed memory coalesces and the top of each
/// arena goes back to the system (+7 % after the same test); the agent allocates little, so
/// the slower small allocations cost nothing measurable.
const MALLOC_TUNABLES: &str = "glibc.malloc.mxfast=0:glibc.malloc.tcache_count=0";

/// glibc reads its tunables only at process start, and `mallopt` would need `unsafe`, so the
/// agent re-executes itself once (same pid, same arguments) with GLIBC_TUNABLES set, unless
/// the variable is already set (to anything, even empty: then that applies). Returns only
/// when the re-execution failed (no /proc), with the error; the agent then runs untuned.
fn with_malloc_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "deployment-agent".into());
    Some(
        std::process::Command::new("/proc/self/exe")
            .arg0(program)
            .args(args)
            .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
            .exec(),
    )
}

//! What the binaries' `main` functions share: the `healthcheck` subcommand, the runtime, and
//! turning an outcome into an exit code.

use std::{fmt::Display, process::ExitCode, time::Duration};

use tokio::runtime::{Builder, Runtime};

/// The subcommands every service binary has.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Probe GET /health of this service on this host (the balancer: its admin port); exit 0
    /// if healthy. Used by the images' Docker healthcheck, which has no curl to run.
    Healthcheck {
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
        timeout: Duration,
    },
}

/// The async runtime from `builder` (with every driver enabled), or, when it cannot be made,
/// the exit code after saying why on stderr (logging is not set up yet).
pub fn runtime(binary: &str, builder: &mut Builder) -> Result<Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("{binary}: cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

/// The exit code of a healthcheck: 0 when healthy, else 1 with the reason on stderr.
pub fn health_exit<E: Display>(probed: Result<(), E>) -> ExitCode {
    match probed {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a service's run: 0 when it stopped cleanly, else 1 with the error (and
/// its causes) logged.
pub fn run_exit<E: Display>(binary: &str, ran: Result<(), E>) -> ExitCode {
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(cause = format!("{err:#}"), "{binary} failed");
            ExitCode::FAILURE
        }
    }
}

//! Tracing initialisation: `RUST_LOG` filter (default `info`), text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a pipe (a container's log, the agent's
        // capture of a process worker) gets plain text that searches and parsers can read.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(err) = result {
        tracing::warn!(cause = %err, "tracing was already initialised");
    }
}

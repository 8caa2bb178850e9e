//! Helpers for the typed, parse-once configuration of every binary (clap with `env`).

use std::time::Duration;

/// Parses a duration as `2s`, `500ms`, `1m30s` (humantime) or a bare number of seconds
/// (`5`, `0.25`), the forms the seeds' `.env` files use.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{text}` is not a non-negative number of seconds"));
    }
    humantime::parse_duration(text).map_err(|err| {
        format!("`{text}` is not a duration ({err}); use e.g. `2s`, `500ms` or bare seconds")
    })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags shared by every binary. The filter itself comes from `RUST_LOG`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` or `json`.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests;

//! The library's error type: every failure names the file and line, the URL, or the setting
//! it is about.

use std::path::PathBuf;

/// Everything a loadgen command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A malformed line in a trace, results or events file (lines count from 1, the header
    /// included).
    #[error("{path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A bad argument or an impossible combination of arguments.
    #[error("{0}")]
    Invalid(String),
    /// A request to a worker, balancer or agent failed.
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// A chart could not be drawn or written.
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        Self::Parse {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn http(url: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Http {
            url: url.into(),
            message: message.to_string(),
        }
    }
}

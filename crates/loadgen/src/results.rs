//! The results CSV: one row per request sent by `replay` or `run`.
//!
//! | column | meaning |
//! | --- | --- |
//! | `id` | the trace row's id (or the request number of `run`) |
//! | `path` | the path requested |
//! | `intensity` | the intensity sent |
//! | `due_s` | when the request was due, seconds from the start of the run |
//! | `unix_ms` | the same moment as Unix time in milliseconds (to line up with agent events) |
//! | `lateness_ms` | how late it was sent (send time − due time) |
//! | `latency_ms` | from the due time to the end of the response body, so a request held back by the concurrency cap is charged for its wait (no coordinated omission) |
//! | `status` | HTTP status; 0 when there was no response |
//! | `backend` | the `X-Backend` header of the answer, else the JSON `worker_id`; empty when unknown |
//! | `error` | why the request failed (transport error, timeout, non-2xx); empty when it succeeded |
//! | `service_ms` | the job's own run time on the worker (its `Server-Timing: job;dur=`, else its JSON `time_taken_ms`), queueing excluded; empty when the answer has none (the slowdown is `latency_ms / service_ms`) |

use std::{io::Read, io::Write, path::Path};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: u64,
    pub path: String,
    pub intensity: u32,
    pub due_s: f64,
    pub unix_ms: u64,
    pub lateness_ms: f64,
    pub latency_ms: f64,
    pub status: u16,
    pub backend: String,
    pub error: String,
    /// The job's run time on the worker; absent from older files.
    #[serde(default)]
    pub service_ms: Option<f64>,
}

impl RequestRecord {
    /// A 2xx answer with no error.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status) && self.error.is_empty()
    }

    /// When the response was complete, seconds from the start of the run.
    pub fn done_s(&self) -> f64 {
        self.due_s + self.latency_ms / 1e3
    }

    /// Response time over the job's own run time, for a successful answer that reported one
    /// (above zero).
    pub fn slowdown(&self) -> Option<f64> {
        self.service_ms
            .filter(|service| *service > 0.0 && self.ok())
            .map(|service| self.latency_ms / service)
    }

    /// Unix time (ms) at which the run started.
    pub fn run_start_unix_ms(&self) -> f64 {
        self.unix_ms as f64 - self.due_s * 1e3
    }
}

/// Writes records as CSV with a header.
pub fn write<W: Write>(writer: W, records: &[RequestRecord]) -> Result<(), std::io::Error> {
    let mut csv = csv::Writer::from_writer(writer);
    for record in records {
        csv.serialize(record).map_err(std::io::Error::other)?;
    }
    if records.is_empty() {
        csv.write_record([
            "id",
            "path",
            "intensity",
            "due_s",
            "unix_ms",
            "lateness_ms",
            "latency_ms",
            "status",
            "backend",
            "error",
            "service_ms",
        ])
        .map_err(std::io::Error::other)?;
    }
    csv.flush()
}

/// Writes a results file.
pub fn write_file(path: &Path, records: &[RequestRecord]) -> Result<(), Error> {
    let file = std::fs::File::create(path).map_err(|err| Error::io(path, err))?;
    write(std::io::BufWriter::new(file), records).map_err(|err| Error::io(path, err))
}

/// Reads a results file.
pub fn read_file(path: &Path) -> Result<Vec<RequestRecord>, Error> {
    let file = std::fs::File::open(path).map_err(|err| Error::io(path, err))?;
    parse(std::io::BufReader::new(file), path)
}

/// Parses results; `path` names the source in errors.
pub fn parse<R: Read>(reader: R, path: &Path) -> Result<Vec<RequestRecord>, Error> {
    let mut csv = csv::Reader::from_reader(reader);
    csv.deserialize()
        .map(|row| {
            row.map_err(|err| {
                let line = err.position().map_or(0, |p| p.line());
                let message = match err.kind() {
                    csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
                    _ => err.to_string(),
                };
                Error::parse(path, line, message)
            })
        })
        .collect()
}

/// Rounds to microseconds of a millisecond value (three decimals), for compact files.
pub(crate) fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

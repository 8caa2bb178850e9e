//! `GET /containers/{id}/logs`: a managed container's log lines as NDJSON, streamed from the
//! runtime (`Runtime::log_stream`) as the client reads them. Read-only (no token), bounded:
//! at most `MAX_TAIL` lines already written, and a follow ends after LOGS_FOLLOW_MAX, when
//! the container stops or when the agent shuts down.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use common::ErrorBody;
use futures_util::StreamExt;

use crate::{
    agent::Agent,
    runtime::{LogLine, LogQuery, RuntimeError},
};

/// Lines already written sent without `tail`, and without `grep`.
pub const DEFAULT_TAIL: usize = 100;
/// Most lines already written one request reads (also the default with `grep`: the matching
/// lines among the last `MAX_TAIL`).
pub const MAX_TAIL: usize = 10_000;
/// Longest `grep` text.
pub const MAX_GREP_BYTES: usize = 256;
/// A `since` above this is in milliseconds (1e11 seconds is in the year 5138).
const MILLIS_ABOVE: u64 = 100_000_000_000;
/// Lines sent in one chunk when several are ready at once.
const LINES_PER_CHUNK: usize = 64;

/// A parsed query: what to ask the runtime, and the substring filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsRequest {
    pub query: LogQuery,
    pub grep: Option<String>,
}

/// `tail`, `since`, `follow` and `grep` from the query string; a message naming the bad
/// parameter otherwise. Other parameters are ignored.
pub fn parse(params: &[(String, String)]) -> Result<LogsRequest, String> {
    let value = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
    };
    let grep = match value("grep") {
        Some(text) if text.len() > MAX_GREP_BYTES => {
            return Err(format!(
                "grep must be at most {MAX_GREP_BYTES} bytes, got {}",
                text.len()
            ));
        }
        Some("") | None => None,
        Some(text) => Some(text.to_owned()),
    };
    let tail = match value("tail") {
        None | Some("") if grep.is_some() => MAX_TAIL,
        None | Some("") => DEFAULT_TAIL,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|tail| *tail <= MAX_TAIL)
            .ok_or_else(|| {
                format!("tail must be a whole number of lines from 0 to {MAX_TAIL}, got `{text}`")
            })?,
    };
    let since_ms = match value("since") {
        None | Some("") => None,
        Some(text) => Some(parse_since(text).ok_or_else(|| {
            format!(
                "since must be unix seconds, unix milliseconds or an RFC 3339 time (2024-01-31T12:00:00Z), got `{text}`"
            )
        })?),
    };
    let follow = match value("follow") {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(text) => return Err(format!("follow must be true or false, got `{text}`")),
    };
    Ok(LogsRequest {
        query: LogQuery {
            tail,
            since_ms,
            follow,
        },
        grep,
    })
}

/// Unix seconds, unix milliseconds (above 1e11) or RFC 3339 (`Z` or a `±hh:mm` offset), as
/// unix milliseconds.
pub fn parse_since(text: &str) -> Option<u64> {
    if let Ok(number) = text.parse::<u64>() {
        return if number > MILLIS_ABOVE {
            Some(number)
        } else {
            number.checked_mul(1000)
        };
    }
    // humantime reads UTC only: an offset is taken off by hand.
    let (utc, offset_s) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((base, offset))
            if offset
                .as_bytes()
                .first()
                .is_some_and(|b| matches!(b, b'+' | b'-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = offset.get(1..3)?.parse().ok()?;
            let minutes: i64 = offset.get(4..6)?.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), sign * (hours * 3600 + minutes * 60))
        }
        _ => (text.to_owned(), 0),
    };
    let at = humantime::parse_rfc3339(&utc).ok()?;
    let ms = i64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    u64::try_from(ms - offset_s * 1000).ok()
}

/// The id of the container `key` names (its id, a unique id prefix of 4 or more characters,
/// or its name) when the agent manages it: a member, or an instance with the agent's labels
/// that its runtime still lists (a standby, a stopped one not removed yet), or an exited
/// worker process whose lines the process runtime keeps (by id).
pub(crate) async fn managed_id(agent: &Agent, key: &str) -> Option<String> {
    if let Some(id) = agent.world().find(key) {
        return Some(id.to_owned());
    }
    if agent.shared().runtime.keeps_logs(key) {
        return Some(key.to_owned());
    }
    let listed = agent.shared().runtime.list().await.ok()?;
    if let Some(instance) = listed.iter().find(|i| i.worker.id == key) {
        return Some(instance.worker.id.clone());
    }
    let mut matches = listed.iter().filter(|instance| {
        instance.worker.name == key || (key.len() >= 4 && instance.worker.id.starts_with(key))
    });
    match (matches.next(), matches.next()) {
        (Some(instance), None) => Some(instance.worker.id.clone()),
        _ => None,
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// The handler: 400 for a bad query, 404 for a container the agent does not manage, else
/// the lines as NDJSON (`{"at_ms":..,"stream":"stderr","line":".."}` per line).
pub async fn container_logs(
    State(agent): State<Agent>,
    Path(key): Path<String>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let request = match params
        .map_err(|err| err.body_text())
        .and_then(|q| parse(&q))
    {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Some(id) = managed_id(&agent, &key).await else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no container managed by this agent matches `{key}`"),
        );
    };
    let lines = match agent.shared().runtime.log_stream(&id, &request.query).await {
        Ok(lines) => lines,
        Err(err) => return refused(&id, &err),
    };
    let limit = agent.config().logs_follow_max;
    ndjson(lines, request.grep, limit, agent.shutdown_token())
}

/// The runtime could not read the logs: gone meanwhile (404), or the engine failed (502,
/// the cause in the agent's log only).
fn refused(id: &str, err: &RuntimeError) -> Response {
    match err {
        RuntimeError::Docker(docker) if crate::runtime::docker_status(docker) == Some(404) => {
            error(StatusCode::NOT_FOUND, format!("container {id} is gone"))
        }
        RuntimeError::Other(message) => error(StatusCode::NOT_FOUND, message.clone()),
        _ => {
            tracing::warn!(cause = %err, container = %id, "cannot read a container's logs");
            error(
                StatusCode::BAD_GATEWAY,
                format!("the engine did not give the logs of {id}"),
            )
        }
    }
}

/// The response: lines filtered by `grep`, as NDJSON, read from the runtime only as the
/// client takes them; ends after `limit` or when the agent shuts down, whatever the runtime
/// does.
pub fn ndjson(
    lines: futures_util::stream::BoxStream<'static, LogLine>,
    grep: Option<String>,
    limit: Duration,
    shutdown: common::CancellationToken,
) -> Response {
    let end = async move {
        tokio::select! {
            () = tokio::time::sleep(limit) => {}
            () = shutdown.cancelled_owned() => {}
        }
    };
    let chunks = lines
        .filter(move |line| {
            std::future::ready(grep.as_deref().is_none_or(|text| line.line.contains(text)))
        })
        .take_until(end)
        .ready_chunks(LINES_PER_CHUNK)
        .map(|lines| {
            let mut chunk = Vec::new();
            for line in &lines {
                // A LogLine always serialises.
                if serde_json::to_writer(&mut chunk, line).is_ok() {
                    chunk.push(b'\n');
                }
            }
            Ok::<_, Infallible>(Bytes::from(chunk))
        });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

#[cfg(test)]
mod tests;

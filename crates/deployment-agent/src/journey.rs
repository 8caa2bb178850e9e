//! `GET /requests/{id}`: one request's journey, joined here. The balancers' admin ports
//! (BALANCER_ADMIN_URLS, each host resolved to every address, so every replica is asked)
//! hold the request's record: its attempts, retries, backends and timings. The agent adds
//! the log lines that mention the id from each container the request touched and the agent
//! manages, in time order. Read-only, bounded in time and size, no token.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use common::request_id::MAX_LEN as MAX_ID_LEN;
use futures_util::{StreamExt, stream::FuturesUnordered};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    agent::Agent,
    forward::ForwardClient,
    runtime::{LogLine, LogQuery},
};

/// Longest wait for one balancer address (the lookup of its host, then its answer).
const BALANCER_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest record read from a balancer.
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Log lines read back per container: the last ones since a little before the request.
const LOG_TAIL: usize = 5000;
/// How far before the request's start its containers' lines are read.
const LOG_BEFORE_MS: u64 = 5000;
/// Lines kept per container (the first ones that mention the id).
const MAX_LINES_PER_CONTAINER: usize = 200;
/// Most containers whose logs are read for one request (a request is retried a few times).
const MAX_CONTAINERS: usize = 8;
/// Longest time spent reading the containers' logs (in parallel); what was read by then is
/// answered, marked `truncated`.
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// One of BALANCER_ADMIN_URLS: `http://host[:port]`, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl {
    /// As given, without a trailing `/`.
    pub text: String,
    /// The host to resolve (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header.
    authority: String,
}

impl AdminUrl {
    /// Parses one URL; the error says what is wrong (the caller names the variable).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('/');
        let uri: Uri = text
            .parse()
            .map_err(|err| format!("is not a URL ({err})"))?;
        if uri.scheme_str() != Some("http") {
            return Err(
                "must be an http:// URL (a balancer's admin port speaks plain HTTP)".into(),
            );
        }
        let Some(authority) = uri.authority() else {
            return Err("has no host".into());
        };
        if authority.as_str().contains('@') {
            return Err("must not carry credentials".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                "must be a base URL without a path or query (`http://balancer:8001`)".into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(Self {
            text: text.to_owned(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
        })
    }

    /// Every address of its host.
    async fn addresses(&self) -> Result<Vec<SocketAddr>, String> {
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        match tokio::time::timeout(BALANCER_TIMEOUT, lookup).await {
            Ok(Ok(addresses)) => {
                let mut addresses: Vec<SocketAddr> = addresses.collect();
                addresses.sort();
                addresses.dedup();
                Ok(addresses)
            }
            Ok(Err(err)) => Err(format!("cannot resolve {}: {err}", self.host)),
            Err(_) => Err(format!(
                "cannot resolve {} within {BALANCER_TIMEOUT:?}",
                self.host
            )),
        }
    }
}

/// What one balancer address said about the id.
#[derive(Debug)]
enum Answer {
    Found {
        balancer: SocketAddr,
        record: Value,
    },
    /// It answered 404: it does not remember the id.
    Unknown,
    /// No usable answer; the target (URL or address) and why.
    Failed {
        target: String,
        why: String,
    },
}

/// The record found, and the balancers that could not be asked.
#[derive(Debug, Default)]
struct Search {
    found: Option<(SocketAddr, Value)>,
    /// Balancer addresses that answered (found or not).
    answered: usize,
    unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, Serialize)]
struct Unreachable {
    url: String,
    error: String,
}

/// Asks every address of every URL at once; the first record found wins (the others are not
/// waited for).
async fn find_record(client: &ForwardClient, urls: &[AdminUrl], id: &str) -> Search {
    let mut search = Search::default();
    let lookups = urls
        .iter()
        .map(|url| async move { (url, url.addresses().await) })
        .collect::<FuturesUnordered<_>>()
        .collect::<Vec<_>>()
        .await;
    let mut asks = FuturesUnordered::new();
    for (url, addresses) in lookups {
        match addresses {
            Ok(addresses) if addresses.is_empty() => search.unreachable.push(Unreachable {
                url: url.text.clone(),
                error: format!("{} resolves to no address", url.host),
            }),
            Ok(addresses) => {
                for address in addresses {
                    asks.push(ask(client, url, address, id));
                }
            }
            Err(why) => search.unreachable.push(Unreachable {
                url: url.text.clone(),
                error: why,
            }),
        }
    }
    while let Some(answer) = asks.next().await {
        match answer {
            Answer::Found { balancer, record } => {
                search.answered += 1;
                search.found = Some((balancer, record));
                break;
            }
            Answer::Unknown => search.answered += 1,
            Answer::Failed { target, why } => search.unreachable.push(Unreachable {
                url: target,
                error: why,
            }),
        }
    }
    search
}

/// `GET /requests/{id}` on one balancer address, within [`BALANCER_TIMEOUT`].
async fn ask(client: &ForwardClient, url: &AdminUrl, address: SocketAddr, id: &str) -> Answer {
    let target = format!("http://{address}");
    let failed = |why: String| Answer::Failed {
        target: target.clone(),
        why,
    };
    let request = match http::Request::get(format!("{target}/requests/{id}"))
        .header(header::HOST, &url.authority)
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
    {
        Ok(request) => request,
        Err(err) => return failed(err.to_string()),
    };
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RECORD_BYTES)
            .collect()
            .await
            .map_err(|err| format!("reading its answer: {err}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(BALANCER_TIMEOUT, exchange).await {
        Err(_) => failed(format!("no answer within {BALANCER_TIMEOUT:?}")),
        Ok(Err(why)) => failed(why),
        Ok(Ok((StatusCode::NOT_FOUND, _))) => Answer::Unknown,
        Ok(Ok((StatusCode::OK, body))) => match serde_json::from_slice::<Value>(&body) {
            Ok(record) if record.is_object() => Answer::Found {
                balancer: address,
                record,
            },
            _ => failed("its answer is not a request record".into()),
        },
        Ok(Ok((status, _))) => failed(format!("answered {status}")),
    }
}

/// The parts of a balancer's record the agent reads (the rest is passed on as it is).
#[derive(Debug, Deserialize)]
struct RecordView {
    #[serde(default)]
    started_at_ms: Option<u64>,
    #[serde(default)]
    attempts: Vec<AttemptView>,
}

#[derive(Debug, Deserialize)]
struct AttemptView {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// A container the request touched: its id and name, in the order of the attempts, each once,
/// at most [`MAX_CONTAINERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Touched {
    id: String,
    name: String,
}

fn touched(record: &Value) -> (Option<u64>, Vec<Touched>) {
    let Ok(view) = serde_json::from_value::<RecordView>(record.clone()) else {
        return (None, Vec::new());
    };
    let mut seen = BTreeSet::new();
    let containers = view
        .attempts
        .into_iter()
        .filter_map(|attempt| {
            let id = attempt.backend.filter(|id| !id.is_empty())?;
            seen.insert(id.clone()).then(|| Touched {
                name: attempt.name.unwrap_or_else(|| id.clone()),
                id,
            })
        })
        .take(MAX_CONTAINERS)
        .collect();
    (view.started_at_ms, containers)
}

/// One log line of the journey.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct JourneyLine {
    container: String,
    name: String,
    at_ms: Option<u64>,
    stream: &'static str,
    line: String,
}

/// What was read from one container.
#[derive(Debug, Clone, Serialize)]
struct ContainerLogs {
    container: String,
    name: String,
    /// Lines that mention the id.
    lines: usize,
    /// Reading stopped early: [`MAX_LINES_PER_CONTAINER`] or [`LOG_READ_TIMEOUT`].
    truncated: bool,
    /// Why its logs could not be read (not managed by this agent, gone, engine error).
    error: Option<String>,
}

/// The lines that mention an id, at most [`MAX_LINES_PER_CONTAINER`], as they are read.
#[derive(Debug)]
struct Matches<'a> {
    id: &'a str,
    kept: Vec<LogLine>,
    /// A line that mentions the id was left out.
    more: bool,
}

impl<'a> Matches<'a> {
    fn new(id: &'a str) -> Self {
        Self {
            id,
            kept: Vec::new(),
            more: false,
        }
    }

    /// Keeps `line` if it mentions the id; false once full (reading may stop).
    fn offer(&mut self, line: LogLine) -> bool {
        if !line.line.contains(self.id) {
            return true;
        }
        if self.kept.len() == MAX_LINES_PER_CONTAINER {
            self.more = true;
            return false;
        }
        self.kept.push(line);
        true
    }
}

/// Every container's lines in one list, in time order (a line without a time keeps its place
/// after the timed lines of its container; the sort is stable).
fn merge(per_container: Vec<(Touched, Vec<LogLine>)>) -> Vec<JourneyLine> {
    let mut lines: Vec<JourneyLine> = per_container
        .into_iter()
        .flat_map(|(container, lines)| {
            lines.into_iter().map(move |line| JourneyLine {
                container: container.id.clone(),
                name: container.name.clone(),
                at_ms: line.at_ms,
                stream: line.stream,
                line: line.line,
            })
        })
        .collect();
    lines.sort_by_key(|line| line.at_ms.unwrap_or(u64::MAX));
    lines
}

/// Reads one container's lines since `since_ms` that mention `id`, until `deadline`.
async fn container_lines(
    agent: &Agent,
    container: &Touched,
    since_ms: Option<u64>,
    id: &str,
    deadline: Instant,
) -> (Vec<LogLine>, ContainerLogs) {
    let mut summary = ContainerLogs {
        container: container.id.clone(),
        name: container.name.clone(),
        lines: 0,
        truncated: false,
        error: None,
    };
    // Only the agent's own containers: the id comes from a balancer's record.
    let managed = crate::logs::managed_id(agent, &container.id).await;
    if managed.as_deref() != Some(container.id.as_str()) {
        summary.error = Some("not a container of this agent".into());
        return (Vec::new(), summary);
    }
    let query = LogQuery {
        tail: LOG_TAIL,
        since_ms,
        follow: false,
    };
    let runtime = &agent.shared().runtime;
    let mut stream =
        match tokio::time::timeout_at(deadline, runtime.log_stream(&container.id, &query)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                summary.error = Some(format!("cannot read its logs: {err}"));
                return (Vec::new(), summary);
            }
            Err(_) => {
                summary.error = Some(format!("its logs did not open within {LOG_READ_TIMEOUT:?}"));
                return (Vec::new(), summary);
            }
        };
    // Read until the stream ends, enough lines are kept or the deadline; what was found by
    // then is answered.
    let mut matches = Matches::new(id);
    let mut timed_out = false;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(line)) => {
                if !matches.offer(line) {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    summary.lines = matches.kept.len();
    summary.truncated = matches.more || timed_out;
    (matches.kept, summary)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(common::ErrorBody::new(message))).into_response()
}

/// `GET /requests/{id}`.
#[tracing::instrument(skip(agent))]
pub async fn journey(State(agent): State<Agent>, Path(id): Path<String>) -> Response {
    if !common::request_id::well_formed(id.as_bytes()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a request id is 1 to {MAX_ID_LEN} of the characters A-Z a-z 0-9 . _ : -"),
        );
    }
    let urls: Vec<AdminUrl> = agent
        .config()
        .balancer_admin_urls
        .iter()
        .filter_map(|url| AdminUrl::parse(url).ok())
        .collect();
    if urls.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent knows no balancer to ask: set BALANCER_ADMIN_URLS to the balancers' admin \
             URLs (e.g. http://balancer:8001)",
        );
    }
    let search = find_record(agent.forward_client(), &urls, &id).await;
    let Some((balancer, record)) = search.found else {
        let (status, message) = if search.answered == 0 {
            (
                StatusCode::BAD_GATEWAY,
                format!("no balancer answered (BALANCER_ADMIN_URLS); request `{id}` is unknown"),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                format!(
                    "no balancer remembers request `{id}` (each keeps its last REQUEST_HISTORY requests)"
                ),
            )
        };
        let body = json!({ "error": message, "unreachable": search.unreachable });
        return (status, Json(body)).into_response();
    };
    let (started_at_ms, containers) = touched(&record);
    let since_ms = started_at_ms.map(|at| at.saturating_sub(LOG_BEFORE_MS));
    let deadline = Instant::now() + LOG_READ_TIMEOUT;
    let read = futures_util::future::join_all(
        containers
            .iter()
            .map(|container| container_lines(&agent, container, since_ms, &id, deadline)),
    )
    .await;
    let mut summaries = Vec::with_capacity(read.len());
    let mut per_container = Vec::with_capacity(read.len());
    for (container, (lines, summary)) in containers.into_iter().zip(read) {
        summaries.push(summary);
        per_container.push((container, lines));
    }
    Json(json!({
        "id": id,
        "balancer": balancer.to_string(),
        "record": record,
        "logs": merge(per_container),
        "containers": summaries,
        "unreachable": search.unreachable,
    }))
    .into_response()
}

#[cfg(test)]
mod tests;

//! The deployment agent's side of a run: how many containers there were, and in which
//! category, over time. Recorded by polling the agent's `GET /queue` during `replay`/`run`
//! (`--agent`), or read afterwards from its `GET /events` (container count only).
//!
//! The samples file (`--agent-out`) has the columns `unix_ms,containers,INIT,LU,MU,HU,SUNDOWN`;
//! the category columns are empty when only the count is known.

use std::{path::Path, time::Duration};

use common::{
    CancellationToken,
    queue::{Category, QueueSnapshot},
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The categories in the order of the samples file.
pub const CATEGORIES: [Category; 5] = [
    Category::Init,
    Category::Low,
    Category::Medium,
    Category::High,
    Category::Sundown,
];

/// The agent's view at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSample {
    pub unix_ms: u64,
    pub containers: u32,
    /// Containers per category, in [`CATEGORIES`] order, when known.
    pub categories: Option<[u32; 5]>,
}

impl AgentSample {
    /// The sample of one queue snapshot.
    pub fn of_snapshot(snapshot: &QueueSnapshot) -> Self {
        let mut counts = [0u32; 5];
        for item in &snapshot.items {
            if let Some(i) = CATEGORIES
                .iter()
                .position(|c| *c == item.utilization_category)
            {
                counts[i] += 1;
            }
        }
        Self {
            unix_ms: snapshot.timestamp_ms,
            containers: snapshot.items.len() as u32,
            categories: Some(counts),
        }
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Polls `GET {agent}/queue` every `interval` until `stop` is cancelled; failed polls are
/// skipped (logged once each).
pub async fn record(
    client: reqwest::Client,
    agent: String,
    interval: Duration,
    stop: CancellationToken,
) -> Vec<AgentSample> {
    let url = format!("{}/queue", base(&agent));
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let answer = async {
            let response = client.get(&url).send().await?.error_for_status()?;
            response.json::<QueueSnapshot>().await
        };
        match answer.await {
            Ok(snapshot) => {
                let mut sample = AgentSample::of_snapshot(&snapshot);
                if sample.unix_ms == 0 {
                    sample.unix_ms = crate::now_unix_ms();
                }
                samples.push(sample);
            }
            Err(err) => tracing::warn!(url = %url, cause = %err, "agent poll failed"),
        }
    }
    samples
}

#[derive(Debug, Deserialize)]
struct EventsBody {
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    at_ms: u64,
    replicas: u32,
}

/// The container count over time from the agent's `GET /events` (its last 1000 events).
pub async fn fetch_events(
    client: &reqwest::Client,
    agent: &str,
) -> Result<Vec<AgentSample>, Error> {
    let url = format!("{}/events?limit=1000", base(agent));
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|err| Error::http(&url, crate::engine::describe(&err)))?;
    let text = response
        .text()
        .await
        .map_err(|err| Error::http(&url, crate::engine::describe(&err)))?;
    events_from_json(&text).map_err(|message| Error::http(&url, message))
}

fn events_from_json(text: &str) -> Result<Vec<AgentSample>, String> {
    let body: EventsBody = serde_json::from_str(text)
        .map_err(|err| format!("not an agent events answer ({{\"events\": [...]}}): {err}"))?;
    let mut samples: Vec<AgentSample> = body
        .events
        .into_iter()
        .map(|event| AgentSample {
            unix_ms: event.at_ms,
            containers: event.replicas,
            categories: None,
        })
        .collect();
    samples.sort_by_key(|s| s.unix_ms);
    Ok(samples)
}

/// Reads an events file: the samples CSV of `--agent-out`, or a saved `GET /events` answer.
pub fn read_file(path: &Path) -> Result<Vec<AgentSample>, Error> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::io(path, err))?;
    if text.trim_start().starts_with('{') {
        return events_from_json(&text).map_err(|message| Error::parse(path, 1, message));
    }
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut samples = Vec::new();
    for row in csv.records() {
        let row = row.map_err(|err| {
            Error::parse(
                path,
                err.position().map_or(0, |p| p.line()),
                err.to_string(),
            )
        })?;
        let line = row.position().map_or(0, |p| p.line());
        let number = |i: usize| -> Result<Option<u64>, Error> {
            match row.get(i).unwrap_or_default() {
                "" => Ok(None),
                value => value.parse().map(Some).map_err(|_| {
                    Error::parse(
                        path,
                        line,
                        format!("column {}: `{value}` is not a count", i + 1),
                    )
                }),
            }
        };
        let unix_ms = number(0)?.ok_or_else(|| Error::parse(path, line, "no unix_ms"))?;
        let containers = number(1)?.ok_or_else(|| Error::parse(path, line, "no containers"))?;
        let mut counts = [0u32; 5];
        let mut known = true;
        for (i, count) in counts.iter_mut().enumerate() {
            match number(2 + i)? {
                Some(value) => *count = value as u32,
                None => known = false,
            }
        }
        samples.push(AgentSample {
            unix_ms,
            containers: containers as u32,
            categories: known.then_some(counts),
        });
    }
    Ok(samples)
}

/// Writes the samples CSV.
pub fn write_file(path: &Path, samples: &[AgentSample]) -> Result<(), Error> {
    let io = |err: csv::Error| Error::io(path, std::io::Error::other(err));
    let mut csv = csv::Writer::from_path(path).map_err(io)?;
    let mut header = vec!["unix_ms".to_owned(), "containers".to_owned()];
    header.extend(CATEGORIES.iter().map(|c| c.as_str().to_owned()));
    csv.write_record(&header).map_err(io)?;
    for sample in samples {
        let mut row = vec![sample.unix_ms.to_string(), sample.containers.to_string()];
        match sample.categories {
            Some(counts) => row.extend(counts.iter().map(u32::to_string)),
            None => row.extend(std::iter::repeat_n(String::new(), 5)),
        }
        csv.write_record(&row).map_err(io)?;
    }
    csv.flush().map_err(|err| Error::io(path, err))
}

//! `loadgen subscribers`: several WebSocket subscribers of an agent's queue (`/ws`) for a
//! while, and how long each published snapshot took to reach them: the scale benchmark's
//! instrument (`jobs/bench-scale.sh`).
//!
//! Fan-out of snapshot N to a subscriber: from N's `timestamp_ms` (the agent's clock when it
//! published) to the moment that subscriber had N or a newer one (a slow subscriber skips to
//! the latest snapshot, so a newer one counts), read on this machine's clock: both ends must
//! run on the same machine. The publish time has millisecond resolution, so a figure may be
//! up to 1 ms high. "To the last subscriber" is the largest over the subscribers. Only
//! snapshots published after every subscriber received its first one and received (or
//! passed) by all of them before the end are counted.
//!
//! With `--agent`, the agent's own decision time per controller step (`agent_tick_seconds`,
//! since it started) is read from its `/metrics` at the end.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::CancellationToken;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize, de::IgnoredAny};

use crate::{Error, stats::percentile};

/// What one subscriber received: `(seq, publish ms, arrival ms)`, in arrival order.
type Arrivals = Vec<(u64, u64, f64)>;

/// The head of a snapshot: what the measurement needs.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    epoch: u64,
    timestamp_ms: u64,
}

impl Head {
    /// Reads `seq`, `epoch` and `timestamp_ms` from the text before `"items"` (the agent
    /// writes them first), so that the instrument does not parse every snapshot whole on the
    /// machine whose agent it measures. `None` when they are not there.
    fn read(text: &str) -> Option<Self> {
        let head = &text[..text.find("\"items\"")?];
        let field = |name: &str| -> Option<u64> {
            let key = format!("\"{name}\":");
            let rest = head[head.find(&key)? + key.len()..].trim_start();
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        };
        Some(Self {
            seq: field("seq")?,
            epoch: field("epoch").unwrap_or(0),
            timestamp_ms: field("timestamp_ms")?,
        })
    }
}

/// A whole snapshot, parsed once at the end for its size.
#[derive(Deserialize)]
struct Items {
    items: Vec<IgnoredAny>,
}

/// p50, p99 and max of a set of durations, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            p50_ms: percentile(&values, 50.0),
            p99_ms: percentile(&values, 99.0),
            max_ms: values.last().copied().unwrap_or(0.0),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// The agent's `agent_tick_seconds` histogram since it started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ticks {
    pub count: u64,
    /// p50 and p99 interpolated within the histogram's buckets; max from
    /// `agent_tick_max_seconds`.
    pub spread: Spread,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FanoutReport {
    pub subscribers: usize,
    pub seconds: f64,
    /// Snapshots the agent published during the window (by `seq`).
    pub published: u64,
    /// Of them, the ones measured (their publish time known, reached by every subscriber).
    pub measured: usize,
    /// Snapshots each subscriber received, fewest and most.
    pub received_min: usize,
    pub received_max: usize,
    /// Items in the last snapshot.
    pub items: usize,
    /// To the first subscriber that had it, and to the last.
    pub first: Spread,
    pub last: Spread,
    pub ticks: Option<Ticks>,
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} subscribers for {:.0} s; queue of {} items; {} snapshots published, {} measured; each subscriber received {}-{}",
            self.subscribers,
            self.seconds,
            self.items,
            self.published,
            self.measured,
            self.received_min,
            self.received_max
        )?;
        if let Some(ticks) = &self.ticks {
            writeln!(
                f,
                "decision time per tick ({} ticks):      {}",
                ticks.count, ticks.spread
            )?;
        }
        writeln!(f, "fan-out to the first subscriber:        {}", self.first)?;
        write!(f, "fan-out to the last subscriber:         {}", self.last)
    }
}

/// Subscribes `count` times to `url` for `duration` (or until `shutdown`), then measures.
pub async fn run(
    url: &str,
    count: usize,
    duration: Duration,
    agent: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<FanoutReport, Error> {
    if count == 0 {
        return Err(Error::Invalid("--count must be at least 1".into()));
    }
    let stop = shutdown.child_token();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (socket, _) =
            tokio_tungstenite::connect_async(url)
                .await
                .map_err(|err| Error::Http {
                    url: url.to_owned(),
                    message: err.to_string(),
                })?;
        tasks.push(tokio::spawn(subscribe(socket, stop.clone())));
    }
    let started = std::time::Instant::now();
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
    stop.cancel();
    let seconds = started.elapsed().as_secs_f64();
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        let arrivals = task
            .await
            .map_err(|err| Error::Invalid(err.to_string()))??;
        all.push(arrivals);
    }
    let mut report = measure(
        &all.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(),
        seconds,
    );
    report.items = all.iter().map(|(_, items)| *items).max().unwrap_or(0);
    if let Some(agent) = agent {
        report.ticks = Some(ticks(agent).await?);
    }
    Ok(report)
}

/// Reads snapshots until `stop`; their arrivals and the size of the last one.
async fn subscribe(
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    stop: CancellationToken,
) -> Result<(Arrivals, usize), Error> {
    let (_, mut read) = socket.split();
    let mut arrivals = Vec::new();
    let mut last = None;
    let mut epoch = None;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = read.next() => message,
        };
        let arrived = unix_ms_f64();
        let text = match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                return Err(Error::Invalid(format!("subscription failed: {err}")));
            }
            None => return Err(Error::Invalid("the agent closed a subscription".into())),
        };
        let head = Head::read(&text).ok_or_else(|| {
            Error::Invalid("a snapshot without seq and timestamp_ms before its items".into())
        })?;
        if *epoch.get_or_insert(head.epoch) != head.epoch {
            return Err(Error::Invalid(
                "the leader changed during the run (epoch); run against one agent".into(),
            ));
        }
        arrivals.push((head.seq, head.timestamp_ms, arrived));
        last = Some(text);
    }
    let items = match last {
        Some(text) => serde_json::from_str::<Items>(&text)
            .map_err(|err| Error::Invalid(format!("a snapshot does not parse: {err}")))?
            .items
            .len(),
        None => 0,
    };
    Ok((arrivals, items))
}

/// The fan-out of every snapshot published after each subscriber had its first one.
fn measure(all: &[Arrivals], seconds: f64) -> FanoutReport {
    let start = all
        .iter()
        .filter_map(|arrivals| arrivals.first().map(|a| a.0))
        .max()
        .unwrap_or(0);
    let end = all
        .iter()
        .flat_map(|arrivals| arrivals.iter().map(|a| a.0))
        .max()
        .unwrap_or(start);
    let mut published_at = std::collections::BTreeMap::new();
    for arrivals in all {
        for &(seq, at, _) in arrivals.iter().filter(|a| a.0 > start) {
            published_at.insert(seq, at);
        }
    }
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for (&seq, &at) in &published_at {
        // When each subscriber had `seq` or a newer one.
        let reached: Option<Vec<f64>> = all
            .iter()
            .map(|arrivals| arrivals.iter().find(|a| a.0 >= seq).map(|a| a.2))
            .collect();
        let Some(reached) = reached else { continue };
        let at = at as f64;
        first.push(reached.iter().copied().fold(f64::INFINITY, f64::min) - at);
        last.push(reached.iter().copied().fold(f64::NEG_INFINITY, f64::max) - at);
    }
    let received = all
        .iter()
        .map(|arrivals| arrivals.iter().filter(|a| a.0 > start).count());
    FanoutReport {
        subscribers: all.len(),
        seconds,
        published: end - start,
        measured: last.len(),
        received_min: received.clone().min().unwrap_or(0),
        received_max: received.max().unwrap_or(0),
        items: 0,
        first: Spread::of(first),
        last: Spread::of(last),
        ticks: None,
    }
}

/// `agent_tick_seconds` and `agent_tick_max_seconds` from the agent's `/metrics`.
async fn ticks(agent: &str) -> Result<Ticks, Error> {
    let url = format!("{}/metrics", agent.trim_end_matches('/'));
    let failed = |message: String| Error::Http {
        url: url.clone(),
        message,
    };
    let text = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|err| failed(err.to_string()))?
        .text()
        .await
        .map_err(|err| failed(err.to_string()))?;
    parse_ticks(&text).ok_or_else(|| failed("no agent_tick_seconds histogram".into()))
}

fn parse_ticks(text: &str) -> Option<Ticks> {
    let value = |line: &str| line.rsplit(' ').next()?.parse::<f64>().ok();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let (mut count, mut max) = (None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("agent_tick_seconds_bucket{le=\"") {
            let (bound, _) = rest.split_once('"')?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            buckets.push((bound, value(line)?));
        } else if line.starts_with("agent_tick_seconds_count") {
            count = value(line);
        } else if line.starts_with("agent_tick_max_seconds") {
            max = value(line);
        }
    }
    let (count, max) = (count?, max?);
    let quantile = |q: f64| {
        let rank = q * count;
        let mut below = (0.0, 0.0);
        for &(bound, cumulative) in &buckets {
            if cumulative >= rank && cumulative > 0.0 {
                if bound.is_infinite() {
                    return max;
                }
                let share = (rank - below.1) / (cumulative - below.1);
                return below.0 + share * (bound - below.0);
            }
            below = (bound, cumulative);
        }
        max
    };
    Some(Ticks {
        count: count as u64,
        spread: Spread {
            p50_ms: quantile(0.5).min(max) * 1000.0,
            p99_ms: quantile(0.99).min(max) * 1000.0,
            max_ms: max * 1000.0,
        },
    })
}

fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_subscriber_counts_a_newer_snapshot_as_reached() {
        // Subscriber b skipped seq 3 and had 4 at 130 ms.
        let a = vec![
            (1, 0, 5.0),
            (2, 100, 101.0),
            (3, 110, 112.0),
            (4, 120, 121.0),
        ];
        let b = vec![(1, 0, 6.0), (2, 100, 104.0), (4, 120, 130.0)];
        let report = measure(&[a, b], 1.0);
        assert_eq!(report.published, 3);
        assert_eq!(report.measured, 3);
        assert_eq!(report.received_min, 2);
        // seq 2: 4 ms; seq 3: reached by b with seq 4 at 130 (20 ms); seq 4: 10 ms.
        assert_eq!(report.last.max_ms, 20.0);
        assert_eq!(report.first.p50_ms, 1.0);
    }

    #[test]
    fn the_head_is_read_before_the_items() {
        let text =
            r#"{"version":1,"seq":42,"epoch":3,"timestamp_ms":1700000000123,"items":[{"seq":1}]}"#;
        assert_eq!(
            Head::read(text),
            Some(Head {
                seq: 42,
                epoch: 3,
                timestamp_ms: 1_700_000_000_123
            })
        );
        assert_eq!(Head::read(r#"{"items":[],"seq":1,"timestamp_ms":2}"#), None);
    }

    #[test]
    fn quantiles_come_from_the_buckets_and_max_from_the_gauge() {
        let text = "agent_tick_seconds_sum 0.3\nagent_tick_seconds_count 4\n\
            agent_tick_seconds_bucket{le=\"0.001\"} 2\n\
            agent_tick_seconds_bucket{le=\"0.1\"} 4\n\
            agent_tick_seconds_bucket{le=\"+Inf\"} 4\n\
            agent_tick_max_seconds 0.09\n";
        let ticks = parse_ticks(text).unwrap();
        assert_eq!(ticks.count, 4);
        assert!((ticks.spread.p50_ms - 1.0).abs() < 1e-9);
        assert!((ticks.spread.max_ms - 90.0).abs() < 1e-9);
        assert!(ticks.spread.p99_ms <= 90.0);
    }
}

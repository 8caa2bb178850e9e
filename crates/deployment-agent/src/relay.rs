//! A follower's copy of the leader's queue. A follower does not publish its own view: it
//! follows the leader's `/ws` and republishes every snapshot unchanged, so a balancer on any
//! agent sees the same snapshots with the same `(epoch, seq)`. When it takes over, it
//! publishes its own world with its new, higher epoch: no gap, and nothing goes backwards.

use std::time::Duration;

use axum::{body::Bytes, extract::ws::Utf8Bytes};
use common::{CancellationToken, queue::QueueSnapshot};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::{agent::Agent, publish::Published};

/// Longest wait for the leader's WebSocket to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The leader pings every WS_PING_PERIOD; silence this long means it is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before trying again after a failed or lost connection.
const RETRY: Duration = Duration::from_millis(200);

/// Follows the leader's queue while this agent is a follower, until `shutdown`.
pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let mut roles = agent.roles();
    loop {
        let Some(url) = agent.leader_ws_url() else {
            // Leading, or no leader known: wait for the next change of role.
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = roles.changed() => if changed.is_err() { return },
            }
            continue;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = follow(&agent, &url) => {}
            changed = roles.changed() => if changed.is_err() { return },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn follow(agent: &Agent, url: &str) {
    let mut stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%url, cause = %err, "cannot reach the leader's queue");
                return;
            }
            Err(_) => {
                tracing::debug!(%url, "the leader's queue did not answer in time");
                return;
            }
        };
    tracing::info!(%url, "following the leader's queue");
    loop {
        let message = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => {
                tracing::debug!(%url, cause = %err, "the leader's queue broke off");
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let json = match message {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return,
            _ => continue,
        };
        match serde_json::from_slice::<QueueSnapshot>(&json) {
            // The leader's text is sent on as it came, not serialized again.
            Ok(snapshot) => agent.relay(match Utf8Bytes::try_from(json) {
                Ok(json) => Published::received(snapshot, json),
                Err(_) => Published::new(snapshot),
            }),
            Err(err) => {
                tracing::warn!(cause = %err, "ignoring a message from the leader that is not a snapshot")
            }
        }
    }
}

//! A follower's copy of the leader's queue. A follower does not publish its own view: it
//! follows the leader's `/ws` and republishes every snapshot unchanged, so a balancer on any
//! agent sees the same snapshots with the same `(epoch, seq)`. When it takes over, it
//! publishes its own world with its new, higher epoch: no gap, and nothing goes backwards.
//!
//! The relay follows whichever agent the election names, and follows the next one as soon as
//! that changes (a leader that stepped down relays its successor's queue). It pings the
//! leader every [`PING`] and counts anything it hears (a snapshot, a ping, a pong) as the
//! leader's queue alive. A follower that has heard nothing for [`Freshness::stale_after`]
//! (twice LEADER_LEASE, at least 5 s: its leader is gone and no successor is known, or it
//! cannot reach it, e.g. a node whose engine died and with it the name resolution) holds a
//! stale queue: its subscribers are closed (`/ws`) or ended (`WatchQueue`) and new ones are
//! refused, so balancers move to an agent that has the queue, until it hears the leader again.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use axum::{body::Bytes, extract::ws::Utf8Bytes};
use common::{CancellationToken, queue::QueueSnapshot};
use futures_util::{SinkExt, StreamExt};
use tokio::{sync::watch, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::{agent::Agent, publish::Published};

/// Longest wait for the leader's WebSocket to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the relay pings the leader (its pong proves the connection alive).
const PING: Duration = Duration::from_secs(1);
/// Silence this long on the leader's connection means it is gone: connect again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before trying again after a failed or lost connection.
const RETRY: Duration = Duration::from_millis(200);
/// How often staleness is checked.
const CHECK: Duration = Duration::from_millis(250);
/// The shortest time without the leader's queue after which a follower's copy is stale.
const STALE_MIN: Duration = Duration::from_secs(5);

/// When a follower last heard its leader's queue, and whether its copy is stale.
pub(crate) struct Freshness {
    heard: Mutex<Instant>,
    stale: watch::Sender<bool>,
    after: Duration,
}

impl Freshness {
    /// Stale after twice `lease` (at least [`STALE_MIN`]) without the leader's queue.
    pub fn new(lease: Duration) -> Self {
        Self {
            heard: Mutex::new(Instant::now()),
            stale: watch::Sender::new(false),
            after: (lease * 2).max(STALE_MIN),
        }
    }

    /// How long a follower may go without the leader's queue before its copy is stale.
    pub fn stale_after(&self) -> Duration {
        self.after
    }

    /// The leader's queue was heard now (or this agent just began to follow: it gets a full
    /// `stale_after` to reach the leader).
    pub fn heard(&self) {
        *self.heard.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.stale
            .send_if_modified(|stale| std::mem::replace(stale, false));
    }

    /// Marks the copy stale when `following` and nothing was heard for `stale_after`;
    /// a leader's queue is never stale. Returns whether it is stale.
    pub fn check(&self, following: bool) -> bool {
        let silent = self
            .heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        let stale = following && silent > self.after;
        self.stale.send_if_modified(|current| {
            if *current == stale {
                return false;
            }
            if stale {
                tracing::warn!(
                    ?silent,
                    "the leader's queue has not been heard; closing this agent's queue subscribers until it is"
                );
            } else {
                tracing::info!("this agent's queue is the leader's again");
            }
            *current = stale;
            true
        });
        stale
    }

    pub fn is_stale(&self) -> bool {
        *self.stale.borrow()
    }

    /// Changes of staleness.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.stale.subscribe()
    }
}

/// Resolves with `true` once the copy is stale (`false` only if the agent is gone).
pub(crate) async fn turns_stale(stale: &mut watch::Receiver<bool>) -> bool {
    stale.wait_for(|stale| *stale).await.is_ok()
}

/// Follows the leader's queue while this agent is a follower, until `shutdown`.
pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let checker = tokio::spawn(check_staleness(agent.clone(), shutdown.clone()));
    let mut roles = agent.roles();
    loop {
        let Some(url) = agent.leader_ws_url() else {
            // Leading, or no leader known: wait for the next change of role.
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = roles.changed() => if changed.is_err() { break },
            }
            // A leader's queue is fresh; a new follower gets a full grace to hear its leader.
            agent.relay_freshness().heard();
            continue;
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = follow(&agent, &url) => {}
            changed = roles.changed() => {
                if changed.is_err() { break }
                // The leader changed: follow the new one at once (or lead).
                agent.relay_freshness().heard();
                continue;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    checker.abort();
}

async fn check_staleness(agent: Agent, shutdown: CancellationToken) {
    let solo = agent.shared().elector.is_solo();
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        agent.relay_freshness().check(!solo && !agent.is_leading());
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
    let mut ping = tokio::time::interval(PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let next = tokio::select! {
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    tracing::info!(%url, "the leader's queue went silent; connecting again");
                    return;
                }
                if let Err(err) = stream.send(Message::Ping(Bytes::new())).await {
                    tracing::debug!(%url, cause = %err, "cannot ping the leader's queue");
                    return;
                }
                continue;
            }
            next = stream.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                tracing::debug!(%url, cause = %err, "the leader's queue broke off");
                return;
            }
            None => return,
        };
        last_heard = Instant::now();
        agent.relay_freshness().heard();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_hears_nothing_goes_stale_and_fresh_again_when_it_hears() {
        let freshness = Freshness::new(Duration::from_secs(1));
        assert_eq!(freshness.stale_after(), STALE_MIN);
        let mut changes = freshness.subscribe();
        assert!(!freshness.check(true));
        tokio::time::advance(STALE_MIN - Duration::from_millis(10)).await;
        assert!(!freshness.check(true), "stale before its time");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!freshness.check(false), "a leader's queue is never stale");
        assert!(freshness.check(true));
        assert!(freshness.is_stale());
        assert!(changes.has_changed().unwrap());
        assert!(*changes.borrow_and_update());
        freshness.heard();
        assert!(!freshness.is_stale() && !freshness.check(true));
        assert!(!*changes.borrow_and_update());
    }

    #[test]
    fn a_long_lease_makes_a_longer_grace() {
        assert_eq!(
            Freshness::new(Duration::from_secs(10)).stale_after(),
            Duration::from_secs(20)
        );
    }
}

//! The live queue over WebSocket (`/ws`): the current snapshot at once, then one text message
//! per change, and a ping every WS_PING_PERIOD. Each subscriber reads from a `watch` channel,
//! so a slow one skips to the latest snapshot and never holds the agent back.
//!
//! The live event log (`/ws/events`, HTTP port): the last [`RECENT_EVENTS`] events, oldest
//! first, then each new one, one JSON `ScalingEvent` per text message. Subscribers read from a
//! `broadcast` channel: one that falls behind skips the events it missed, never the agent.
//!
//! Both count against WS_MAX_SUBSCRIBERS (past it, 503) and drop a subscriber that does not
//! take a message within WS_SEND_TIMEOUT. Subscribers only listen, so each connection keeps
//! small buffers (see [`limits`]).

use std::time::Duration;

use axum::{
    Json,
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::ErrorBody;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::agent::Agent;

/// Past events a new `/ws/events` subscriber gets first.
pub const RECENT_EVENTS: usize = 50;

/// Read buffer per subscriber: they send nothing but pongs and a close frame. (The default,
/// 128 KiB allocated at once per connection, made 500 idle subscribers cost 64 MiB.)
const READ_BUFFER: usize = 1024;
/// Largest message or frame a subscriber may send.
const MAX_INCOMING: usize = 64 * 1024;
/// Most bytes queued for one subscriber; a snapshot of 100 containers is about 40 KiB.
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Small, bounded buffers for a connection that only listens; each message is written at once
/// (no write batching: messages go out one at a time anyway).
fn limits(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
}

/// A subscriber refused: 503, the reason, and when to try again.
fn unavailable(message: String, retry_after: &'static str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ErrorBody::new(message)),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    response
}

/// The answer past WS_MAX_SUBSCRIBERS.
fn full(agent: &Agent) -> Response {
    let max = agent.config().ws_max_subscribers;
    tracing::warn!(
        max,
        "WebSocket subscriber refused: WS_MAX_SUBSCRIBERS reached"
    );
    unavailable(
        format!("too many WebSocket subscribers (WS_MAX_SUBSCRIBERS={max}); try again later"),
        "5",
    )
}

/// The answer of a follower whose copy of the leader's queue is stale (see `relay`).
fn stale(agent: &Agent) -> Response {
    let after = agent.relay_freshness().stale_after();
    unavailable(
        format!(
            "this agent follows and has not heard the leader's queue for over {after:?}; use another agent"
        ),
        "1",
    )
}

pub async fn upgrade(State(agent): State<Agent>, upgrade: WebSocketUpgrade) -> Response {
    if agent.queue_stale() {
        return stale(&agent);
    }
    let Some(slot) = agent.subscriber_slot() else {
        return full(&agent);
    };
    limits(upgrade).on_upgrade(move |socket| async move {
        subscriber(agent, socket).await;
        drop(slot);
    })
}

async fn subscriber(agent: Agent, mut socket: WebSocket) {
    let mut queue = agent.subscribe();
    let mut stale = agent.relay_freshness().subscribe();
    let shutdown = agent.shutdown_token();
    let timeout = agent.config().ws_send_timeout;
    // The Arc, not the text, under the channel's lock: serializing there would hold the
    // publisher back.
    let first = queue.borrow_and_update().clone();
    if send_within(&mut socket, Message::Text(first.json()), timeout)
        .await
        .is_err()
    {
        return;
    }
    let mut ping = tokio::time::interval(agent.config().ws_ping);
    ping.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = send_within(&mut socket, Message::Close(None), timeout).await;
                break;
            }
            true = crate::relay::turns_stale(&mut stale) => {
                // A follower that lost the leader: the subscriber goes to another agent.
                let close = CloseFrame {
                    code: close_code::AGAIN,
                    reason: "this agent has lost the leader's queue; use another agent".into(),
                };
                let _ = send_within(&mut socket, Message::Close(Some(close)), timeout).await;
                break;
            }
            changed = queue.changed() => {
                if changed.is_err() {
                    break;
                }
                // The newest snapshot, whatever came in between: a slow subscriber skips.
                let snapshot = queue.borrow_and_update().clone();
                if send_within(&mut socket, Message::Text(snapshot.json()), timeout).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if send_within(&mut socket, Message::Ping(Default::default()), timeout).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

pub async fn upgrade_events(State(agent): State<Agent>, upgrade: WebSocketUpgrade) -> Response {
    let Some(slot) = agent.subscriber_slot() else {
        return full(&agent);
    };
    limits(upgrade).on_upgrade(move |socket| async move {
        event_subscriber(agent, socket).await;
        drop(slot);
    })
}

async fn event_subscriber(agent: Agent, mut socket: WebSocket) {
    // Subscribe before reading the past, so nothing falls in between; an event recorded in
    // that gap is in both and is sent once.
    let mut events = agent.subscribe_events();
    let shutdown = agent.shutdown_token();
    let timeout = agent.config().ws_send_timeout;
    let mut recent = agent.store().recent_events(RECENT_EVENTS);
    recent.reverse();
    for event in &recent {
        if send_json(&mut socket, event, timeout).await.is_err() {
            return;
        }
    }
    let last_at = recent.last().map_or(0, |event| event.at_ms);
    let mut ping = tokio::time::interval(agent.config().ws_ping);
    ping.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = send_within(&mut socket, Message::Close(None), timeout).await;
                break;
            }
            received = events.recv() => match received {
                Ok(event) => {
                    if event.at_ms <= last_at && recent.contains(&event) {
                        continue;
                    }
                    if send_json(&mut socket, &event, timeout).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "event subscriber lagged; skipping ahead");
                }
                Err(RecvError::Closed) => break,
            },
            _ = ping.tick() => {
                if send_within(&mut socket, Message::Ping(Default::default()), timeout).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send_json(
    socket: &mut WebSocket,
    message: &impl Serialize,
    timeout: Duration,
) -> Result<(), ()> {
    let text = serde_json::to_string(message).map_err(|_| ())?;
    send_within(socket, Message::Text(Utf8Bytes::from(text)), timeout).await
}

/// Sends one message; a subscriber that does not take it within `timeout` is dropped.
async fn send_within(
    socket: &mut WebSocket,
    message: Message,
    timeout: Duration,
) -> Result<(), ()> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            tracing::info!(timeout = ?timeout, "dropping a WebSocket subscriber that does not read (WS_SEND_TIMEOUT)");
            Err(())
        }
    }
}

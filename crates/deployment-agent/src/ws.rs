//! The live queue over WebSocket (`/ws`): the current snapshot at once, then one text message
//! per change, and a ping every WS_PING_PERIOD. Each subscriber reads from a `watch` channel,
//! so a slow one skips to the latest snapshot and never holds the agent back.
//!
//! The live event log (`/ws/events`, HTTP port): the last [`RECENT_EVENTS`] events, oldest
//! first, then each new one, one JSON `ScalingEvent` per text message. Subscribers read from a
//! `broadcast` channel: one that falls behind skips the events it missed, never the agent.

use std::time::Duration;

use axum::{
    extract::{
        State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use common::queue::QueueSnapshot;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::agent::Agent;

/// Past events a new `/ws/events` subscriber gets first.
pub const RECENT_EVENTS: usize = 50;

/// A subscriber that cannot take one message within this is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn upgrade(State(agent): State<Agent>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| subscriber(agent, socket))
}

async fn subscriber(agent: Agent, mut socket: WebSocket) {
    let mut queue = agent.subscribe();
    let shutdown = agent.shutdown_token();
    let first = queue.borrow_and_update().clone();
    if send(&mut socket, &first).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(agent.config().ws_ping);
    ping.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            changed = queue.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = queue.borrow_and_update().clone();
                if send(&mut socket, &snapshot).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
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
    upgrade.on_upgrade(move |socket| event_subscriber(agent, socket))
}

async fn event_subscriber(agent: Agent, mut socket: WebSocket) {
    // Subscribe before reading the past, so nothing falls in between; an event recorded in
    // that gap is in both and is sent once.
    let mut events = agent.subscribe_events();
    let shutdown = agent.shutdown_token();
    let mut recent = agent.store().recent_events(RECENT_EVENTS);
    recent.reverse();
    for event in &recent {
        if send_json(&mut socket, event).await.is_err() {
            return;
        }
    }
    let last_at = recent.last().map_or(0, |event| event.at_ms);
    let mut ping = tokio::time::interval(agent.config().ws_ping);
    ping.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            received = events.recv() => match received {
                Ok(event) => {
                    if event.at_ms <= last_at && recent.contains(&event) {
                        continue;
                    }
                    if send_json(&mut socket, &event).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "event subscriber lagged; skipping ahead");
                }
                Err(RecvError::Closed) => break,
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
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

async fn send(socket: &mut WebSocket, snapshot: &QueueSnapshot) -> Result<(), ()> {
    send_json(socket, snapshot).await
}

async fn send_json(socket: &mut WebSocket, message: &impl Serialize) -> Result<(), ()> {
    let text = serde_json::to_string(message).map_err(|_| ())?;
    match tokio::time::timeout(
        SEND_TIMEOUT,
        socket.send(Message::Text(Utf8Bytes::from(text))),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

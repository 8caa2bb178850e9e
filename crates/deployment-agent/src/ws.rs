//! The live queue over WebSocket (`/ws`): the current snapshot at once, then one text message
//! per change, and a ping every WS_PING_PERIOD. Each subscriber reads from a `watch` channel,
//! so a slow one skips to the latest snapshot and never holds the agent back.

use std::time::Duration;

use axum::{
    extract::{
        State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use common::queue::QueueSnapshot;

use crate::agent::Agent;

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

async fn send(socket: &mut WebSocket, snapshot: &QueueSnapshot) -> Result<(), ()> {
    let text = serde_json::to_string(snapshot).map_err(|_| ())?;
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

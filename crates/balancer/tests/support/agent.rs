//! A stand-in for the deployment agent: the queue WebSocket (`/ws`, full snapshot on connect,
//! one per change, pings) and the gRPC `ReportLoad` sink.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    CancellationToken,
    queue::{QueueItem, QueueSnapshot},
};
use futures_util::{SinkExt, StreamExt};
use proto::{
    DrainRequest, DrainResponse, GetStatusRequest, LoadReport, ReportLoadResponse, ScaleRequest,
    ScaleResponse, Status, WatchQueueRequest,
    deployment_agent_server::{DeploymentAgent, DeploymentAgentServer},
};
use tokio::{net::TcpListener, sync::broadcast, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

struct State {
    snapshot: Mutex<QueueSnapshot>,
    updates: broadcast::Sender<String>,
    connections: AtomicUsize,
    /// Cancelled to drop every open connection at once.
    drop_all: Mutex<CancellationToken>,
}

/// The agent's queue WebSocket.
pub struct WsAgent {
    pub address: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl WsAgent {
    /// An agent that leads alone (epoch 0), its queue at seq 1.
    pub async fn start(items: Vec<QueueItem>) -> Self {
        Self::start_at(0, 1, items).await
    }

    /// An agent whose queue is at `(epoch, seq)`.
    pub async fn start_at(epoch: u64, seq: u64, items: Vec<QueueItem>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (updates, _) = broadcast::channel(64);
        let state = Arc::new(State {
            snapshot: Mutex::new(QueueSnapshot::new(seq, 0, items).with_epoch(epoch)),
            updates,
            connections: AtomicUsize::new(0),
            drop_all: Mutex::new(CancellationToken::new()),
        });
        let accept = Some(tokio::spawn(accept(listener, Arc::clone(&state))));
        Self {
            address,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.address)
    }

    /// Publishes a new snapshot (same epoch, next seq) to every connected balancer (and to
    /// later ones).
    pub fn publish(&self, items: Vec<QueueItem>) {
        let (epoch, seq) = self.state.snapshot.lock().unwrap().position();
        self.publish_at(epoch, seq + 1, items);
    }

    /// Publishes a snapshot at `(epoch, seq)`, newer or not.
    pub fn publish_at(&self, epoch: u64, seq: u64, items: Vec<QueueItem>) {
        let text = {
            let mut snapshot = self.state.snapshot.lock().unwrap();
            *snapshot = QueueSnapshot::new(seq, 0, items).with_epoch(epoch);
            serde_json::to_string(&*snapshot).unwrap()
        };
        let _ = self.state.updates.send(text);
    }

    /// WebSocket connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every connection, as a crashed agent would.
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        let mut token = self.state.drop_all.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        assert!(self.accept.is_none(), "still running");
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.address).await {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.expect("cannot listen on the agent's address again");
        self.accept = Some(tokio::spawn(accept(listener, Arc::clone(&self.state))));
    }
}

impl Drop for WsAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let drop_all = state.drop_all.lock().unwrap().clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let mut updates = state.updates.subscribe();
            let first = serde_json::to_string(&*state.snapshot.lock().unwrap()).unwrap();
            if ws.send(Message::text(first)).await.is_err() {
                return;
            }
            let mut pings = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = drop_all.cancelled() => return,
                    update = updates.recv() => match update {
                        Ok(text) => if ws.send(Message::text(text)).await.is_err() { return },
                        Err(_) => return,
                    },
                    _ = pings.tick() => if ws.send(Message::Ping(Vec::new().into())).await.is_err() { return },
                    incoming = ws.next() => match incoming {
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                }
            }
        });
    }
}

/// The token the stand-in agent requires (and `support::agent_config` gives the balancer).
pub const AGENT_TOKEN: &str = "balancer-test-token";

/// The agent's gRPC API, recording every load report sent with `authorization: Bearer
/// AGENT_TOKEN`, and counting the report streams refused without it (as the agent does).
pub struct GrpcAgent {
    pub address: SocketAddr,
    reports: Arc<Mutex<Vec<LoadReport>>>,
    refused: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Sink {
    reports: Arc<Mutex<Vec<LoadReport>>>,
    refused: Arc<AtomicUsize>,
}

type SnapshotStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<proto::QueueSnapshot, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl DeploymentAgent for Sink {
    type WatchQueueStream = SnapshotStream;

    async fn watch_queue(
        &self,
        _request: tonic::Request<WatchQueueRequest>,
    ) -> Result<tonic::Response<SnapshotStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    async fn get_status(
        &self,
        _request: tonic::Request<GetStatusRequest>,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    async fn scale(
        &self,
        _request: tonic::Request<ScaleRequest>,
    ) -> Result<tonic::Response<ScaleResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    async fn drain(
        &self,
        _request: tonic::Request<DrainRequest>,
    ) -> Result<tonic::Response<DrainResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stand-in"))
    }

    async fn report_load(
        &self,
        request: tonic::Request<tonic::Streaming<LoadReport>>,
    ) -> Result<tonic::Response<ReportLoadResponse>, tonic::Status> {
        let expected = format!("Bearer {AGENT_TOKEN}");
        let given = request.metadata().get("authorization");
        if given.and_then(|value| value.to_str().ok()) != Some(expected.as_str()) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(tonic::Status::unauthenticated(
                "stand-in: wrong or no token",
            ));
        }
        let mut stream = request.into_inner();
        while let Some(report) = stream.message().await? {
            self.reports.lock().unwrap().push(report);
        }
        Ok(tonic::Response::new(ReportLoadResponse {}))
    }
}

impl GrpcAgent {
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Serving on `listener` (e.g. one on another loopback address).
    pub fn start_on(listener: TcpListener) -> Self {
        let address = listener.local_addr().unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let sink = Sink {
            reports: Arc::clone(&reports),
            refused: Arc::clone(&refused),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DeploymentAgentServer::new(sink))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.cancelled_owned(),
                )
                .await;
        });
        Self {
            address,
            reports,
            refused,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn reports(&self) -> Vec<LoadReport> {
        self.reports.lock().unwrap().clone()
    }

    /// Report streams refused for a missing or wrong token.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

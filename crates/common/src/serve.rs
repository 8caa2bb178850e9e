//! The HTTP accept loop every service uses: HTTP/1.1 and h2c on one port, upgrades allowed,
//! per-connection errors logged and survived, an optional connection cap, a graceful drain with
//! a deadline on shutdown and an abrupt abort (used to simulate a crash).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// The remote address of the connection a request came in on, as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// How the accept loop behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight requests may run after shutdown starts before they are cut.
    pub grace: Duration,
    /// At most this many open connections; further clients wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// A client must send its request headers within this time.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            max_connections: None,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested and every connection finished within the grace period.
    Drained,
    /// Shutdown was requested and connections still open at the deadline were cut.
    GraceExpired,
    /// `abort` was cancelled: every connection was dropped at once, as in a crash.
    Aborted,
}

/// Serves `service` on `listener` until `shutdown` (graceful) or `abort` (abrupt) is cancelled.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> Stopped
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = options
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.max(1))));
    let mut connections = JoinSet::new();

    loop {
        let permit = match &slots {
            Some(slots) => tokio::select! {
                permit = slots.clone().acquire_owned() => permit.ok(),
                () = shutdown.cancelled() => break,
                () = abort.cancelled() => {
                    connections.abort_all();
                    return Stopped::Aborted;
                }
            },
            None => None,
        };
        tokio::select! {
            biased;
            () = abort.cancelled() => {
                connections.abort_all();
                return Stopped::Aborted;
            }
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = tower::util::MapRequest::new(
                        service.clone(),
                        move |mut request: Request<Incoming>| {
                            request.extensions_mut().insert(PeerAddr(peer));
                            request
                        },
                    );
                    let connection = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(stream),
                            TowerToHyperService::new(service),
                        )
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(cause = %err, %peer, "connection ended with an error");
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Usually EMFILE: back off briefly instead of spinning; the loop survives.
                    tracing::warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    drop(listener);
    let open = connections.len();
    tracing::info!(open_connections = open, grace = ?options.grace, "draining connections");
    let drained = async move {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    tokio::select! {
        () = drained => Stopped::Drained,
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
            Stopped::GraceExpired
        }
        () = abort.cancelled() => Stopped::Aborted,
    }
}

/// The `healthcheck` subcommand of every service: `GET /health` on this host's `port` (the
/// loopback address when `host` is unspecified); `Ok` when it answers 2xx within `timeout`.
pub async fn probe_health(
    host: std::net::IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let host = if host.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        host
    };
    let probe = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|err| format!("connect to {host}:{port}: {err}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        tokio::spawn(connection);
        let request = Request::get("/health")
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("/health answered {}", response.status()))
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

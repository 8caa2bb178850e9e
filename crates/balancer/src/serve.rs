//! The traffic accept loop, thread-per-core: one acceptor hands each new connection, in turn,
//! to one of `BALANCER_THREADS` traffic threads; each thread runs its own single-threaded event
//! loop serving its connections (HTTP/1.1 and h2c, upgrades), like nginx's workers. A request,
//! its upstream connection and its answer then stay on one thread, and the connections are
//! spread evenly (a shared listening socket lets whichever thread wakes first take a whole
//! burst of connections).
//!
//! It keeps the behaviour of `common::serve`: a connection cap (the rest wait in the listen
//! backlog), per-connection errors survived, a graceful drain with a deadline on shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{
            AtomicBool,
            Ordering::{Acquire, Release},
        },
    },
    task::Context,
    time::Duration,
};

use common::{
    CancellationToken,
    serve::{ServeOptions, Stopped},
};
use futures_util::task::AtomicWaker;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};

use crate::{
    fast,
    proxy::{Proxy, Shared},
    timer::{self, PooledTimer},
};

/// A connection on its way to a traffic thread.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// A slot of `MAX_CONNECTIONS`, held while the connection is open.
    permit: Option<OwnedSemaphorePermit>,
}

/// Serves `listener` on `threads` traffic threads until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    threads: usize,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Stopped {
    let mut lanes = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    for shard in 0..threads.max(1) {
        let (lane, incoming) = mpsc::unbounded_channel::<Accepted>();
        let (done, stopped) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&shared);
        let options = options.clone();
        let shutdown = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("balancer-{shard}"))
            .spawn(move || {
                let stopped = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(traffic_thread(incoming, shared, shard, options, shutdown))
                    }
                    Err(err) => {
                        tracing::error!(cause = %err, shard, "cannot start a traffic thread's event loop");
                        Stopped::Aborted
                    }
                };
                let _ = done.send(stopped);
            });
        match spawned {
            Ok(_) => {
                lanes.push(lane);
                finished.push(stopped);
            }
            Err(err) => tracing::error!(cause = %err, shard, "cannot start a traffic thread"),
        }
    }
    if lanes.is_empty() {
        return Stopped::Aborted;
    }

    let slots = options
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.max(1))));
    let mut next = 0usize;
    loop {
        let permit = match &slots {
            Some(slots) => tokio::select! {
                permit = Arc::clone(slots).acquire_owned() => permit.ok(),
                () = shutdown.cancelled() => break,
            },
            None => None,
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let stream = match stream.into_std() {
                        Ok(stream) => stream,
                        Err(err) => {
                            tracing::debug!(cause = %err, %peer, "cannot hand over a connection");
                            continue;
                        }
                    };
                    // Round-robin; a lane whose thread died is skipped.
                    let mut connection = Accepted { stream, peer, permit };
                    for _ in 0..lanes.len() {
                        let lane = &lanes[next % lanes.len()];
                        next = next.wrapping_add(1);
                        match lane.send(connection) {
                            Ok(()) => break,
                            Err(mpsc::error::SendError(back)) => connection = back,
                        }
                    }
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
    drop(lanes);
    let mut outcome = Stopped::Drained;
    for stopped in finished {
        match stopped.await.unwrap_or(Stopped::Aborted) {
            Stopped::Drained => {}
            Stopped::GraceExpired => {
                if outcome == Stopped::Drained {
                    outcome = Stopped::GraceExpired;
                }
            }
            Stopped::Aborted => outcome = Stopped::Aborted,
        }
    }
    outcome
}

/// Asks one connection to finish its current request and close (hyper's graceful shutdown).
/// Checking it costs the connection one atomic load per poll, where a shared watch channel
/// would take its lock on every poll.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    requested: AtomicBool,
    waker: AtomicWaker,
}

impl Drain {
    fn request(&self) {
        self.requested.store(true, Release);
        self.waker.wake();
    }

    /// Whether a drain was requested.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Acquire)
    }

    /// Until a drain is requested.
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.poll_requested(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// `true` once a drain was requested; registers the task to be woken for it otherwise.
    fn poll_requested(&self, cx: &Context<'_>) -> bool {
        if self.requested.load(Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.requested.load(Acquire)
    }
}

/// Serves one connection (or its rest, after the fast path) with hyper: HTTP/1.1 with
/// upgrades, or h2c; a drain asks it to finish its current request and close.
async fn serve_hyper<IO>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    shared: Arc<Shared>,
    shard: usize,
    peer: SocketAddr,
    drain: &Drain,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = Proxy::new(shared, shard, peer.ip());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    let served = std::future::poll_fn(|cx| {
        if !draining && drain.poll_requested(cx) {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await;
    if let Err(err) = served {
        tracing::debug!(cause = %err, %peer, "connection ended with an error");
    }
}

/// One traffic thread: serves the connections handed to it until shutdown, then drains them.
async fn traffic_thread(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    shard: usize,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Stopped {
    // Sleeps for the header read and request timeouts come from this thread's pool.
    let _sleeps = timer::Pool::install();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(PooledTimer)
        // As for the upstream connections: one buffer, one write (see `upstream`).
        .writev(false)
        // A client that half-closes after its request still gets the answer (as on the fast
        // path, and with nginx and HAProxy); hyper's default drops the request.
        .half_close(true)
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(PooledTimer);
    let builder = Arc::new(builder);
    let mut drains: Vec<Arc<Drain>> = Vec::new();
    let mut connections = JoinSet::new();

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = incoming.recv() => {
                let Some(Accepted { stream, peer, permit }) = accepted else { break };
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::debug!(cause = %err, %peer, "cannot take over a connection");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Forget the signals of closed connections now and then.
                if drains.len() >= 64 && drains.len() >= 2 * connections.len() {
                    drains.retain(|drain| Arc::strong_count(drain) > 1);
                }
                let drain = Arc::new(Drain::default());
                drains.push(Arc::clone(&drain));
                let shared = Arc::clone(&shared);
                let builder = Arc::clone(&builder);
                let header_read_timeout = options.header_read_timeout;
                connections.spawn(async move {
                    if shared.settings.fast_path {
                        let connection = fast::Connection::new(
                            Arc::clone(&shared),
                            shard,
                            peer.ip(),
                            stream,
                            header_read_timeout,
                            Arc::clone(&drain),
                        );
                        if let fast::Served::Fallback(rewind) = connection.serve().await {
                            serve_hyper(&builder, rewind, shared, shard, peer, &drain).await;
                        }
                    } else {
                        serve_hyper(&builder, stream, shared, shard, peer, &drain).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    // Connections accepted but not yet taken over are closed.
    incoming.close();
    while let Ok(accepted) = incoming.try_recv() {
        drop(accepted);
    }
    let open = connections.len();
    if open > 0 {
        tracing::info!(shard, open_connections = open, grace = ?options.grace, "draining connections");
    }
    for drain in &drains {
        drain.request();
    }
    let drained = async move { while connections.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => Stopped::Drained,
        () = tokio::time::sleep(options.grace) => {
            tracing::warn!(shard, "grace period over; closing the remaining connections");
            Stopped::GraceExpired
        }
    }
}

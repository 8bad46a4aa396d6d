//! The accept loop: connection limits, one hyper connection per TCP stream with read
//! deadlines, each request tagged with its connection's facts, graceful shutdown with a
//! bounded drain.
//!
//! We run our own loop instead of `axum::serve` for the slow-client and connection-count
//! protections (the seeds' "DDoS protection") and to insert [`ConnectionInfo`] for
//! client-IP resolution.

mod conn;
mod framing;
mod limits;

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use palisade::{
    client_ip::{ConnectionInfo, TrustedProxies},
    health::Health,
};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use self::{
    conn::{ConnService, ConnState, GuardedIo},
    limits::{ConnectionLimits, Refused},
};

/// Knobs of the accept loop.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub(crate) header_read_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    /// Peers exempt from the per-IP connection limit.
    pub(crate) trusted_proxies: TrustedProxies,
    /// hyper's hard limit on HTTP/1 header fields (bare `431` beyond it); `None`: hyper's
    /// default, 100.
    pub(crate) max_header_fields: Option<usize>,
    /// HTTP/2's limit on the header list (h2 answers a bare `431` beyond it); `None`: h2's
    /// default, 16 KiB.
    pub(crate) max_h2_header_list: Option<u32>,
    /// Scan request heads for `Content-Length` with `Transfer-Encoding` (gateway mode).
    pub(crate) detect_ambiguous_framing: bool,
}

/// Serves until `shutdown` resolves, then: readiness fails at once, connections are still
/// accepted for `shutdown_delay`, then the listener closes and in-flight requests get up to
/// `drain_timeout` to finish.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    svc: S,
    health: Health,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header-read and keep-alive deadlines are ours (see `conn`).
        .header_read_timeout(None);
    if let Some(n) = opts.max_header_fields {
        builder.http1().max_headers(n);
    }
    if let Some(n) = opts.max_h2_header_list {
        builder.http2().max_header_list_size(n);
    }
    let graceful = GracefulShutdown::new();
    let limits = Arc::new(ConnectionLimits::new(
        opts.max_connections,
        opts.max_connections_per_ip,
        opts.trusted_proxies.clone(),
    ));
    let accept = |stream: TcpStream, peer: SocketAddr| {
        let admitted = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                // Closed at once: a refused connection costs no task and no buffer.
                let which = match refused {
                    Refused::Total => "server.max_connections",
                    Refused::PerIp => "server.max_connections_per_ip",
                };
                tracing::debug!(%peer, limit = which, open = limits.open(), "connection refused");
                return;
            }
        };
        if opts.tcp_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let state = Arc::new(ConnState::default());
        let service = ConnService {
            svc: std::cell::RefCell::new(svc.clone()),
            info: ConnectionInfo { peer, tls: false },
            state: state.clone(),
        };
        let io = GuardedIo::new(
            stream,
            state,
            opts.header_read_timeout,
            opts.keep_alive_timeout,
            opts.detect_ambiguous_framing,
        );
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(admitted);
        });
    };

    accept_until(&listener, &accept, shutdown).await;

    health.begin_shutdown();
    tracing::info!(
        delay_ms = opts.shutdown_delay.as_millis() as u64,
        drain_timeout_ms = opts.drain_timeout.as_millis() as u64,
        "shutdown requested: readiness now fails"
    );
    accept_until(&listener, &accept, tokio::time::sleep(opts.shutdown_delay)).await;
    drop(listener);
    match tokio::time::timeout(opts.drain_timeout, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Accepts connections until `stop` resolves.
async fn accept_until(
    listener: &TcpListener,
    accept: &impl Fn(TcpStream, SocketAddr),
    stop: impl Future<Output = ()>,
) {
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            res = listener.accept() => match res {
                Ok((stream, peer)) => accept(stream, peer),
                Err(e) => accept_error(&e).await,
            },
        }
    }
}

/// Out of file descriptors and similar: log, back off briefly instead of spinning.
async fn accept_error(e: &std::io::Error) {
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

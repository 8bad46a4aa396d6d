//! The accept loop: one hyper connection per TCP stream, each request tagged with its
//! connection's facts, graceful shutdown with a bounded drain.
//!
//! We run our own loop instead of `axum::serve` to set a header-read timeout (slow clients
//! cannot hold a connection forever without sending a request) and to insert
//! [`ConnectionInfo`] for client-IP resolution.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::pin, time::Duration};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use palisade::{client_ip::ConnectionInfo, health::Health};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};

/// Timing knobs of the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    pub(crate) header_read_timeout: Duration,
    pub(crate) shutdown_delay: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
}

/// Per-connection adapter: tags requests with the peer, then calls the stack.
#[derive(Clone)]
struct ConnService<S> {
    svc: S,
    info: ConnectionInfo,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<Incoming>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info);
        self.svc.clone().oneshot(req)
    }
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
        .header_read_timeout(opts.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let accept = |stream: TcpStream, peer: SocketAddr| {
        if opts.tcp_nodelay {
            let _ = stream.set_nodelay(true);
        }
        let service = ConnService {
            svc: svc.clone(),
            info: ConnectionInfo { peer, tls: false },
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
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

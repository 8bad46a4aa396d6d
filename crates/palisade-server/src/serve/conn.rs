//! One connection: read deadlines on the socket (header read, keep-alive idle) and the
//! per-connection service that tags requests and tracks whether one is in progress.
//!
//! hyper's own header-read timer starts as soon as the connection waits for a request, so
//! it cannot tell a slow client from an idle keep-alive connection: one number would have to
//! serve both, and a keep-alive timeout shorter than a load balancer's idle timeout makes it
//! reuse connections this server is closing (502s). So the deadlines live here:
//!
//! - **Header read**: from the first byte of a request (or from accept) until its headers
//!   are complete (`ConnService::call` runs), at most `header_read_timeout`.
//! - **Keep-alive idle**: from the end of a response until the first byte of the next
//!   request, at most `keep_alive_timeout`.
//! - While a request is in progress the socket has no deadline: the request-body idle
//!   timeout and the request timeout (layers in the stack) bound it.
//! - After a `101 Switching Protocols` (a WebSocket) or a `CONNECT` answered 2xx, the socket
//!   belongs to the upgraded protocol: no HTTP deadline applies any more.
//! - HTTP/2 (the connection starts with its preface): control frames arrive between
//!   streams, so only the keep-alive deadline applies while no stream is open.
//!
//! A deadline that passes makes the next read fail, and hyper closes the connection.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{future, task::AtomicWaker};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use palisade::client_ip::ConnectionInfo;
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tower::{Service, ServiceExt, util::Oneshot};

use super::framing::HeadScan;

/// Requests of one connection in progress (HTTP/2 may have several), and the task to wake
/// when the last one ends so the keep-alive clock starts even if no byte arrives.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    requests: AtomicUsize,
    /// Requests started so far: a change tells the reader a request came and went even if
    /// it never read the socket meanwhile (pipelined heads already buffered by hyper).
    started: AtomicU64,
    reader: AtomicWaker,
    /// Switched protocols (`101`, a WebSocket): the socket now belongs to the upgrade, and
    /// HTTP deadlines no longer apply.
    upgraded: AtomicBool,
    /// The connection speaks HTTP/2 (its preface was read).
    h2: AtomicBool,
    /// The head just read had both `Content-Length` and `Transfer-Encoding` (gateway mode
    /// only; see [`framing`](super::framing)); taken by the request it belongs to.
    ambiguous_framing: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request.
    Idle,
    /// Reading a request head (or, while `requests > 0`, the request in progress: its end
    /// shows as a new `started` count).
    Head,
}

pin_project! {
    /// The socket with the header-read and keep-alive deadlines.
    pub(crate) struct GuardedIo<T> {
        #[pin]
        io: T,
        state: Arc<ConnState>,
        header_read: Duration,
        keep_alive: Duration,
        phase: Phase,
        deadline: Instant,
        // Armed only when a read has to wait; reset only when the deadline moved.
        sleep: Pin<Box<Sleep>>,
        armed_for: Instant,
        // `ConnState::started` when last seen.
        seen: u64,
        // HTTP/2 (prior knowledge): control frames arrive between streams, so bytes do not
        // start a "request head"; only the keep-alive deadline applies between streams.
        h2: bool,
        first_read: bool,
        // Gateway mode: the scan of the request head being read, from its first byte.
        scan: Option<HeadScan>,
        detect_framing: bool,
    }
}

impl<T> GuardedIo<T> {
    /// A new connection must send its first request head within `header_read`.
    pub(crate) fn new(
        io: T,
        state: Arc<ConnState>,
        header_read: Duration,
        keep_alive: Duration,
        detect_framing: bool,
    ) -> Self {
        let deadline = Instant::now() + header_read;
        Self {
            io,
            state,
            header_read,
            keep_alive,
            phase: Phase::Head,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed_for: deadline,
            seen: 0,
            h2: false,
            first_read: true,
            scan: detect_framing.then(HeadScan::new),
            detect_framing,
        }
    }
}

impl<T: AsyncRead> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.state.upgraded.load(Ordering::Acquire) {
            return this.io.poll_read(cx, buf);
        }
        if this.state.requests.load(Ordering::Acquire) > 0 {
            let res = this.io.poll_read(cx, buf);
            if res.is_pending() {
                this.state.reader.register(cx.waker());
                // The request may have ended in between; then read again now.
                if this.state.requests.load(Ordering::Acquire) == 0 {
                    cx.waker().wake_by_ref();
                }
            }
            return res;
        }
        let started = this.state.started.load(Ordering::Acquire);
        if started != *this.seen {
            // The last response is done: the keep-alive clock starts.
            *this.seen = started;
            *this.phase = Phase::Idle;
            *this.deadline = Instant::now() + *this.keep_alive;
        }
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if std::mem::take(this.first_read) && buf.filled()[before..].starts_with(b"PRI ") {
                    // The HTTP/2 preface: from now on only the idle deadline applies.
                    *this.h2 = true;
                    this.state.h2.store(true, Ordering::Relaxed);
                    *this.phase = Phase::Idle;
                    *this.deadline = Instant::now() + *this.keep_alive;
                    *this.scan = None;
                } else if *this.phase == Phase::Idle && !*this.h2 && buf.filled().len() > before {
                    // A new request starts: its head must be complete in time.
                    *this.phase = Phase::Head;
                    *this.deadline = Instant::now() + *this.header_read;
                    if *this.detect_framing {
                        *this.scan = Some(HeadScan::new());
                    }
                }
                if let Some(scan) = this.scan {
                    if let Some(ambiguous) = scan.feed(&buf.filled()[before..]) {
                        this.state
                            .ambiguous_framing
                            .store(ambiguous, Ordering::Release);
                        *this.scan = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if *this.armed_for != *this.deadline {
                    this.sleep.as_mut().reset(*this.deadline);
                    *this.armed_for = *this.deadline;
                }
                if this.sleep.as_mut().poll(cx).is_ready() {
                    let what = if *this.phase == Phase::Idle {
                        "keep-alive idle timeout"
                    } else {
                        "header read timeout"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Marks a request in progress from its head until its response body is dropped.
#[derive(Debug)]
pub(crate) struct InProgress(Arc<ConnState>);

impl InProgress {
    fn start(state: &Arc<ConnState>) -> Self {
        state.started.fetch_add(1, Ordering::AcqRel);
        state.requests.fetch_add(1, Ordering::AcqRel);
        Self(state.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// Per-connection adapter: tags requests with the peer, then calls the stack.
///
/// HTTP/1: the connection owns its copy of the stack and calls it in place. `call` is
/// synchronous and the future it returns borrows nothing, so the `RefCell` is never borrowed
/// twice. That saves cloning the whole stack (every layer's `Arc`s) and a `Oneshot` per
/// request. A stack that is not ready at once (none of ours: every layer delegates
/// `poll_ready` and the router is always ready) is driven to readiness as usual: the copy
/// that may hold a reservation goes with the request (a fresh clone stays behind), so no
/// reservation is stranded behind the no-op waker.
///
/// HTTP/2 keeps the usual clone and `Oneshot` per stream: the layers' `call` then runs in
/// the stream's own task, where a panic ends that stream, not every stream of the connection.
pub(crate) struct ConnService<S> {
    pub(crate) svc: RefCell<S>,
    pub(crate) info: ConnectionInfo,
    pub(crate) state: Arc<ConnState>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible> + Clone,
{
    type Response = Response<ConnBody<B>>;
    type Error = std::convert::Infallible;
    type Future = ConnFuture<S::Future, Pin<Box<Oneshot<S, Request<Incoming>>>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.info);
        if self.state.ambiguous_framing.swap(false, Ordering::AcqRel) {
            req.extensions_mut()
                .insert(palisade::proxy::AmbiguousFraming);
        }
        let connect = req.method() == http::Method::CONNECT;
        let guard = Some(InProgress::start(&self.state));
        let mut svc = self.svc.borrow_mut();
        let inner = if self.state.h2.load(Ordering::Relaxed) {
            future::Either::Right(Box::pin(svc.clone().oneshot(req)))
        } else {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match svc.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => future::Either::Left(svc.call(req)),
                Poll::Pending => {
                    let fresh = svc.clone();
                    let reserved = std::mem::replace(&mut *svc, fresh);
                    future::Either::Right(Box::pin(reserved.oneshot(req)))
                }
            }
        };
        ConnFuture {
            inner,
            guard,
            connect,
        }
    }
}

pin_project! {
    /// Moves the in-progress mark from the request into its response body.
    pub(crate) struct ConnFuture<F, G> {
        #[pin]
        inner: future::Either<F, G>,
        guard: Option<InProgress>,
        // A CONNECT answered 2xx is a tunnel, like a 101.
        connect: bool,
    }
}

impl<F, G, B> std::future::Future for ConnFuture<F, G>
where
    F: std::future::Future<Output = Result<Response<B>, std::convert::Infallible>>,
    G: std::future::Future<Output = Result<Response<B>, std::convert::Infallible>>,
{
    type Output = Result<Response<ConnBody<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(res) = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS
            || (*this.connect && res.status().is_success())
        {
            if let Some(g) = &guard {
                g.0.upgraded.store(true, Ordering::Release);
            }
        }
        Poll::Ready(Ok(res.map(|inner| ConnBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that ends the request's in-progress mark when hyper drops it.
    pub(crate) struct ConnBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InProgress>,
    }
}

impl<B: Body> Body for ConnBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

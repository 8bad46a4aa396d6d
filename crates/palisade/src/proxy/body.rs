//! Bodies on the way through: the upstream's response body (which returns its connection to
//! the pool when it ends) and a request body whose first frame was read ahead.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum_core::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use pin_project_lite::pin_project;

use super::upstream::Upstream;
use crate::body_end::see_frame;

/// The connection a response arrived on, to give back when its body has ended.
pub(crate) struct Lease {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) backend: usize,
    pub(crate) tx: SendRequest<Body>,
}

impl Lease {
    pub(crate) fn release(self) {
        self.upstream.backends[self.backend].checkin(self.tx);
    }
}

pin_project! {
    /// The upstream's response body, streamed. Read to its end, the connection goes back to
    /// the pool; dropped before (the client went away) or failed, the connection closes.
    pub(crate) struct UpstreamBody {
        #[pin]
        inner: Incoming,
        lease: Option<Lease>,
    }
}

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, lease: Lease) -> Self {
        let mut lease = Some(lease);
        if inner.is_end_stream() {
            // Nothing to read (204, 304, HEAD, `Content-Length: 0`): reusable now.
            if let Some(l) = lease.take() {
                l.release();
            }
        }
        Self { inner, lease }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match see_frame(&polled, this.inner.is_end_stream()).ended {
            Some(true) => {
                if let Some(l) = this.lease.take() {
                    l.release();
                }
            }
            // Failed midway: the connection is closed, not pooled.
            Some(false) => drop(this.lease.take()),
            None => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A request body with its first frame already read (to refuse broken framing before the
    /// upstream is contacted), then the rest streamed.
    pub(crate) struct Prepended {
        first: Option<Frame<Bytes>>,
        #[pin]
        rest: Body,
    }
}

impl Prepended {
    pub(crate) fn new(first: Frame<Bytes>, rest: Body) -> Self {
        Self {
            first: Some(first),
            rest,
        }
    }
}

impl HttpBody for Prepended {
    type Data = Bytes;
    type Error = axum_core::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(first));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
    }
}

pin_project! {
    /// A request body that says when it has been sent to the end, so the response timeout
    /// starts then: a long upload is bounded by the body idle timeout, not by
    /// `response_timeout`.
    pub(crate) struct SignalEnd {
        #[pin]
        inner: Body,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    }
}

impl SignalEnd {
    pub(crate) fn new(inner: Body, done: tokio::sync::oneshot::Sender<()>) -> Self {
        let mut done = Some(done);
        if inner.is_end_stream() {
            if let Some(d) = done.take() {
                let _ = d.send(());
            }
        }
        Self { inner, done }
    }
}

impl HttpBody for SignalEnd {
    type Data = Bytes;
    type Error = axum_core::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // Sent to the end, or failed (then hyper fails the request too).
        let ended = see_frame(&polled, this.inner.is_end_stream())
            .ended
            .is_some();
        if ended {
            if let Some(d) = this.done.take() {
                let _ = d.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

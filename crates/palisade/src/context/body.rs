use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::RequestContext;

pin_project! {
    /// A request body that counts the bytes the server reads into the request context
    /// ([`RequestContext::request_body_bytes`]). Layers that need the count (the access log,
    /// metrics) wrap the body; only the first wrapper of a request counts, so stacking them
    /// never counts a byte twice.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        ctx: Option<RequestContext>,
    }
}

impl<B> RequestBody<B> {
    /// Wraps `inner`, counting into `ctx` unless another wrapper of the same request does.
    pub fn new(inner: B, ctx: Option<&RequestContext>) -> Self {
        let ctx = ctx.filter(|c| c.claim_body_count()).cloned();
        Self { inner, ctx }
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(ctx)) = (&frame, this.ctx.as_ref()) {
            if let Some(data) = f.data_ref() {
                ctx.add_request_body_bytes(data.remaining() as u64);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
    /// ([`RequestContext::request_body_bytes`]).
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        ctx: RequestContext,
    }
}

impl<B> RequestBody<B> {
    pub(super) fn new(inner: B, ctx: RequestContext) -> Self {
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
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.ctx.add_request_body_bytes(data.remaining() as u64);
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

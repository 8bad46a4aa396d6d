use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body_end::see_frame;

use super::registry::Recording;

pin_project! {
    /// Response body of [`RecordMetrics`](super::RecordMetrics): counts the bytes sent and
    /// records the request when the body ends, fails or is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        recording: Option<Recording>,
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(inner: B, recording: Option<Recording>) -> Self {
        Self { inner, recording }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        let seen = see_frame(&frame, this.inner.is_end_stream());
        if let Some(r) = this.recording.as_mut() {
            r.response_bytes += seen.bytes;
        }
        // The request is recorded when the recording drops: now, if the body has ended.
        if seen.ended.is_some() {
            this.recording.take();
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

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body_end::see_frame;

use super::sink::{AccessLogSink, Line};
use crate::context::RequestContext;

/// What the access-log line needs, written when dropped.
pub(super) struct Entry {
    ctx: RequestContext,
    method: Method,
    uri: Uri,
    status: StatusCode,
    response_bytes: u64,
    completed: bool,
    sink: AccessLogSink,
}

impl Entry {
    pub(super) fn new(
        ctx: RequestContext,
        method: Method,
        uri: Uri,
        status: StatusCode,
        sink: AccessLogSink,
    ) -> Self {
        Self {
            ctx,
            method,
            uri,
            status,
            response_bytes: 0,
            completed: false,
            sink,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.sink.write(&Line {
            ctx: &self.ctx,
            method: &self.method,
            uri: &self.uri,
            status: self.status,
            response_bytes: self.response_bytes,
            completed: self.completed,
        });
    }
}

pin_project! {
    /// A response body that counts bytes sent and writes the access-log line when it ends or
    /// is dropped.
    pub struct AccessLogBody<B> {
        #[pin]
        inner: B,
        entry: Option<Entry>,
    }
}

impl<B: Body> AccessLogBody<B> {
    pub(super) fn new(inner: B, mut entry: Option<Entry>) -> Self {
        if inner.is_end_stream() {
            if let Some(e) = entry.as_mut() {
                e.completed = true;
            }
        }
        Self { inner, entry }
    }
}

impl<B: Body> Body for AccessLogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        let seen = see_frame(&frame, this.inner.is_end_stream());
        if let Some(e) = this.entry.as_mut() {
            e.response_bytes += seen.bytes;
        }
        // The line is written when the entry drops: now, if the body has ended.
        if let Some(completed) = seen.ended {
            if let Some(mut e) = this.entry.take() {
                e.completed = completed;
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

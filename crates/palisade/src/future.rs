//! The response future shared by layers that either reject early or run the inner service.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum_core::body::Body;
use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Either an early rejection (ready at once) or the inner service's future.
    pub struct RejectOr<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Reject { response: Option<Response<Body>> },
        Inner { #[pin] future: F },
    }
}

impl<F> RejectOr<F> {
    /// A rejection answered without calling the inner service.
    pub fn reject(response: Response<Body>) -> Self {
        Self {
            kind: Kind::Reject {
                response: Some(response),
            },
        }
    }

    /// The inner service's future.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }
}

impl<F, E> Future for RejectOr<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Reject { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Inner { future } => future.poll(cx),
        }
    }
}

//! The response futures: record the outcome when the inner future completes; a future
//! dropped before that drops its [`Permit`] unrecorded, which counts as cancelled.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum_core::body::Body;
use http::Response;
use pin_project_lite::pin_project;

use super::{BreakerError, BreakerOpen, Classify, Permit};

/// A permit and the classifier that decides what to record with it.
#[derive(Debug)]
pub(super) struct Guard<C> {
    pub(super) permit: Permit,
    pub(super) classifier: C,
}

impl<C> Guard<C> {
    fn finish<T, E>(self, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        self.permit.record(self.classifier.classify(result));
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Rejected { response: Option<Response<Body>> },
        Running { #[pin] future: F, guard: Option<Guard<C>> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn rejected(response: Response<Body>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }

    /// The inner future; `guard` is `None` for requests outside the route group.
    pub(super) fn running(future: F, guard: Option<Guard<C>>) -> Self {
        Self {
            kind: Kind::Running { future, guard },
        }
    }
}

impl<F, C, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<Body>, E>>,
    C: Classify<Response<Body>, E>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Running { future, guard } => {
                let result = ready!(future.poll(cx));
                if let Some(guard) = guard.take() {
                    guard.finish(&result);
                }
                Poll::Ready(result)
            }
        }
    }
}

pin_project! {
    /// The response future of [`ClientBreakerService`](super::ClientBreakerService).
    pub struct ClientResponseFuture<F, C> {
        #[pin]
        kind: ClientKind<F, C>,
    }
}

pin_project! {
    #[project = ClientKindProj]
    enum ClientKind<F, C> {
        Open { error: Option<BreakerOpen> },
        Running { #[pin] future: F, guard: Option<Guard<C>> },
    }
}

impl<F, C> ClientResponseFuture<F, C> {
    pub(super) fn open(error: BreakerOpen) -> Self {
        Self {
            kind: ClientKind::Open { error: Some(error) },
        }
    }

    pub(super) fn running(future: F, guard: Guard<C>) -> Self {
        Self {
            kind: ClientKind::Running {
                future,
                guard: Some(guard),
            },
        }
    }
}

impl<F, C, T, E> Future for ClientResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            ClientKindProj::Open { error } => Poll::Ready(Err(BreakerError::Open(
                error.take().expect("polled after completion"),
            ))),
            ClientKindProj::Running { future, guard } => {
                let result = ready!(future.poll(cx));
                if let Some(guard) = guard.take() {
                    guard.finish(&result);
                }
                Poll::Ready(result.map_err(BreakerError::Inner))
            }
        }
    }
}

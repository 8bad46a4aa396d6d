//! [`IdempotencyLayer`]: reserve, run once, store, replay. See the [module docs](super).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum_core::{body::Body, extract::FromRequestParts, response::Response as AxumResponse};
use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header, request::Parts,
};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tokio::task::AbortHandle;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    EntryKey, Fingerprinter, Idempotency, IdempotencyKey, KeyError, Lease, Mode, Reservation,
    StoredResponse,
};
use crate::{future::RejectOr, problem::Problem, rejection::Rejection};

/// `Idempotent-Replayed: true` on every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Applies [`Idempotency`]: its route rules, or one fixed mode for a single route. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    idempotency: Arc<Idempotency>,
    fixed: Option<Mode>,
}

impl IdempotencyLayer {
    /// Route rules; elsewhere the configured methods honour a key when one is sent.
    pub fn new(idempotency: Arc<Idempotency>) -> Self {
        Self {
            idempotency,
            fixed: None,
        }
    }

    /// For one route or router: the configured methods need a key (400 without one).
    pub fn required(idempotency: Arc<Idempotency>) -> Self {
        Self {
            idempotency,
            fixed: Some(Mode::Required),
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            idempotency: self.idempotency.clone(),
            fixed: self.fixed,
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Debug, Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    idempotency: Arc<Idempotency>,
    fixed: Option<Mode>,
}

/// The response future of [`IdempotencyService`]: the inner future untouched for requests
/// without a key, an immediate rejection, or the reservation flow.
pub type ResponseFuture<F, E> = RejectOr<Either<F, BoxFuture<'static, Result<Response<Body>, E>>>>;

impl<S, B> Service<Request<B>> for IdempotencyService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum_core::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // An outer idempotency layer already handles this request (a per-route layer inside
        // the router-wide one): it holds the key; running it again would meet its own lease.
        let mode = if req.extensions().get::<IdempotencyKey>().is_some() {
            None
        } else {
            self.idempotency
                .mode(self.fixed, req.method(), req.uri().path())
        };
        let key = match mode {
            None => None,
            Some(mode) => match (IdempotencyKey::from_headers(req.headers()), mode) {
                (Ok(Some(key)), _) => Some(key),
                (Ok(None), Mode::Optional) => None,
                (Ok(None), Mode::Required) => return RejectOr::reject(missing_key()),
                (Err(e), _) => return RejectOr::reject(invalid_key(e)),
            },
        };
        let Some(key) = key else {
            return RejectOr::inner(Either::Left(self.inner.call(req.map(Body::new))));
        };
        // The ready service goes with the request; a fresh clone stays here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let flow = run(inner, self.idempotency.clone(), key, req);
        RejectOr::inner(Either::Right(Box::pin(flow)))
    }
}

/// Reserve, then run, store and answer — or answer from the store.
async fn run<S, B>(
    mut inner: S,
    idem: Arc<Idempotency>,
    key: IdempotencyKey,
    req: Request<B>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum_core::BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, idem.max_request_bytes).await {
        Ok(b) => b,
        Err(res) => return Ok(res),
    };
    let mut fp = Fingerprinter::new(
        &parts.method,
        &parts.uri,
        parts.headers.get(header::CONTENT_TYPE),
    );
    fp.update(&body);
    let Some(entry) = idem.entry_key(&parts, &key) else {
        tracing::error!(
            "idempotency key without a client identity: RequestContextLayer must run before IdempotencyLayer"
        );
        return Ok(Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
            .with_detail("Idempotency keys cannot be scoped to a client here.")
            .into_response());
    };
    let lease = Lease::new(fp.finish());
    // From here this request may hold the lease (a reservation that timed out may still
    // have been written): dropping the holder releases it, owner-checked.
    let mut holder = Holder::new(idem.clone(), entry, lease);
    match idem.store.reserve(entry, lease, idem.lease).await {
        Ok(Reservation::Acquired(_)) => {}
        Ok(other) => {
            holder.done = true; // never ours
            return Ok(match other {
                Reservation::Completed(stored) => replay(&stored),
                Reservation::Mismatch => mismatch(),
                _ => in_flight(),
            });
        }
        Err(error) => {
            tracing::warn!(%error, "idempotency store unavailable; request refused");
            return Ok(store_unavailable());
        }
    }
    parts.extensions.insert(key);
    let call = inner.call(Request::from_parts(parts, Body::from(body)));
    let res = match holder.renewing(call).await {
        Ok(res) => res,
        Err(e) => {
            holder.release().await;
            return Err(e);
        }
    };
    if !storable(res.status()) {
        holder.release().await;
        return Ok(res);
    }
    // The handler has answered: storing the answer must not depend on this future being
    // polled to the end (a timeout or a client going away now must not free the key).
    match tokio::spawn(store_response(holder, res)).await {
        Ok(res) => Ok(res),
        Err(_) => Ok(Problem::new(StatusCode::INTERNAL_SERVER_ERROR).into_response()),
    }
}

/// Stores a storable response, then hands it on.
async fn store_response(mut holder: Holder, res: Response<Body>) -> Response<Body> {
    let (parts, body) = res.into_parts();
    let headers = replayable_headers(&parts.headers);
    let limit = holder.idem.max_response_bytes;
    let size = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    match size {
        // Known and too large to keep: record that it completed, then send it.
        Some(n) if n > limit as u64 => {
            let stored = StoredResponse {
                status: parts.status,
                headers,
                body: None,
            };
            holder.complete(stored).await;
            Response::from_parts(parts, body)
        }
        // A body of known, storable size (JSON, bytes): read it (within the limit, renewing
        // the lease if it is slow) and store it before answering, so an immediate retry is
        // already a replay.
        Some(_) => {
            let collect = Limited::new(body, limit).collect();
            match holder.renewing(collect).await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    let stored = StoredResponse {
                        status: parts.status,
                        headers,
                        body: Some(bytes.clone()),
                    };
                    holder.complete(stored).await;
                    Response::from_parts(parts, Body::from(bytes))
                }
                Err(error) => {
                    // A failed body is a failed response: like a 5xx, the key is freed.
                    tracing::warn!(%error, "response body failed; idempotency key released");
                    holder.release().await;
                    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                        .with_detail("The response body failed.")
                        .into_response()
                }
            }
        }
        // Streaming: send it as it comes, store it (or only its status, if it grows too
        // large) when it ends.
        None => {
            holder.spawn_renewal();
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let recording = RecordingBody {
                inner: body,
                buf: BytesMut::new(),
                limit,
                kept: true,
                left: declared,
                finish: Finish {
                    holder: Some(holder),
                    status: parts.status,
                    headers,
                },
            };
            Response::from_parts(parts, Body::new(recording))
        }
    }
}

/// Reads the request body, up to `limit` bytes: an announced or actual excess is a 413, a
/// failed read a 400.
async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Response<Body>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum_core::BoxError>,
{
    let too_large = || {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .with_detail(format!(
                "A request with an Idempotency-Key may have at most {limit} bytes of body."
            ))
            .with_rejection(Rejection::IdempotencyBodyTooLarge)
            .into_response()
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Problem::new(StatusCode::BAD_REQUEST)
            .with_detail("The request body could not be read.")
            .into_response()),
    }
}

/// Cached: 2xx, and 4xx except 408, 409, 425 and 429 (answers that depend on timing).
fn storable(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429))
}

/// Headers that belong to one exchange, not to the result: never replayed.
const PER_EXCHANGE: [&str; 16] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "date",
    "server-timing",
    "x-response-time",
    "content-length",
];

/// The headers to store: all but the per-exchange ones and those named in `Connection`.
fn replayable_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let named_in_connection = |name: &HeaderName| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
    };
    headers
        .iter()
        .filter(|(name, _)| {
            !PER_EXCHANGE.contains(&name.as_str())
                && *name != IDEMPOTENT_REPLAYED
                && !named_in_connection(name)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn replay(stored: &StoredResponse) -> Response<Body> {
    let Some(body) = &stored.body else {
        return Problem::new(StatusCode::CONFLICT)
            .with_title("Idempotency-Key response unavailable")
            .with_detail(format!(
                "The request with this key completed with status {}, but its response was \
                 not stored (too large, or not fully sent); it is not run again.",
                stored.status.as_u16()
            ))
            .with_extension("original-status", stored.status.as_u16().into())
            .with_rejection(Rejection::IdempotencyResponseUnavailable)
            .into_response();
    };
    let mut res = Response::new(Body::from(body.clone()));
    *res.status_mut() = stored.status;
    let headers = res.headers_mut();
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}

fn invalid_key(e: KeyError) -> Response<Body> {
    Problem::new(StatusCode::BAD_REQUEST)
        .with_title("Invalid Idempotency-Key")
        .with_detail(e.to_string())
        .with_rejection(Rejection::IdempotencyKeyInvalid)
        .into_response()
}

fn missing_key() -> Response<Body> {
    Problem::new(StatusCode::BAD_REQUEST)
        .with_title("Idempotency-Key is missing")
        .with_detail("This operation requires an Idempotency-Key header.")
        .with_rejection(Rejection::IdempotencyKeyMissing)
        .into_response()
}

/// `problem` with `Retry-After: 1`.
fn retry_in_a_second(problem: Problem) -> Response<Body> {
    let mut res = problem.into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

fn in_flight() -> Response<Body> {
    retry_in_a_second(
        Problem::new(StatusCode::CONFLICT)
            .with_title("A request with this Idempotency-Key is being processed")
            .with_detail("Retry after the first request completes to get its response.")
            .with_rejection(Rejection::IdempotencyInFlight),
    )
}

fn mismatch() -> Response<Body> {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
        .with_title("Idempotency-Key is already used")
        .with_detail("This key was used for a request with a different method, path, query, content type or body.")
        .with_rejection(Rejection::IdempotencyMismatch)
        .into_response()
}

fn store_unavailable() -> Response<Body> {
    retry_in_a_second(
        Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_title("Service Unavailable")
            .with_detail("Idempotency keys cannot be checked right now; retry shortly.")
            .with_rejection(Rejection::IdempotencyStoreUnavailable),
    )
}

/// Holds a lease while the request runs: renews it every third of its duration, and
/// releases it if dropped before completing (timeouts, cancelled requests). While the handler
/// runs, renewal happens in the request's own task ([`Holder::renewing`]); only a streamed
/// response, or a completion being retried, gets a renewal task of its own.
struct Holder {
    idem: Arc<Idempotency>,
    entry: EntryKey,
    lease: Lease,
    renewal: Option<AbortHandle>,
    done: bool,
}

/// Renews `lease` once; `false` when another request took the key over.
async fn renew_once(idem: &Idempotency, entry: EntryKey, lease: Lease) -> bool {
    match idem.store.renew(entry, lease, idem.lease).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!("idempotency lease lost (expired or taken over); no longer renewed");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "idempotency lease renewal failed");
            true
        }
    }
}

impl Holder {
    fn new(idem: Arc<Idempotency>, entry: EntryKey, lease: Lease) -> Self {
        Self {
            idem,
            entry,
            lease,
            renewal: None,
            done: false,
        }
    }

    /// Runs `fut`, renewing the lease every third of its duration until it finishes: no task,
    /// and for requests shorter than that, no store call.
    async fn renewing<F: Future>(&self, fut: F) -> F::Output {
        let every = self.idem.lease / 3;
        let mut fut = std::pin::pin!(fut);
        let mut tick = std::pin::pin!(tokio::time::sleep(every));
        let mut renewal: Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
        let mut lost = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            while !lost {
                if let Some(r) = renewal.as_mut() {
                    lost = !ready!(r.as_mut().poll(cx));
                    renewal = None;
                    tick.as_mut().reset(tokio::time::Instant::now() + every);
                    continue;
                }
                ready!(tick.as_mut().poll(cx));
                renewal = Some(Box::pin(renew_once(&self.idem, self.entry, self.lease)));
            }
            Poll::Pending
        })
        .await
    }

    /// Renews the lease from a task of its own (for a streamed response).
    fn spawn_renewal(&mut self) {
        if self.renewal.is_some() {
            return;
        }
        let (idem, entry, lease) = (self.idem.clone(), self.entry, self.lease);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(idem.lease / 3).await;
                if !renew_once(&idem, entry, lease).await {
                    return;
                }
            }
        });
        self.renewal = Some(task.abort_handle());
    }

    fn stop_renewal(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }

    /// Frees the key so a retry runs. Finishes even if the caller's future is dropped.
    async fn release(mut self) {
        self.done = true;
        self.stop_renewal();
        let (idem, entry, lease) = (self.idem.clone(), self.entry, self.lease);
        let _ = tokio::spawn(async move { release(&idem, entry, lease).await }).await;
    }

    /// Stores the result. A store error is retried in the background (the lease is still
    /// renewed meanwhile) so the key does not fall free while the result is known.
    async fn complete(mut self, stored: StoredResponse) {
        self.done = true;
        let (idem, entry, lease) = (self.idem.clone(), self.entry, self.lease);
        let stored = Arc::new(stored);
        match idem
            .store
            .complete(entry, lease, stored.clone(), idem.ttl)
            .await
        {
            Ok(kept) => {
                self.stop_renewal();
                if !kept {
                    tracing::warn!(
                        "idempotency key taken over by another request; result not stored"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "storing an idempotent response failed; retrying");
                self.spawn_renewal();
                let renewal = self.renewal.take();
                tokio::spawn(async move {
                    let mut wait = Duration::from_millis(100);
                    for _ in 0..6 {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                        match idem
                            .store
                            .complete(entry, lease, stored.clone(), idem.ttl)
                            .await
                        {
                            Ok(_) => break,
                            Err(error) => {
                                tracing::warn!(%error, "storing an idempotent response failed")
                            }
                        }
                    }
                    if let Some(task) = renewal {
                        task.abort();
                    }
                });
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before an answer: the request was cancelled (timeout, client gone).
        self.stop_renewal();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (idem, entry, lease) = (self.idem.clone(), self.entry, self.lease);
            rt.spawn(async move { release(&idem, entry, lease).await });
        }
    }
}

async fn release(idem: &Idempotency, entry: EntryKey, lease: Lease) {
    if let Err(error) = idem.store.release(entry, lease).await {
        tracing::warn!(%error, "releasing an idempotency key failed; it frees itself when the lease expires");
    }
}

/// What a streamed response stores when it ends, or when it is dropped early.
struct Finish {
    holder: Option<Holder>,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Finish {
    fn finish(&mut self, body: Option<Bytes>) {
        let Some(holder) = self.holder.take() else {
            return;
        };
        let stored = StoredResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(holder.complete(stored));
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // The client stopped reading: the handler ran, so the key must not run again.
        self.finish(None);
    }
}

pin_project! {
    /// Passes a streamed response through, keeping a copy up to the limit.
    struct RecordingBody<B> {
        #[pin]
        inner: B,
        buf: BytesMut,
        limit: usize,
        kept: bool,
        // Bytes still to come when the response declared a `Content-Length`: servers stop
        // polling once that many were sent.
        left: Option<u64>,
        finish: Finish,
    }
}

impl<B> http_body::Body for RecordingBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if *this.kept && this.buf.len() + data.len() <= *this.limit {
                        this.buf.extend_from_slice(data);
                    } else if *this.kept {
                        *this.kept = false;
                        *this.buf = BytesMut::new();
                    }
                }
                if let (Some(left), Some(data)) = (this.left.as_mut(), f.data_ref()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                // Servers stop polling once the body says it has ended, or once the declared
                // length was sent.
                if this.inner.is_end_stream() || *this.left == Some(0) {
                    let body = this.kept.then(|| std::mem::take(this.buf).freeze());
                    this.finish.finish(body);
                }
            }
            Some(Err(_)) => this.finish.finish(None),
            None => {
                let body = this.kept.then(|| std::mem::take(this.buf).freeze());
                this.finish.finish(body);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The key a request runs under, for handlers behind [`IdempotencyLayer`]: the layer's
/// validated key, or the header parsed here. A missing or invalid key is a 400 problem.
impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AxumResponse;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(key) = parts.extensions.get::<IdempotencyKey>() {
            return Ok(key.clone());
        }
        match IdempotencyKey::from_headers(&parts.headers) {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(missing_key()),
            Err(e) => Err(invalid_key(e)),
        }
    }
}

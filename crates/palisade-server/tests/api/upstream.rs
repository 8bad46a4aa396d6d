//! A real upstream HTTP/1.1 server for the gateway tests (hyper, its own port) that records
//! what it receives:
//!
//! - `/slow?ms=N`: answers after N ms;
//! - `/big?bytes=N`: streams N bytes (64 KiB chunks);
//! - `/upload`: reads the body as it streams, answers `{"body_len": n}`;
//! - `/status/N`: answers status N;
//! - `/hop`: answers with hop-by-hop fields (`Connection: close, x-hop`, `X-Hop`, `Keep-Alive`);
//! - `/ws`: answers `101` to an upgrade, then echoes raw bytes;
//! - anything else: JSON `{method, path, body_len, port}` after reading the body.
//!
//! Every request head counts in [`Upstream::requests`] as it arrives, before any body.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    /// Path and query, as received.
    pub(crate) target: String,
    pub(crate) headers: HeaderMap,
}

#[derive(Default)]
struct State {
    requests: AtomicUsize,
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A running upstream; stops when dropped or by [`stop`](Self::stop).
pub(crate) struct Upstream {
    pub(crate) port: u16,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

type Out = BoxBody<Bytes, Infallible>;

impl Upstream {
    pub(crate) async fn start() -> Self {
        Self::start_on(0).await
    }

    /// On a given port (0: any), e.g. to come back where a stopped one was.
    pub(crate) async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let (stop, mut stopped) = watch::channel(false);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => break,
                };
                let Ok((io, _)) = accepted else { continue };
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = Arc::clone(&st);
                let mut stop_conn = stopped.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&st), port, req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
            // Dropping the set aborts every connection: a stopped upstream is gone.
            drop(conns);
        });
        Self { port, state, stop }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Request heads received so far.
    pub(crate) fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Every request seen, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes every connection.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Out> {
    let mut res = Response::new(Full::new(body.into()).boxed());
    *res.status_mut() = status;
    res
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn handle(
    state: Arc<State>,
    port: u16,
    mut req: Request<Incoming>,
) -> Result<Response<Out>, Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(String::new, ToString::to_string),
        headers: req.headers().clone(),
    });
    let q = query(&req);
    let method = req.method().to_string();
    // The route is the path after the gateway's prefix and any base path.
    let full_path = req.uri().path().to_owned();
    let path = full_path
        .trim_start_matches("/base")
        .trim_start_matches("/svc")
        .to_owned();
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut res = full(StatusCode::SWITCHING_PROTOCOLS, "");
        res.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        res.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(res);
    }
    if path == "/slow" {
        let ms = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(full(StatusCode::OK, "slow"));
    }
    if path == "/big" {
        let total: usize = q.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
        const CHUNK: usize = 64 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let chunks = stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
            let n = CHUNK.min(total - i * CHUNK);
            Ok::<_, Infallible>(http_body::Frame::data(chunk.slice(..n)))
        }));
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
        res.headers_mut()
            .insert("content-length", total.to_string().parse().unwrap());
        return Ok(res);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        return Ok(full(status.unwrap_or(StatusCode::BAD_REQUEST), "status"));
    }
    if path == "/hop" {
        let mut res = full(StatusCode::OK, "hop");
        let h = res.headers_mut();
        h.insert("connection", "x-hop".parse().unwrap());
        h.insert("x-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        return Ok(res);
    }
    // Read the body as it streams, keeping only its length.
    let mut body = req.into_body().into_data_stream();
    let mut len = 0usize;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => len += c.len(),
            Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "broken body")),
        }
    }
    let json =
        serde_json::json!({ "method": method, "path": full_path, "body_len": len, "port": port });
    let mut res = full(StatusCode::OK, json.to_string());
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(res)
}

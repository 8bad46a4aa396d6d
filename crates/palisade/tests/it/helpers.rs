use std::net::SocketAddr;

use axum_core::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use palisade::client_ip::ConnectionInfo;

/// A request from `peer` with the given headers.
pub(crate) fn request(path: &str, peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectionInfo {
        peer: peer.parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    req
}

pub(crate) async fn body_json<B>(res: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Serves `svc` over real HTTP/1.1 (hyper) on a free loopback port, for tests that depend on
/// how a server polls bodies. Runs until the test's runtime ends.
pub(crate) async fn serve<S>(svc: S) -> SocketAddr
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = hyper_util::service::TowerToHyperService::new(svc.map_request(
                    move |req: Request<hyper::body::Incoming>| {
                        let mut req = req.map(Body::new);
                        req.extensions_mut()
                            .insert(ConnectionInfo { peer, tls: false });
                        req
                    },
                ));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

/// Writes `raw` (a whole HTTP/1.1 request, ideally with `connection: close`) to `addr` and
/// returns everything the server sent back.
pub(crate) async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: ignore write errors.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

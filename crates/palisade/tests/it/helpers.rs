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

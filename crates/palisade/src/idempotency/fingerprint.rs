//! What makes two requests "the same" for one idempotency key.

use http::{HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};

/// SHA-256 over method, path, query, content type and body. Reusing a key with a different
/// fingerprint is refused (422), never replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// Builds a [`Fingerprint`] while the body streams through, chunk by chunk.
///
/// ```
/// use palisade::idempotency::Fingerprinter;
/// let uri: http::Uri = "/payments?dry_run=false".parse().unwrap();
/// let mut f = Fingerprinter::new(&http::Method::POST, &uri, None);
/// f.update(br#"{"amount": 1999}"#);
/// let a = f.finish();
/// let mut g = Fingerprinter::new(&http::Method::POST, &uri, None);
/// g.update(br#"{"amount": 2999}"#);
/// assert_ne!(a, g.finish());
/// ```
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    hash: Sha256,
    body_len: u64,
}

impl Fingerprinter {
    /// Starts with the request line and content type.
    pub fn new(method: &Method, uri: &Uri, content_type: Option<&HeaderValue>) -> Self {
        let mut hash = Sha256::new();
        super::hash_field(&mut hash, method.as_str().as_bytes());
        super::hash_field(&mut hash, uri.path().as_bytes());
        // `/p` and `/p?` are different requests.
        match uri.query() {
            Some(q) => {
                hash.update([1]);
                super::hash_field(&mut hash, q.as_bytes());
            }
            None => hash.update([0]),
        }
        super::hash_field(
            &mut hash,
            content_type.map_or(&b""[..], HeaderValue::as_bytes),
        );
        Self { hash, body_len: 0 }
    }

    /// Adds a chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
        self.body_len += chunk.len() as u64;
    }

    /// The fingerprint.
    pub fn finish(mut self) -> Fingerprint {
        self.hash.update(self.body_len.to_be_bytes());
        Fingerprint(self.hash.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(method: &Method, uri: &str, ct: Option<&str>, chunks: &[&[u8]]) -> Fingerprint {
        let ct = ct.map(|c| HeaderValue::from_str(c).unwrap());
        let mut f = Fingerprinter::new(method, &uri.parse().unwrap(), ct.as_ref());
        for c in chunks {
            f.update(c);
        }
        f.finish()
    }

    #[test]
    fn every_part_counts_and_chunking_does_not() {
        let base = fp(&Method::POST, "/p?a=1", Some("application/json"), &[b"{}"]);
        assert_eq!(
            base,
            fp(
                &Method::POST,
                "/p?a=1",
                Some("application/json"),
                &[b"{", b"}"]
            )
        );
        assert_ne!(
            base,
            fp(&Method::PATCH, "/p?a=1", Some("application/json"), &[b"{}"])
        );
        assert_ne!(
            base,
            fp(&Method::POST, "/q?a=1", Some("application/json"), &[b"{}"])
        );
        assert_ne!(
            base,
            fp(&Method::POST, "/p?a=2", Some("application/json"), &[b"{}"])
        );
        assert_ne!(
            base,
            fp(&Method::POST, "/p?a=1", Some("text/plain"), &[b"{}"])
        );
        assert_ne!(base, fp(&Method::POST, "/p?a=1", None, &[b"{}"]));
        assert_ne!(
            base,
            fp(&Method::POST, "/p?a=1", Some("application/json"), &[b"{ }"])
        );
        // An empty query is not no query.
        assert_ne!(
            fp(&Method::POST, "/p?", None, &[]),
            fp(&Method::POST, "/p", None, &[])
        );
    }
}

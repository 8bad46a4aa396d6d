//! One upstream URL: its keep-alive connection pool and its passive health.
//!
//! The pool is a per-URL LIFO of idle HTTP/1.1 connections (the most recently used one is
//! reused first, so a burst's extra connections age out at the bottom), behind a lock held
//! only to push or pop. A connection goes back when its response body has been read to the
//! end; one whose response was abandoned midway is closed instead.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum_core::body::Body;
use http::{HeaderValue, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ConfigError;

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// `connect_timeout` passed.
    Timeout,
    /// The TCP connect (or name lookup) failed.
    Io(io::Error),
    /// The connection opened but HTTP/1 could not start on it.
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("connect timed out"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
            Self::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// Pool settings of an upstream URL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

/// One upstream base URL. See the [module docs](self).
pub(crate) struct Backend {
    /// As configured, for logs.
    pub(crate) url: Box<str>,
    /// `host:port` to connect to.
    addr: Box<str>,
    /// The URL's authority, the `Host` the upstream gets by default.
    pub(crate) authority: HeaderValue,
    /// The base path without a trailing `/` (`""` for none).
    pub(crate) base_path: Box<str>,
    settings: PoolSettings,
    idle: Mutex<VecDeque<Idle>>,
    /// Consecutive failures; reset by a success.
    failures: AtomicU32,
    /// Out of the rotation until this many milliseconds after `epoch` (0: never ejected).
    ejected_until: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Parses `http://host[:port][/base]`; errors keyed by `key`.
    pub(crate) fn new(url: &str, settings: PoolSettings, key: &str) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::new(key, m);
        let uri: Uri = url
            .parse()
            .map_err(|e| err(format!("{url:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(err(format!(
                    "{url:?}: https upstreams are not supported yet; reach the upstream over \
                     http on a private network (or a TLS sidecar)"
                )));
            }
            _ => return Err(err(format!("{url:?} must start with http://"))),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| err(format!("{url:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(err(format!(
                "{url:?}: credentials in the URL are not supported"
            )));
        }
        if uri.query().is_some() {
            return Err(err(format!("{url:?}: a base URL cannot have a query")));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let addr = format!("{host}:{port}");
        Ok(Self {
            url: url.into(),
            addr: addr.into(),
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| err(format!("{url:?}: invalid host")))?,
            base_path: uri.path().trim_end_matches('/').into(),
            settings,
            idle: Mutex::new(VecDeque::new()),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A ready connection: a pooled one still open and fresh, else a new one.
    pub(crate) async fn checkout(&self) -> Result<SendRequest<Body>, ConnectError> {
        loop {
            let idle = self.lock().pop_back();
            let Some(mut idle) = idle else { break };
            if idle.tx.is_closed() || idle.since.elapsed() >= self.settings.idle_timeout {
                continue;
            }
            // Normally ready at once; a connection whose last response just ended may need a
            // moment for its task to get there.
            if idle.tx.ready().await.is_ok() {
                return Ok(idle.tx);
            }
        }
        self.connect().await
    }

    /// Gives a connection back after its response ended.
    pub(crate) fn checkin(&self, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        // The oldest connection expires first; drop it here rather than keep its socket.
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.settings.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.settings.max_idle {
            idle.push_back(Idle { tx, since: now });
        }
    }

    /// Idle connections held (for tests and metrics).
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    async fn connect(&self) -> Result<SendRequest<Body>, ConnectError> {
        let stream = tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(&*self.addr),
        )
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(upstream = %url, %error, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the URL is out of the rotation now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) > self.now_ms()
    }

    /// When the ejection ends (ms after the epoch); for choosing among ejected URLs.
    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Relaxed)
    }

    /// A connection failure or timeout. Returns `true` when this ejected the URL.
    pub(crate) fn record_failure(&self, max_failures: u32, eject_for: Duration) -> bool {
        let n = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        if n < max_failures {
            return false;
        }
        let now = self.now_ms();
        let until = now.saturating_add(u64::try_from(eject_for.as_millis()).unwrap_or(u64::MAX));
        let before = self.ejected_until.swap(until, Relaxed);
        before <= now
    }

    /// A response arrived: the failure count starts over.
    pub(crate) fn record_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            max_idle: 4,
        }
    }

    #[test]
    fn base_urls_are_parsed_into_address_authority_and_base_path() {
        let b = Backend::new("http://127.0.0.1:8000/api/v1/", settings(), "urls[0]").unwrap();
        assert_eq!(&*b.addr, "127.0.0.1:8000");
        assert_eq!(b.authority, "127.0.0.1:8000");
        assert_eq!(&*b.base_path, "/api/v1");
        let b = Backend::new("http://svc.internal", settings(), "urls[0]").unwrap();
        assert_eq!(&*b.addr, "svc.internal:80");
        assert_eq!(&*b.base_path, "");
    }

    #[test]
    fn unsupported_urls_are_config_errors_naming_the_key() {
        for url in [
            "https://x",
            "ftp://x",
            "localhost:80",
            "http://u:p@x",
            "http://x/?q=1",
        ] {
            let e = Backend::new(url, settings(), "urls[1]").unwrap_err();
            assert_eq!(e.key, "urls[1]", "{url}");
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let b = Backend::new("http://127.0.0.1:1", settings(), "urls[0]").unwrap();
        let eject = Duration::from_secs(60);
        assert!(!b.record_failure(3, eject));
        assert!(!b.record_failure(3, eject));
        b.record_success();
        assert!(!b.record_failure(3, eject));
        assert!(!b.record_failure(3, eject));
        assert!(!b.is_ejected());
        assert!(b.record_failure(3, eject), "the third in a row ejects");
        assert!(b.is_ejected());
        assert!(
            !b.record_failure(3, eject),
            "already ejected: not a new ejection"
        );
    }
}

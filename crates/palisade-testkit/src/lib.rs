//! Test-only helpers shared by the workspace's integration tests: real servers, started on a
//! free loopback port for one test and killed when dropped, and real files (a MaxMind DB
//! writer, [`mmdb`]) removed when dropped. Nothing is mocked.
//!
//! A missing binary is a test failure whose message says how to install it (`scripts/test`
//! installs everything the suite needs); tests never skip silently.

pub mod jwt;
pub mod mmdb;
mod redis;
mod relay;

pub use redis::{RedisCluster, RedisServer};
pub use relay::TcpRelay;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A chunked (`Transfer-Encoding: chunked`) HTTP/1.1 body of `total` bytes of `x`, in
/// 64 KiB chunks, with the final zero-length chunk.
pub fn chunked_body(total: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(total + total / 1000 + 16);
    let mut left = total;
    while left > 0 {
        let n = left.min(64 * 1024);
        body.extend(format!("{n:x}\r\n").into_bytes());
        body.extend(std::iter::repeat_n(b'x', n));
        body.extend(b"\r\n");
        left -= n;
    }
    body.extend(b"0\r\n\r\n");
    body
}

/// A path in the system temp directory, unique to this process and call, removed (if it
/// exists) when dropped. The file itself is not created.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A fresh path ending in `suffix` (`".mmdb"`).
    pub fn new(suffix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "palisade-tempfile-{}-{n}-{nanos}{suffix}",
            std::process::id()
        );
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

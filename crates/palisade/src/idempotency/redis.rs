//! The Redis idempotency store: entries shared by every instance, one round trip per
//! operation.
//!
//! Each entry is one Redis string at `<prefix><64 hex digits of the scope's SHA-256>`
//! (default prefix `palisade:idem:`), with a `PX` expiry: the lease duration while a request
//! runs, the TTL (default 24 h) once it completed. One Lua script does every operation
//! atomically: *reserve* is `SET … PX` when the key is absent (the `SET NX PX` of the seeds)
//! and otherwise answers the entry's state, comparing fingerprints on the server; *renew*,
//! *complete* and *release* compare the owner token first, so a stale owner never
//! overwrites a newer owner's lease or result. A request that completes costs two round
//! trips (reserve, complete); a replay, a conflict or a mismatch one. Works on a single
//! endpoint and on Redis Cluster (one key per operation). Operations that do not finish
//! within the store timeout fail (the layer answers 503 and runs nothing).
//!
//! Values: a lease is `L` + fingerprint (32 bytes) + owner (16 bytes); a completed entry is
//! `C` + fingerprint + status (2 bytes) + header count (2) + per header name length (2),
//! name, value length (4), value + a body flag (1) + body length (4) and body.
//!
//! ```no_run
//! use std::time::Duration;
//! use palisade::{idempotency::redis::RedisStore, redis_connection::RedisConnection};
//!
//! # fn build() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisConnection::open("redis://127.0.0.1:6379", false)?;
//! let store = RedisStore::new(&redis, "palisade:idem:", Duration::from_millis(500))?;
//! # let _ = store; Ok(()) }
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use redis::{Script, Value};

use super::{
    Fingerprint,
    store::{
        EntryKey, IdempotencyStore, Lease, Reservation, StoreError, StoreFuture, StoredResponse,
    },
};
use crate::{error::ConfigError, redis_connection::RedisConnection};

/// The Redis-backed [`IdempotencyStore`]. See the [module docs](self). Cheap to share.
#[derive(Clone)]
pub struct RedisStore(Arc<Inner>);

struct Inner {
    redis: RedisConnection,
    script: Script,
    prefix: Box<str>,
    timeout: Duration,
    errors: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.0.prefix)
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

/// What the script answers.
enum Reply {
    Int(i64),
    Entry(Vec<u8>),
}

impl RedisStore {
    /// A store on `redis` with keys under `prefix`; every operation gives up after
    /// `timeout`.
    pub fn new(
        redis: &RedisConnection,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new("store_timeout", "must be greater than 0s"));
        }
        Ok(Self(Arc::new(Inner {
            redis: redis.clone(),
            script: Script::new(SCRIPT),
            prefix: prefix.into(),
            timeout,
            errors: AtomicU64::new(0),
        })))
    }

    /// Operations Redis failed to answer (error or timeout) since the store was built; each
    /// one answered its request with a 503.
    pub fn errors(&self) -> u64 {
        self.0.errors.load(Ordering::Relaxed)
    }

    /// [`invoke`](Self::invoke), counting failures.
    async fn call(
        self,
        op: &'static str,
        key: EntryKey,
        lease: Lease,
        ms: u64,
        value: Option<Vec<u8>>,
    ) -> Result<Reply, StoreError> {
        let inner = self.0.clone();
        let result = self.invoke(op, key, lease, ms, value).await;
        if result.is_err() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// One script call (one round trip): `op` on `key` as `lease`'s holder.
    async fn invoke(
        self,
        op: &'static str,
        key: EntryKey,
        lease: Lease,
        ms: u64,
        value: Option<Vec<u8>>,
    ) -> Result<Reply, StoreError> {
        let inner = &self.0;
        let mut name = String::with_capacity(inner.prefix.len() + 64);
        name.push_str(&inner.prefix);
        super::push_hex(&mut name, &key.0);
        let mut invocation = inner.script.key(name);
        invocation.arg(op).arg(encode_lease(&lease)).arg(ms.max(1));
        if let Some(v) = value {
            invocation.arg(v);
        }
        let run = inner.redis.invoke(&invocation);
        let value = match tokio::time::timeout(inner.timeout, run).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(StoreError(format!("redis: {e}").into())),
            Err(_) => {
                let within = humantime::format_duration(inner.timeout);
                return Err(StoreError(
                    format!("redis: no answer within {within}").into(),
                ));
            }
        };
        match value {
            Value::Int(n) => Ok(Reply::Int(n)),
            Value::BulkString(b) => Ok(Reply::Entry(b)),
            other => Err(StoreError(
                format!("redis: unexpected script reply {other:?}").into(),
            )),
        }
    }

    /// A call answering 1 (done) or 0 (another owner).
    fn call_bool(
        &self,
        op: &'static str,
        key: EntryKey,
        lease: Lease,
        ms: u64,
        value: Option<Vec<u8>>,
    ) -> StoreFuture<bool> {
        let call = self.clone().call(op, key, lease, ms, value);
        Box::pin(async move {
            match call.await? {
                Reply::Int(n) => Ok(n == 1),
                Reply::Entry(_) => Err(StoreError("redis: unexpected script reply".into())),
            }
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl IdempotencyStore for RedisStore {
    fn reserve(
        &self,
        key: EntryKey,
        lease: Lease,
        lease_for: Duration,
    ) -> StoreFuture<Reservation> {
        let call = self.clone().call("r", key, lease, millis(lease_for), None);
        Box::pin(async move {
            match call.await? {
                Reply::Int(0) => Ok(Reservation::Acquired(lease)),
                Reply::Int(1) => Ok(Reservation::Mismatch),
                Reply::Int(2) => Ok(Reservation::InFlight),
                Reply::Entry(bytes) => decode_completed(&bytes)
                    .map(|(_, r)| Reservation::Completed(Arc::new(r)))
                    .ok_or_else(|| StoreError("redis: undecodable idempotency entry".into())),
                Reply::Int(n) => Err(StoreError(
                    format!("redis: unexpected script reply {n}").into(),
                )),
            }
        })
    }

    fn renew(&self, key: EntryKey, lease: Lease, lease_for: Duration) -> StoreFuture<bool> {
        self.call_bool("e", key, lease, millis(lease_for), None)
    }

    fn complete(
        &self,
        key: EntryKey,
        lease: Lease,
        response: Arc<StoredResponse>,
        ttl: Duration,
    ) -> StoreFuture<bool> {
        let value = encode_completed(lease.fingerprint(), &response);
        self.call_bool("c", key, lease, millis(ttl), Some(value))
    }

    fn release(&self, key: EntryKey, lease: Lease) -> StoreFuture<bool> {
        self.call_bool("x", key, lease, 1, None)
    }
}

/// `L` + fingerprint + owner.
fn encode_lease(lease: &Lease) -> Vec<u8> {
    let mut v = Vec::with_capacity(49);
    v.push(b'L');
    v.extend_from_slice(&lease.fingerprint().0);
    v.extend_from_slice(&lease.owner().to_be_bytes());
    v
}

/// `C` + fingerprint + status + headers + body flag + body.
pub(crate) fn encode_completed(fp: &Fingerprint, r: &StoredResponse) -> Vec<u8> {
    let mut v = BytesMut::with_capacity(r.size() + 40);
    v.put_u8(b'C');
    v.put_slice(&fp.0);
    v.put_u16(r.status.as_u16());
    v.put_u16(r.headers.len() as u16);
    for (name, value) in &r.headers {
        v.put_u16(name.as_str().len() as u16);
        v.put_slice(name.as_str().as_bytes());
        v.put_u32(value.len() as u32);
        v.put_slice(value.as_bytes());
    }
    match &r.body {
        Some(body) => {
            v.put_u8(1);
            v.put_u32(body.len() as u32);
            v.put_slice(body);
        }
        None => v.put_u8(0),
    }
    v.to_vec()
}

/// The inverse of [`encode_completed`]; `None` for anything malformed.
pub(crate) fn decode_completed(bytes: &[u8]) -> Option<(Fingerprint, StoredResponse)> {
    let mut b = bytes;
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        (b.remaining() >= n).then(|| {
            let v = b[..n].to_vec();
            b.advance(n);
            v
        })
    };
    if b.remaining() < 1 + 32 + 4 || b.get_u8() != b'C' {
        return None;
    }
    let fp = Fingerprint(take(&mut b, 32)?.try_into().ok()?);
    let status = StatusCode::from_u16(b.get_u16()).ok()?;
    let count = b.get_u16() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16() as usize;
        let name = HeaderName::from_bytes(&take(&mut b, n)?).ok()?;
        if b.remaining() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        let value = HeaderValue::from_bytes(&take(&mut b, n)?).ok()?;
        headers.push((name, value));
    }
    if b.remaining() < 1 {
        return None;
    }
    let body = match b.get_u8() {
        1 if b.remaining() >= 4 => {
            let n = b.get_u32() as usize;
            (b.remaining() == n).then(|| Bytes::copy_from_slice(b))?
        }
        0 if b.is_empty() => {
            return Some((
                fp,
                StoredResponse {
                    status,
                    headers,
                    body: None,
                },
            ));
        }
        _ => return None,
    };
    let body = Some(body);
    Some((
        fp,
        StoredResponse {
            status,
            headers,
            body,
        },
    ))
}

/// Every operation, atomically. ARGV: op, lease value, milliseconds, [completed value].
/// Reserve answers 0 (acquired), 1 (fingerprint mismatch), 2 (in flight) or the completed
/// value; the others answer 1 (done) or 0 (another owner holds the entry). Renew needs the
/// caller's own live lease; complete and release also act on a vanished entry (an expired
/// lease nobody else took).
const SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
local op = ARGV[1]
if op == 'r' then
  if not v then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 0
  end
  if string.sub(v, 2, 33) ~= string.sub(ARGV[2], 2, 33) then return 1 end
  if string.sub(v, 1, 1) == 'L' then return 2 end
  return v
end
if op == 'e' then
  if v ~= ARGV[2] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if v and v ~= ARGV[2] then return 0 end
if op == 'c' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
elseif v then
  redis.call('DEL', KEYS[1])
end
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_entries_round_trip_and_garbage_is_refused() {
        let fp = Fingerprint([7; 32]);
        for body in [
            Some(Bytes::from_static(b"{\"id\":1}")),
            Some(Bytes::new()),
            None,
        ] {
            let r = StoredResponse {
                status: StatusCode::CREATED,
                headers: vec![
                    (
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("application/json"),
                    ),
                    (
                        HeaderName::from_static("location"),
                        HeaderValue::from_static("/orders/1"),
                    ),
                ],
                body,
            };
            let bytes = encode_completed(&fp, &r);
            assert_eq!(decode_completed(&bytes), Some((fp, r)));
            for cut in 0..bytes.len() {
                assert_eq!(decode_completed(&bytes[..cut]), None, "{cut}");
            }
        }
        assert_eq!(decode_completed(b"L"), None);
    }
}

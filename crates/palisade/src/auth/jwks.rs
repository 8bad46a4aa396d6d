//! A JSON Web Key Set, fetched by the caller's [`JwksFetch`] and cached: refreshed in the
//! background when older than `jwks_refresh`, and at once (at most every `jwks_cooldown`)
//! when a token names a key id it does not know, which is how key rotation shows up.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    DecodingKey,
    jwk::{JwkSet, PublicKeyUse},
};

use super::JwtAlgorithm;

/// Fetches the JWKS document (the bytes of its JSON). The library does no HTTP of its own:
/// the server passes an HTTPS client; tests pass a closure.
///
/// ```
/// use std::sync::Arc;
/// use palisade::auth::JwksFetch;
///
/// let fetch: Arc<dyn JwksFetch> = Arc::new(|| async { Ok(br#"{"keys":[]}"#.to_vec()) });
/// # let _ = fetch;
/// ```
pub trait JwksFetch: Send + Sync + 'static {
    /// The document, or why it could not be had (logged; never contains credentials).
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'static>>;
}

impl<F, Fut> JwksFetch for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send + 'static,
{
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'static>> {
        Box::pin(self())
    }
}

/// The longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Keys by `kid`; a key published without one is stored under `""`.
type KeyMap = HashMap<Box<str>, Arc<DecodingKey>>;

#[derive(Default)]
struct State {
    keys: Arc<KeyMap>,
    /// The last successful fetch.
    fetched_at: Option<Instant>,
    /// The last attempt, successful or not.
    attempted_at: Option<Instant>,
    background: bool,
}

/// Why no key could be chosen.
pub(crate) enum Missing {
    /// Fetch again, then ask again.
    Stale,
    /// No such key, and fetching again is not allowed yet.
    Unknown,
    /// Never fetched successfully, and fetching again is not allowed yet.
    Unavailable,
}

/// The cached key set. See the [module docs](self).
pub(crate) struct Jwks {
    algorithm: JwtAlgorithm,
    fetch: Arc<dyn JwksFetch>,
    refresh: Duration,
    cooldown: Duration,
    state: RwLock<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub(crate) fn new(
        algorithm: JwtAlgorithm,
        fetch: Arc<dyn JwksFetch>,
        refresh: Duration,
        cooldown: Duration,
    ) -> Self {
        Self {
            algorithm,
            fetch,
            refresh,
            cooldown,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key for `kid`, from the cache.
    pub(crate) fn key(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<DecodingKey>, Missing> {
        let now = Instant::now();
        let (found, never_fetched, may_fetch, old) = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            let found = match kid {
                Some(kid) => s.keys.get(kid).cloned(),
                // No `kid`: only unambiguous with a single key.
                None if s.keys.len() == 1 => s.keys.values().next().cloned(),
                None => None,
            };
            let may_fetch = s
                .attempted_at
                .is_none_or(|t| now.duration_since(t) >= self.cooldown);
            let old = s
                .fetched_at
                .is_none_or(|t| now.duration_since(t) >= self.refresh);
            (
                found,
                s.fetched_at.is_none(),
                may_fetch,
                old && !s.background,
            )
        };
        match found {
            Some(key) => {
                if old && may_fetch {
                    self.refresh_in_background();
                }
                Ok(key)
            }
            None if may_fetch => Err(Missing::Stale),
            None if never_fetched => Err(Missing::Unavailable),
            None => Err(Missing::Unknown),
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            if s.background {
                return;
            }
            s.background = true;
        }
        let this = self.clone();
        handle.spawn(async move {
            this.refresh().await;
            this.state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .background = false;
        });
    }

    /// Fetches the set unless another caller did within the cooldown; keeps the old keys when
    /// the fetch fails.
    pub(crate) async fn refresh(&self) {
        let _one = self.fetching.lock().await;
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if s.attempted_at
                .is_some_and(|t| now.duration_since(t) < self.cooldown)
            {
                return;
            }
            s.attempted_at = Some(now);
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch.fetch()).await;
        let doc = match fetched {
            Ok(Ok(doc)) => doc,
            Ok(Err(why)) => {
                tracing::warn!(error = %why, "auth: fetching the JWKS failed; keeping the keys we have");
                return;
            }
            Err(_) => {
                tracing::warn!("auth: fetching the JWKS timed out; keeping the keys we have");
                return;
            }
        };
        match self.parse(&doc) {
            Ok(keys) => {
                let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
                s.keys = Arc::new(keys);
                s.fetched_at = Some(Instant::now());
            }
            Err(why) => {
                tracing::warn!(error = %why, "auth: the JWKS is unusable; keeping the keys we have");
            }
        }
    }

    /// The usable signature keys for our algorithm, by `kid`.
    fn parse(&self, doc: &[u8]) -> Result<KeyMap, String> {
        let set: JwkSet = serde_json::from_slice(doc).map_err(|e| format!("not a JWKS: {e}"))?;
        let want = format!("{:?}", self.algorithm.algorithm());
        let mut keys = KeyMap::new();
        for jwk in &set.keys {
            let c = &jwk.common;
            if matches!(c.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            if c.key_algorithm.is_some_and(|a| format!("{a:?}") != want) {
                continue;
            }
            // A key of another family (an RSA or symmetric `oct` key when ES256 is pinned)
            // fails verification later; `from_jwk` refuses malformed keys here.
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(c.key_id.as_deref().unwrap_or("").into(), Arc::new(key));
            }
        }
        if keys.is_empty() {
            return Err(format!("no usable {want} signature key"));
        }
        Ok(keys)
    }
}

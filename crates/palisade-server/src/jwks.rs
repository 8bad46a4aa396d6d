//! The HTTPS client behind `auth.jwt.jwks_url`: fetches the key set for the auth layer,
//! bounded in time and size, no redirects.

use std::{sync::Arc, time::Duration};

use palisade::auth::JwksFetch;

/// The largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;

/// A fetcher for `url` (checked by the config: https, or http to loopback outside production).
pub fn fetcher(url: &str) -> Result<Arc<dyn JwksFetch>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
    let url: Arc<str> = url.into();
    Ok(Arc::new(move || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut res = client
                .get(&*url)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| format!("JWKS request failed: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("the JWKS endpoint answered {}", res.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = res
                .chunk()
                .await
                .map_err(|e| format!("reading the JWKS failed: {e}"))?
            {
                if body.len() + chunk.len() > MAX_BYTES {
                    return Err(format!("the JWKS is larger than {MAX_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        }
    }))
}

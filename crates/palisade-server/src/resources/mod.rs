//! The example resources of the API server: the patterns a user copies.
//!
//! - [`items`]: CRUD over SQL with `422` validation problems listing each field, cursor
//!   pagination with a `next` link, `ETag` / `If-None-Match` (`304`) and `If-Match` (`412`),
//!   scope checks in the handler.
//! - [`orders`]: a write that requires an `Idempotency-Key` (the seeds' payment example),
//!   backed by a unique index so one key makes one row even without the layer.

pub mod items;
pub mod orders;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};

use crate::{db::Database, routes::AppRoutes};

/// The `/api/v1` routes over `db`; accepted orders go to `jobs` when given.
pub fn routes(db: &Database, jobs: Option<&crate::jobs::Jobs>) -> AppRoutes {
    let routes = AppRoutes::new();
    let routes = items::routes(routes, db);
    orders::routes(routes, db, jobs)
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stored time as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(millis: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A new time-ordered id (UUIDv7).
pub(crate) fn new_id() -> String {
    palisade::request_id::RequestId::generate()
        .as_str()
        .to_owned()
}

/// The strong `ETag` of a version: `"v<version>"`.
pub(crate) fn etag(version: i64) -> HeaderValue {
    HeaderValue::try_from(format!("\"v{version}\"")).expect("digits")
}

/// Whether an `If-None-Match` / `If-Match` list (`*`, `"a", W/"b"`) names `tag` (weak
/// comparison, RFC 9110 §13.1.2, for `If-None-Match`; strong for `If-Match`).
pub(crate) fn matches_any(list: &HeaderValue, tag: &HeaderValue, weak: bool) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    let tag = tag.to_str().unwrap_or_default();
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(opaque) => weak && opaque == tag,
            None => t == tag,
        }
    })
}

/// The `If-Match` check of a write: `Ok` when absent or naming `version`.
pub(crate) fn check_if_match(
    headers: &HeaderMap,
    version: i64,
) -> Result<(), crate::error::ApiError> {
    match headers.get(header::IF_MATCH) {
        Some(list) if !matches_any(list, &etag(version), false) => {
            Err(crate::error::ApiError::PreconditionFailed)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_compare_as_rfc_9110_says() {
        let tag = etag(3);
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(matches_any(&v("\"v3\""), &tag, true));
        assert!(matches_any(&v("\"v1\", W/\"v3\""), &tag, true));
        assert!(!matches_any(&v("W/\"v3\""), &tag, false));
        assert!(matches_any(&v("*"), &tag, false));
        assert!(!matches_any(&v("\"v30\""), &tag, true));
    }

    #[test]
    fn stored_times_render_as_rfc_3339() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

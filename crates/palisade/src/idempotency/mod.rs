//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header): a retried `POST`/`PATCH`
//! with the same `Idempotency-Key` gets the first attempt's response instead of running
//! again.
//!
//! This module is being built in increments (issue 5). Landed so far: the key itself
//! ([`IdempotencyKey`]: token or quoted string, 1–255 printable ASCII characters, else a
//! [`KeyError`] for a 400 problem), the request [`Fingerprint`] (method, path, query,
//! content type, body), and [`deterministic_key`] for keys derived from an operation's
//! parameters. The reservation store, the layer and the server wiring follow.

mod fingerprint;
mod key;

pub use fingerprint::{Fingerprint, Fingerprinter};
pub use key::{IDEMPOTENCY_KEY, IdempotencyKey, KeyError, MAX_KEY_LEN, deterministic_key};

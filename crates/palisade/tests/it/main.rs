//! Integration tests for the palisade layers, driven through `tower::ServiceBuilder`.

mod helpers;
mod stack;

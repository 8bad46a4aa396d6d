//! Integration tests for the palisade layers.

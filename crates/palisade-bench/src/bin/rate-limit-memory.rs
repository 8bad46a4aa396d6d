//! Memory per tracked client in the in-memory rate-limit store, read as the growth of this
//! process's resident set (`VmRSS`) while one million clients are tracked:
//! `cargo run --release -p palisade-bench --bin rate-limit-memory [CLIENTS]`.
//!
//! RSS includes allocator slack and the freed-but-kept tables of map growth, so the figure
//! is an upper bound on what the entries need.

use std::sync::Arc;

use palisade::rate_limit::{KeyDigest, MemoryStore, RateLimitConfig, RateLimiter};

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

fn main() {
    let clients: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let store = Arc::new(MemoryStore::with_max_keys(2 * clients as usize));
    let limiter = RateLimiter::new(&RateLimitConfig::default(), store.clone()).expect("config");
    let policy = limiter.policy("default").expect("default policy").clone();
    let before = rss_bytes();
    for i in 0..clients {
        let digest = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        store.decide_now(&policy, KeyDigest::new(digest));
    }
    let bytes = rss_bytes().saturating_sub(before);
    println!(
        "{clients} clients, {} keys held: {:.1} MiB resident, {:.1} bytes per client",
        store.len(),
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / clients as f64
    );
}

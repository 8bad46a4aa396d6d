//! Memory per tracked client in the in-memory rate-limit store, read as the growth of this
//! process's resident set (`VmRSS`) while clients arrive:
//! `cargo run --release -p palisade-bench --bin rate-limit-memory [CLIENTS]`.
//!
//! Two runs of CLIENTS clients (default one million), each in a fresh store:
//! - the default policy (a client's state is idle a few milliseconds after its request, so
//!   slots are reused) in a store of CLIENTS slots;
//! - a policy that keeps every client live for an hour, in a store of 2 × CLIENTS slots (the
//!   sizing the store's docs advise), where full buckets make it forget some.
//!
//! The store's table is allocated once and its pages are touched as clients arrive, so RSS
//! growth is the table size once clients are spread over all of it.

use std::time::Duration;

use palisade::rate_limit::{
    Algorithm, KeyDigest, MemoryStore, PolicyConfig, QuotaConfig, RateLimitConfig, RateLimiter,
};

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

fn run(label: &str, config: &RateLimitConfig, clients: u64, max_keys: usize) {
    let before = rss_bytes();
    let store = std::sync::Arc::new(MemoryStore::with_max_keys(max_keys));
    let limiter = RateLimiter::new(config, store.clone()).expect("config");
    let policy = limiter.policy("default").expect("default policy").clone();
    for i in 0..clients {
        let digest = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        store.decide_now(&policy, KeyDigest::new(digest));
    }
    let bytes = rss_bytes().saturating_sub(before);
    println!(
        "{label}: {clients} clients in {max_keys} slots: {:.1} MiB resident, {:.1} bytes per \
         client; {} keys held, {} live clients forgotten",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / clients as f64,
        store.len(),
        store.forgotten(),
    );
}

fn main() {
    let clients: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    run(
        "default policy",
        &RateLimitConfig::default(),
        clients,
        clients as usize,
    );
    let mut live = RateLimitConfig::default();
    live.policies.insert(
        "default".into(),
        PolicyConfig::new(
            Algorithm::Gcra,
            [QuotaConfig::new(1, Duration::from_secs(3600))],
        ),
    );
    run("all live", &live, clients, 2 * clients as usize);
}

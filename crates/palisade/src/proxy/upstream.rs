//! An upstream: its URLs in round-robin with passive health, and its circuit breaker.

use std::{
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Duration,
};

use crate::{
    circuit_breaker::{CircuitBreaker, HttpClassifier},
    error::ConfigError,
};

use super::{
    UpstreamConfig,
    pool::{Backend, PoolSettings},
};

/// One `[[upstreams]]` entry, built.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: Box<str>,
    pub(crate) backends: Box<[Backend]>,
    next: AtomicUsize,
    pub(crate) breaker: Option<(CircuitBreaker, HttpClassifier)>,
    pub(crate) max_failures: u32,
    pub(crate) eject_for: Duration,
    pub(crate) retries: u32,
    pub(crate) response_timeout: Duration,
}

impl Upstream {
    pub(crate) fn new(config: &UpstreamConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let settings = PoolSettings {
            connect_timeout: config.connect_timeout.get(),
            idle_timeout: config.idle_timeout.get(),
            max_idle: config.max_idle,
        };
        let backends = config
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| Backend::new(url, settings, &format!("urls[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let name = config.display_name();
        let breaker = if config.breaker {
            let b = CircuitBreaker::new(format!("upstream {name}"), &config.circuit_breaker)
                .map_err(|e| ConfigError::new(format!("circuit_breaker.{}", e.key), e.message))?;
            let classifier = b.http_classifier();
            Some((b, classifier))
        } else {
            None
        };
        Ok(Self {
            name: name.into(),
            backends: backends.into(),
            next: AtomicUsize::new(0),
            breaker,
            max_failures: config.max_failures,
            eject_for: config.eject_for.get(),
            retries: config.retries,
            response_timeout: config.response_timeout.get(),
        })
    }

    /// The next URL in the rotation, skipping `tried` (a bit set of indices) and ejected
    /// URLs. When every untried URL is ejected, the one whose ejection ends first (better a
    /// try than a certain 502). `None` when every URL was tried.
    pub(crate) fn pick(&self, tried: u64) -> Option<usize> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Relaxed);
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let mut fallback: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !untried(i) {
                continue;
            }
            let b = &self.backends[i];
            if !b.is_ejected() {
                return Some(i);
            }
            if fallback.is_none_or(|f| b.ejected_until() < self.backends[f].ejected_until()) {
                fallback = Some(i);
            }
        }
        fallback
    }

    /// A connection failure or timeout at URL `i`: counts toward its ejection.
    pub(crate) fn failed(&self, i: usize) {
        let b = &self.backends[i];
        if b.record_failure(self.max_failures, self.eject_for) {
            tracing::warn!(
                upstream = %self.name,
                url = %b.url,
                failures = self.max_failures,
                eject_for = ?self.eject_for,
                "upstream URL ejected after consecutive failures"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(urls: &[&str]) -> Upstream {
        let mut c = UpstreamConfig::new("/x", urls.iter().copied());
        c.max_failures = 1;
        c.eject_for = crate::duration::ConfigDuration::secs(60);
        Upstream::new(&c).unwrap()
    }

    #[test]
    fn urls_take_turns_and_ejected_ones_are_skipped() {
        let u = upstream(&["http://a:1", "http://b:1", "http://c:1"]);
        let picks: Vec<usize> = (0..6).map(|_| u.pick(0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        u.failed(1);
        let picks: Vec<usize> = (0..4).map(|_| u.pick(0).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn tried_urls_are_skipped_and_all_ejected_still_gives_one() {
        let u = upstream(&["http://a:1", "http://b:1"]);
        assert_eq!(u.pick(0b01), Some(1));
        assert_eq!(u.pick(0b10), Some(0));
        assert_eq!(u.pick(0b11), None);
        u.failed(0);
        u.failed(1);
        assert!(u.pick(0).is_some(), "every URL ejected: one is still tried");
    }
}

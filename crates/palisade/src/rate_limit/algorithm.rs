//! The two algorithms as pure functions of (window, stored state, now): no clock, no store.
//!
//! Times are nanoseconds on the store's own clock. Every store (memory, and the Lua script
//! in [`redis`](super::redis), which mirrors these formulas in microseconds) answers the same
//! way for the same inputs; the unit tests below pin the behaviour with an explicit clock.
//!
//! - **GCRA** (generic cell rate algorithm, token-bucket semantics): one number per key, the
//!   theoretical arrival time (TAT). The steady rate is `limit / window`; `burst` extra
//!   requests may come at once (the bucket holds `burst + 1`), as in redis-cell.
//! - **Sliding-window counter**: the current and previous fixed windows' counts; the previous
//!   count is weighted by how much of it still overlaps the sliding window. Three numbers per
//!   key whatever the traffic, never a log of timestamps, and no double quota at a window
//!   edge as a fixed window allows.

/// The compiled form of one quota: everything a decision needs, computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowSpec {
    /// Requests per window.
    pub(crate) limit: u64,
    /// Window length, ns (≥ 1 ms).
    pub(crate) window: u64,
    /// GCRA: the emission interval `window / limit`, ns (≥ 1).
    pub(crate) interval: u64,
    /// GCRA: how far the TAT may run ahead of now, `interval * (burst + 1)`, ns.
    pub(crate) capacity: u64,
}

impl WindowSpec {
    pub(crate) fn new(limit: u64, window_ns: u64, burst: u64) -> Self {
        let interval = (window_ns / limit).max(1);
        Self {
            limit,
            window: window_ns,
            interval,
            capacity: interval.saturating_mul(burst + 1),
        }
    }
}

/// The state of one key under one window. `Default` is "never seen".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct State {
    /// GCRA: the TAT. Sliding window: the index of the current fixed window.
    pub(crate) a: u64,
    /// Sliding window: `previous << 32 | current`. GCRA: unused.
    pub(crate) b: u64,
}

/// The answer for one window at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether this window lets the request through.
    pub(crate) allowed: bool,
    /// Requests still allowed right now after this one (0 when rejected).
    pub(crate) remaining: u64,
    /// ns until the quota is fully restored (GCRA) or the current window ends (sliding).
    pub(crate) reset: u64,
    /// When rejected: ns until a request would be allowed. 0 when allowed.
    pub(crate) retry_after: u64,
    /// The state to store if every window of the policy allows the request.
    pub(crate) next: State,
    /// ns after `now` when `next` stops mattering (the key may be forgotten).
    pub(crate) ttl: u64,
}

/// GCRA. Rejections leave the state untouched.
pub(crate) fn gcra(w: &WindowSpec, state: State, now: u64) -> Verdict {
    let tat = state.a.max(now);
    let new_tat = tat.saturating_add(w.interval);
    let horizon = now.saturating_add(w.capacity);
    if new_tat > horizon {
        return Verdict {
            allowed: false,
            remaining: 0,
            reset: tat - now,
            retry_after: new_tat - horizon,
            next: state,
            ttl: tat - now,
        };
    }
    Verdict {
        allowed: true,
        remaining: (horizon - new_tat) / w.interval,
        reset: new_tat - now,
        retry_after: 0,
        next: State { a: new_tat, b: 0 },
        ttl: new_tat - now,
    }
}

/// Sliding-window counter. Rejections leave the state untouched.
pub(crate) fn sliding_window(w: &WindowSpec, state: State, now: u64) -> Verdict {
    let index = now / w.window;
    let (mut prev, mut curr) = ((state.b >> 32), (state.b & 0xffff_ffff));
    if state.a != index {
        (prev, curr) = if index == state.a + 1 {
            (curr, 0)
        } else {
            (0, 0)
        };
    }
    let elapsed = now - index * w.window;
    let left = w.window - elapsed;
    let window_end = left;
    // Weighted estimate, scaled by `window` to stay in integers:
    //   prev * left / window + curr + 1 <= limit
    let (limit, win) = (w.limit as u128, w.window as u128);
    let weighted = prev as u128 * left as u128;
    let used = weighted + (curr as u128 + 1) * win;
    if used <= limit * win && curr < u32::MAX as u64 {
        let remaining = (limit * win - used) / win;
        return Verdict {
            allowed: true,
            remaining: remaining as u64,
            reset: window_end,
            retry_after: 0,
            next: State {
                a: index,
                b: (prev << 32) | (curr + 1),
            },
            ttl: window_end + w.window,
        };
    }
    // Earliest instant the request fits: within this window if only the previous window's
    // weight is in the way, else in the next one (where `curr` becomes the weighted part).
    let retry_after = if curr < w.limit {
        earliest_fit(prev, curr, w) - elapsed
    } else {
        left + earliest_fit(curr, 0, w)
    };
    Verdict {
        allowed: false,
        remaining: 0,
        reset: window_end,
        retry_after,
        next: state,
        ttl: window_end + w.window,
    }
}

/// The smallest elapsed time `e` in a window where `weighted * (window - e) / window + curr + 1
/// <= limit`, given `curr + 1 <= limit`.
fn earliest_fit(weighted: u64, curr: u64, w: &WindowSpec) -> u64 {
    if weighted == 0 {
        return 0;
    }
    let room = (w.limit - curr - 1) as u128 * w.window as u128;
    let max_left = room / weighted as u128; // floor: the fit is never earlier than real
    w.window - (max_left as u64).min(w.window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Runs `n` requests at `now` through `f`, storing state like a store would.
    fn run(
        f: fn(&WindowSpec, State, u64) -> Verdict,
        w: &WindowSpec,
        state: &mut State,
        now: u64,
    ) -> Verdict {
        let v = f(w, *state, now);
        if v.allowed {
            *state = v.next;
        }
        v
    }

    #[test]
    fn gcra_matches_the_redis_cell_vector() {
        // burst 4 at 1 request/s: 5 immediately, remaining 4..0; the 6th waits 1 s.
        let w = WindowSpec::new(1, S, 4);
        let mut st = State::default();
        let t0 = 1_000 * S;
        for expected in [4, 3, 2, 1, 0] {
            let v = run(gcra, &w, &mut st, t0);
            assert!(v.allowed);
            assert_eq!(v.remaining, expected);
        }
        let v = run(gcra, &w, &mut st, t0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, S);
        // Rejections consume nothing: just before the retry time it is still refused,
        // exactly at it one request passes, then the next waits a full interval again.
        assert!(!run(gcra, &w, &mut st, t0 + S - 1).allowed);
        let v = run(gcra, &w, &mut st, t0 + S);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(run(gcra, &w, &mut st, t0 + S).retry_after, S);
    }

    #[test]
    fn gcra_refills_at_the_steady_rate_and_caps_at_the_bucket() {
        let w = WindowSpec::new(60, 60 * S, 9); // 1/s, bucket of 10
        let mut st = State::default();
        for _ in 0..10 {
            assert!(run(gcra, &w, &mut st, 0).allowed);
        }
        assert!(!run(gcra, &w, &mut st, 0).allowed);
        // After 3.5 s, three requests are back, not four.
        let t = 3 * S + S / 2;
        for _ in 0..3 {
            assert!(run(gcra, &w, &mut st, t).allowed);
        }
        let v = run(gcra, &w, &mut st, t);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, S / 2);
        // A long idle period refills to the bucket size only.
        let v = run(gcra, &w, &mut st, 1_000 * S);
        assert_eq!(v.remaining, 9);
        assert_eq!(v.reset, S);
    }

    #[test]
    fn sliding_window_weights_the_previous_window_at_the_edge() {
        // 10 per minute. A fixed window allows 10 at 0:59 and 10 more at 1:01.
        let w = WindowSpec::new(10, 60 * S, 0);
        let mut st = State::default();
        for i in 0..10 {
            let v = run(sliding_window, &w, &mut st, 59 * S);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
        }
        assert!(!run(sliding_window, &w, &mut st, 59 * S).allowed);
        // 1:01: the previous 10 still weigh 10 * 59/60 = 9.83, so nothing fits.
        let v = run(sliding_window, &w, &mut st, 61 * S);
        assert!(!v.allowed);
        // One request fits once the weight drops to 9: 10 * (60 - e) / 60 <= 9 → e >= 6 s.
        assert_eq!(v.retry_after, 5 * S);
        assert!(!run(sliding_window, &w, &mut st, 66 * S - 1).allowed);
        assert!(run(sliding_window, &w, &mut st, 66 * S).allowed);
        // 1:30: weight 5, one used in this window: 4 more fit, the fifth does not.
        for _ in 0..4 {
            assert!(run(sliding_window, &w, &mut st, 90 * S).allowed);
        }
        assert!(!run(sliding_window, &w, &mut st, 90 * S).allowed);
        // Two windows later everything is forgotten.
        let v = run(sliding_window, &w, &mut st, 240 * S);
        assert!(v.allowed);
        assert_eq!(v.remaining, 9);
    }

    #[test]
    fn sliding_window_full_current_window_waits_into_the_next() {
        let w = WindowSpec::new(4, 10 * S, 0);
        let mut st = State::default();
        for _ in 0..4 {
            assert!(run(sliding_window, &w, &mut st, 2 * S).allowed);
        }
        let v = run(sliding_window, &w, &mut st, 2 * S);
        assert!(!v.allowed);
        // Next window starts in 8 s; there 4 * (10 - e) / 10 + 1 <= 4 → e >= 2.5 s.
        assert_eq!(v.retry_after, 8 * S + 2 * S + S / 2);
        assert!(!run(sliding_window, &w, &mut st, 12 * S + S / 2 - 1).allowed);
        assert!(run(sliding_window, &w, &mut st, 12 * S + S / 2).allowed);
    }

    #[test]
    fn retry_after_is_never_early() {
        // Property check over many shapes: at `now + retry_after` the request passes, one ns
        // earlier it does not.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let limit = rng.u64(1..50);
            let window = rng.u64(1..120) * S / 10;
            let w = WindowSpec::new(limit, window, rng.u64(0..limit));
            for f in [
                gcra as fn(&WindowSpec, State, u64) -> Verdict,
                sliding_window,
            ] {
                let mut st = State::default();
                let mut now = rng.u64(0..1_000) * S;
                for _ in 0..rng.usize(1..200) {
                    now += rng.u64(0..window / 4 + 1);
                    let v = run(f, &w, &mut st, now);
                    if !v.allowed {
                        assert!(v.retry_after > 0);
                        assert!(!f(&w, st, now + v.retry_after - 1).allowed);
                        assert!(f(&w, st, now + v.retry_after).allowed);
                    }
                }
            }
        }
    }
}

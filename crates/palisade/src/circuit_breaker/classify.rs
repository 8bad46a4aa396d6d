//! What counts as a failure: [`Classify`] and its two defaults.

use http::{Response, StatusCode};

/// How one finished call counts. Slowness is measured separately, from the elapsed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Does not count at all, as if the call had been cancelled (a half-open probe gives
    /// its slot back).
    Ignored,
}

/// Decides the [`Outcome`] of a finished call from its result. See the
/// [module docs](super).
///
/// Closures `Fn(&Result<T, E>) -> Outcome` implement it:
///
/// ```
/// use palisade::circuit_breaker::{Classify, Outcome};
///
/// // Timeouts count; "not found" answers from a lookup service do not.
/// let classify = |r: &Result<Option<u32>, std::io::Error>| match r {
///     Ok(_) => Outcome::Success,
///     Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
///     Err(_) => Outcome::Failure,
/// };
/// assert_eq!(classify.classify(&Ok(None)), Outcome::Success);
/// ```
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Any `Err` is a failure, any `Ok` a success: the default around outgoing calls.
///
/// ```
/// use palisade::circuit_breaker::{Classify, ErrorClassifier, Outcome};
/// assert_eq!(ErrorClassifier.classify(&Err::<(), _>("refused")), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorClassifier;

impl<T, E> Classify<T, E> for ErrorClassifier {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// HTTP responses: an `Err` or a status in the failure set is a failure, anything else
/// (4xx included) a success. The default set is every 5xx; a breaker's config can replace
/// it (`failure_statuses`, see [`CircuitBreaker::http_classifier`](super::CircuitBreaker::http_classifier)).
///
/// ```
/// use http::{Response, StatusCode};
/// use palisade::circuit_breaker::{Classify, HttpClassifier, Outcome};
///
/// let status = |s: u16| Ok::<_, ()>(Response::builder().status(s).body(()).unwrap());
/// assert_eq!(HttpClassifier::default().classify(&status(502)), Outcome::Failure);
/// assert_eq!(HttpClassifier::default().classify(&status(404)), Outcome::Success);
/// let gateway_errors = HttpClassifier::new([StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT]);
/// assert_eq!(gateway_errors.classify(&status(500)), Outcome::Success);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    /// Bit `s - 100` for each failure status `s` in 100..=599.
    bits: [u64; 8],
}

impl HttpClassifier {
    /// Exactly these statuses are failures (besides `Err`). Statuses outside 100–599 are
    /// never failures.
    pub fn new(failures: impl IntoIterator<Item = StatusCode>) -> Self {
        let mut this = Self { bits: [0; 8] };
        for s in failures {
            this.insert(s.as_u16());
        }
        this
    }

    pub(super) fn from_codes(codes: &[u16]) -> Self {
        let mut this = Self { bits: [0; 8] };
        for &s in codes {
            this.insert(s);
        }
        this
    }

    fn insert(&mut self, status: u16) {
        if (100..=599).contains(&status) {
            let i = usize::from(status - 100);
            self.bits[i / 64] |= 1 << (i % 64);
        }
    }

    /// Whether `status` counts as a failure.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        if !(100..=599).contains(&s) {
            return false;
        }
        let i = usize::from(s - 100);
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }
}

impl Default for HttpClassifier {
    /// Every 5xx.
    fn default() -> Self {
        let mut this = Self { bits: [0; 8] };
        for s in 500..=599 {
            this.insert(s);
        }
        this
    }
}

impl std::fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failures: Vec<u16> = (100..=599u16)
            .filter(|&s| StatusCode::from_u16(s).is_ok_and(|s| self.is_failure(s)))
            .collect();
        f.debug_struct("HttpClassifier")
            .field("failures", &failures)
            .finish()
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(res) if !self.is_failure(res.status()) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}

//! W3C trace context (`traceparent`, `tracestate`): reading it from requests, writing it on
//! outgoing ones. Hand-written so the request path allocates nothing when no `tracestate`
//! comes in; the tests check it agrees with the SDK's `TraceContextPropagator`.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};

/// The W3C `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// The caller's span from a request's W3C headers, marked remote; `None` when `traceparent`
/// is absent, repeated or invalid (then `tracestate` is ignored too). An invalid
/// `tracestate` alone is dropped and the parent kept.
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert(
///     "traceparent",
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
/// );
/// let parent = palisade::otel::extract(&headers).unwrap();
/// assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(parent.is_sampled() && parent.is_remote());
/// ```
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(first.as_bytes())?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        trace_state(headers),
    ))
}

/// Writes `traceparent` for `span` (as the parent of the outgoing request) and its
/// `tracestate`, replacing any already there; removes a stale `tracestate` when the span has
/// none. Does nothing for an invalid span context.
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
///
/// let span = SpanContext::new(
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
///     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::NONE,
/// );
/// let mut headers = http::HeaderMap::new();
/// palisade::otel::inject(&span, &mut headers);
/// assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// ```
pub fn inject(span: &SpanContext, headers: &mut HeaderMap) {
    if !span.is_valid() {
        return;
    }
    let buf = format_traceparent(span);
    if let Ok(value) = HeaderValue::from_bytes(&buf) {
        headers.insert(TRACEPARENT, value);
    }
    let state = span.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(value) if !value.is_empty() => {
            headers.insert(TRACESTATE, value);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
}

/// The active span's context: the current OpenTelemetry span if one is entered (a child span
/// a handler started), else the current request's server span. `None` outside both.
///
/// ```
/// async fn handler() -> String {
///     // The trace id to show a user or attach to an error report.
///     palisade::otel::current_span_context()
///         .map(|span| span.trace_id().to_string())
///         .unwrap_or_default()
/// }
/// ```
pub fn current_span_context() -> Option<SpanContext> {
    with_active_span(SpanContext::clone)
}

/// Calls `f` with the active span's context (see [`current_span_context`]) without cloning.
pub(crate) fn with_active_span<R>(f: impl FnOnce(&SpanContext) -> R) -> Option<R> {
    let f = match Context::map_current(|cx| {
        if cx.has_active_span() {
            let span = cx.span();
            let sc = span.span_context();
            if sc.is_valid() {
                return Ok(f(sc));
            }
        }
        Err(f)
    }) {
        Ok(r) => return Some(r),
        Err(f) => f,
    };
    crate::context::with_current(|c| c.span_context().map(f)).flatten()
}

fn format_traceparent(span: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    use crate::text::HEX;
    let mut buf = [b'-'; TRACEPARENT_LEN];
    buf[0] = b'0';
    buf[1] = b'0';
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            buf[at + 2 * i] = HEX[usize::from(b >> 4)];
            buf[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    };
    put(3, &span.trace_id().to_bytes());
    put(36, &span.span_id().to_bytes());
    put(
        53,
        &[span.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()],
    );
    buf
}

/// `version-traceid-parentid-flags`, lowercase hex; versions above `00` may append fields.
fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let v = value.trim_ascii();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[..2])?;
    let extended = v.len() > TRACEPARENT_LEN;
    if version == 0xff || (version == 0 && extended) || (extended && v[55] != b'-') {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])?;
    let flags = hex(&v[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    // 16 and 2 hex digits: the narrowing casts below lose nothing.
    Some((
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes((span_id as u64).to_be_bytes()),
        // Only the sampled bit is defined for version 00.
        TraceFlags::new(flags as u8 & TraceFlags::SAMPLED.to_u8()),
    ))
}

/// Lowercase hex (at most 32 digits) to a number; `None` on any other byte.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

/// The `tracestate` list (several headers are one comma-joined list); empty when absent or
/// invalid.
fn trace_state(headers: &HeaderMap) -> TraceState {
    let mut values = headers.get_all(TRACESTATE).iter();
    let Some(first) = values.next() else {
        return TraceState::NONE;
    };
    let parsed = match values.next() {
        None => first.to_str().ok().map(str::parse),
        Some(second) => {
            let mut joined = String::new();
            for v in [first, second].into_iter().chain(values) {
                let Ok(s) = v.to_str() else {
                    return TraceState::NONE;
                };
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(s);
            }
            Some(joined.parse())
        }
    };
    parsed.and_then(Result::ok).unwrap_or(TraceState::NONE)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(traceparent: &[&str], tracestate: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in traceparent {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        for v in tracestate {
            h.append(TRACESTATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// What the SDK's propagator makes of one `traceparent` (and `tracestate`).
    fn sdk_extract(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
        if !tracestate.is_empty() {
            carrier.insert("tracestate".to_owned(), tracestate.to_owned());
        }
        let cx = TraceContextPropagator::new().extract(&carrier);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    #[test]
    fn the_parser_agrees_with_the_sdk_propagator() {
        let cases = [
            VALID,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-field",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
            "garbage",
        ];
        for tp in cases {
            for ts in ["", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "bad key=1"] {
                let states: &[&str] = if ts.is_empty() { &[] } else { &[ts] };
                let ours = extract(&headers(&[tp], states));
                let sdk = sdk_extract(tp, ts);
                assert_eq!(ours, sdk, "traceparent {tp:?}, tracestate {ts:?}");
            }
        }
    }

    #[test]
    fn a_repeated_traceparent_is_ignored() {
        assert!(extract(&headers(&[VALID], &[])).is_some());
        assert!(extract(&headers(&[VALID, VALID], &[])).is_none());
    }

    #[test]
    fn several_tracestate_headers_form_one_list() {
        let sc = extract(&headers(&[VALID], &["a=1", "b=2,c=3"])).unwrap();
        assert_eq!(sc.trace_state().header(), "a=1,b=2,c=3");
    }

    #[test]
    fn injection_writes_what_extraction_reads() {
        let sc = extract(&headers(&[VALID], &["congo=t61rcWkgMzE"])).unwrap();
        let mut out = headers(&[], &["stale=1"]);
        inject(&sc, &mut out);
        assert_eq!(out[TRACEPARENT], VALID);
        assert_eq!(out[TRACESTATE], "congo=t61rcWkgMzE");
        let plain = extract(&headers(&[VALID], &[])).unwrap();
        inject(&plain, &mut out);
        assert!(
            out.get(TRACESTATE).is_none(),
            "a stale tracestate is removed"
        );
    }

    #[test]
    fn an_invalid_span_context_injects_nothing() {
        let mut out = HeaderMap::new();
        inject(&SpanContext::empty_context(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn without_any_span_there_is_no_current_span_context() {
        assert!(current_span_context().is_none());
    }
}

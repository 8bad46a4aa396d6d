//! A `tracing-subscriber` event formatter that puts the request context into every line.
//!
//! [`ContextFormat`] writes JSON lines (one object per event) or human console lines. Every
//! event logged while a request is served carries `request_id` and `correlation_id` as
//! top-level members, and `client_ip` and `subject` (the authenticated caller) when known, read from the [current
//! context](crate::context::current) — no span is needed per request, which is where most of
//! a typical `TraceLayer` setup's cost goes. An event that records its own `request_id` (the
//! access log, written after the request's task is gone) keeps it.
//!
//! With the `otel` feature, lines written while a span is active also carry `trace_id` and
//! `span_id` (lowercase hex, as in `traceparent`): the OpenTelemetry span the code entered,
//! else the request's server span started by [`OtelLayer`](crate::otel::OtelLayer).
//!
//! JSON members: `ts` (RFC 3339 UTC, microseconds), `level`, `target`, `msg`, the event's
//! fields, then the context members, then `trace_id` and `span_id`. Span fields are not
//! repeated on each line.
//!
//! ```
//! use palisade::logging::ContextFormat;
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .event_format(ContextFormat::json())
//!     .with_writer(std::io::sink)
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || tracing::info!(user = "alice", "signed in"));
//! ```
//!
//! Never pass header maps or credentials as fields; the access log records none.

mod batch;

pub use batch::{BatchLine, BatchWriter, BatchWriterGuard};

use std::{
    fmt::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The event formatter. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct ContextFormat {
    json: bool,
    ansi: bool,
}

impl ContextFormat {
    /// One JSON object per line.
    pub fn json() -> Self {
        Self {
            json: true,
            ansi: false,
        }
    }

    /// Human-readable lines; `ansi` colours the level.
    pub fn console(ansi: bool) -> Self {
        Self { json: false, ansi }
    }
}

impl<S, N> FormatEvent<S, N> for ContextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if self.json {
            w.write_str("{\"ts\":\"")?;
            write_timestamp(&mut w)?;
            write!(w, "\",\"level\":\"{}\",\"target\":", meta.level())?;
            write_json_str(&mut w, meta.target())?;
            let mut v = JsonVisitor {
                w: &mut w,
                result: Ok(()),
                has_request_id: false,
            };
            event.record(&mut v);
            v.result?;
            if !v.has_request_id {
                crate::context::with_current(|c| -> fmt::Result {
                    write!(w, ",\"request_id\":\"{}\"", c.request_id())?;
                    write!(w, ",\"correlation_id\":\"{}\"", c.correlation_id())?;
                    if let Some(ip) = c.client_ip() {
                        write!(w, ",\"client_ip\":\"{ip}\"")?;
                    }
                    if let Some(subject) = c.subject() {
                        w.write_str(",\"subject\":")?;
                        write_json_str(&mut w, subject)?;
                    }
                    Ok(())
                })
                .transpose()?;
                #[cfg(feature = "otel")]
                crate::otel::with_active_span(|s| {
                    write!(
                        w,
                        ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                        s.trace_id(),
                        s.span_id()
                    )
                })
                .transpose()?;
            }
            w.write_str("}\n")
        } else {
            write_timestamp(&mut w)?;
            let level = meta.level();
            if self.ansi {
                let colour = match *level {
                    Level::ERROR => "31",
                    Level::WARN => "33",
                    Level::INFO => "32",
                    Level::DEBUG => "34",
                    Level::TRACE => "35",
                };
                write!(w, " \x1b[{colour}m{level:>5}\x1b[0m {}:", meta.target())?;
            } else {
                write!(w, " {level:>5} {}:", meta.target())?;
            }
            let mut v = ConsoleVisitor {
                w: &mut w,
                result: Ok(()),
                has_request_id: false,
            };
            event.record(&mut v);
            v.result?;
            if !v.has_request_id {
                crate::context::with_current(|c| write!(w, " request_id={}", c.request_id()))
                    .transpose()?;
                #[cfg(feature = "otel")]
                crate::otel::with_active_span(|s| {
                    write!(w, " trace_id={} span_id={}", s.trace_id(), s.span_id())
                })
                .transpose()?;
            }
            w.write_char('\n')
        }
    }
}

struct JsonVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
    has_request_id: bool,
}

impl JsonVisitor<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        let name = match field.name() {
            "message" => "msg",
            "request_id" => {
                self.has_request_id = true;
                "request_id"
            }
            n => n,
        };
        self.w.write_char(',')?;
        write_json_str(self.w, name)?;
        self.w.write_char(':')
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write_json_str(self.w, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.w, "{value}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.w, "{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                if value.is_finite() {
                    write!(self.w, "{value:.3}")
                } else {
                    self.w.write_str("null")
                }
            });
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.w, "{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                self.w.write_char('"')?;
                write!(JsonEscape(self.w), "{value:?}")?;
                self.w.write_char('"')
            });
        }
    }
}

struct ConsoleVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
    has_request_id: bool,
}

impl Visit for ConsoleVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if self.result.is_ok() {
                self.result = write!(self.w, " {value}");
            }
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = match field.name() {
            "message" => write!(self.w, " {value:?}"),
            name => {
                if name == "request_id" {
                    self.has_request_id = true;
                }
                write!(self.w, " {name}={value:?}")
            }
        };
    }
}

/// Escapes everything written through it as JSON string content.
struct JsonEscape<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for JsonEscape<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_json(s, |piece| self.0.write_str(piece))
    }
}

/// The one JSON string escaper: hands `push` the unescaped runs of `s` and the escape
/// sequences between them, in order.
fn escape_json<E>(s: &str, mut push: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    use crate::text::HEX;
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let mut unicode = *b"\\u0000";
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => {
                unicode[4] = HEX[(b >> 4) as usize];
                unicode[5] = HEX[(b & 0xf) as usize];
                std::str::from_utf8(&unicode).expect("ASCII")
            }
            _ => continue,
        };
        push(&s[start..i])?;
        push(escaped)?;
        start = i + 1;
    }
    push(&s[start..])
}

fn write_json_str(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscape(w).write_str(s)?;
    w.write_char('"')
}

/// Writes the current time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` without a date library.
fn write_timestamp(w: &mut Writer<'_>) -> fmt::Result {
    let ts = timestamp();
    w.write_str(std::str::from_utf8(&ts).unwrap_or_default())
}

/// The current UTC time as 27 ASCII bytes, `YYYY-MM-DDTHH:MM:SS.ffffffZ`. The date part is
/// computed once per second per thread.
pub(crate) fn timestamp() -> [u8; 27] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (cached_secs, mut prefix) = CACHE.get();
    if cached_secs != secs {
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let tod = secs % 86_400;
        let mut cursor = std::io::Cursor::new(&mut prefix[..]);
        let _ = std::io::Write::write_fmt(
            &mut cursor,
            format_args!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                tod / 3600,
                tod / 60 % 60,
                tod % 60
            ),
        );
        CACHE.set((secs, prefix));
    }
    let mut out = [0u8; 27];
    out[..20].copy_from_slice(&prefix);
    let mut micros = now.subsec_micros();
    for i in (20..26).rev() {
        out[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out[26] = b'Z';
    out
}

/// Appends `s` as JSON string content (no quotes) to `out`.
pub(crate) fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    let _ = escape_json::<std::convert::Infallible>(s, |piece| {
        out.extend_from_slice(piece.as_bytes());
        Ok(())
    });
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{context::RequestContext, request_id::RequestId};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: ContextFormat, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(format)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_carry_the_request_id_from_the_current_context() {
        let ctx = RequestContext::new(RequestId::parse("rid-1").unwrap(), None);
        let out = capture(ContextFormat::json(), || {
            ctx.sync_scope(|| tracing::info!(n = 3, ok = true, s = "q\"uote\n", "hello"));
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["correlation_id"], "rid-1");
        assert_eq!(v["msg"], "hello");
        assert_eq!(v["n"], 3);
        assert_eq!(v["ok"], true);
        assert_eq!(v["s"], "q\"uote\n");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn an_events_own_request_id_wins_and_is_not_duplicated() {
        let ctx = RequestContext::new(RequestId::parse("ctx").unwrap(), None);
        let out = capture(ContextFormat::json(), || {
            ctx.sync_scope(|| tracing::info!(request_id = "own", "x"));
        });
        assert_eq!(out.matches("request_id").count(), 1);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["request_id"], "own");
    }

    #[test]
    fn control_characters_in_debug_fields_are_escaped() {
        let out = capture(ContextFormat::json(), || {
            tracing::warn!(err = ?"a\u{1}b", "x");
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["err"], "\"a\\u{1}b\"");
    }

    #[test]
    fn console_lines_show_the_request_id() {
        let ctx = RequestContext::new(RequestId::parse("rid-2").unwrap(), None);
        let out = capture(ContextFormat::console(false), || {
            ctx.sync_scope(|| tracing::info!(k = 1, "msg"));
        });
        assert!(out.contains(" INFO "), "{out}");
        assert!(out.contains("msg k=1 request_id=rid-2"), "{out}");
    }

    #[cfg(feature = "otel")]
    #[test]
    fn lines_carry_the_trace_and_span_id_of_the_requests_span() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let ctx = RequestContext::new(RequestId::parse("rid-3").unwrap(), None);
        let without = capture(ContextFormat::json(), || {
            ctx.sync_scope(|| tracing::info!("before the span"));
        });
        assert!(!without.contains("trace_id"), "{without}");
        ctx.set_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ));
        let out = capture(ContextFormat::json(), || {
            ctx.sync_scope(|| tracing::info!("x"));
        });
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        let out = capture(ContextFormat::console(false), || {
            ctx.sync_scope(|| tracing::info!("x"));
        });
        assert!(
            out.contains(
                "request_id=rid-3 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7"
            ),
            "{out}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let ts = timestamp();
        let s = std::str::from_utf8(&ts).unwrap();
        assert_eq!(s.len(), 27);
        assert_eq!(&s[4..5], "-");
        assert_eq!(&s[10..11], "T");
        assert_eq!(&s[19..20], ".");
        assert!(s.ends_with('Z'));
        assert!(s.starts_with("20"));
    }

    #[test]
    fn json_escaping_into_bytes_matches_serde() {
        let input = "a\"b\\c\nd\u{1}e\u{7f}é";
        let mut out = Vec::new();
        escape_json_into(&mut out, input);
        let quoted = format!("\"{}\"", String::from_utf8(out).unwrap());
        let back: String = serde_json::from_str(&quoted).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn days_convert_to_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}

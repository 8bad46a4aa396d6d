use std::fmt::Write as _;

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (name it `…_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// Adds metric families to a scrape: the rate limiter's store, the load shedder, a breaker,
/// the process. Registered with [`Metrics::add_collector`](super::Metrics::add_collector);
/// runs on every scrape, never on the request path.
///
/// ```
/// use palisade::metrics::{Collector, Exposition, MetricKind};
///
/// struct QueueDepth;
/// impl Collector for QueueDepth {
///     fn collect(&self, out: &mut Exposition) {
///         out.family("jobs_queued", "Jobs waiting to run.", MetricKind::Gauge)
///             .sample(&[("queue", "email")], 3.0);
///     }
/// }
/// let mut out = Exposition::default();
/// QueueDepth.collect(&mut out);
/// assert!(out.as_str().contains("jobs_queued{queue=\"email\"} 3\n"));
/// ```
pub trait Collector: Send + Sync + 'static {
    /// Writes this collector's families into `out`.
    fn collect(&self, out: &mut Exposition);
}

impl<F: Fn(&mut Exposition) + Send + Sync + 'static> Collector for F {
    fn collect(&self, out: &mut Exposition) {
        self(out);
    }
}

/// A constant info gauge (value 1) whose labels carry facts: `palisade_build_info{version=..}`.
///
/// ```
/// use palisade::metrics::{Collector, Exposition, InfoMetric};
///
/// let info = InfoMetric::new("app_build_info", "Build facts.", [("version", "1.2.3")]);
/// let mut out = Exposition::default();
/// info.collect(&mut out);
/// assert!(out.as_str().contains("app_build_info{version=\"1.2.3\"} 1\n"));
/// ```
#[derive(Debug, Clone)]
pub struct InfoMetric {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
}

impl InfoMetric {
    /// An info gauge named `name` with these labels.
    pub fn new<I, K, V>(name: &str, help: &str, labels: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl Collector for InfoMetric {
    fn collect(&self, out: &mut Exposition) {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.family(&self.name, &self.help, MetricKind::Gauge)
            .sample(&labels, 1.0);
    }
}

/// The text being built for one scrape. Each family is written whole (`# HELP`, `# TYPE`,
/// then its samples), as the format requires.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family; add its samples with the returned writer.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> Family<'_> {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        Family {
            out: self,
            name: name.to_owned(),
        }
    }

    /// Starts a histogram family (`_bucket`, `_sum`, `_count` samples).
    pub(super) fn histogram(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} histogram");
    }

    /// Writes one sample line: `name{labels} value`.
    pub(super) fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_into(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The finished text.
    pub fn into_string(self) -> String {
        self.text
    }
}

/// Writes the samples of one family. See [`Exposition::family`].
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut Exposition,
    name: String,
}

impl Family<'_> {
    /// One sample with these labels (names are `[a-zA-Z_][a-zA-Z0-9_]*`; values are escaped).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.line(&self.name, labels, value);
        self
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers without a fraction; others in Rust's shortest round-trip form.
pub(super) fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.family("x_total", "X.", MetricKind::Counter)
            .sample(&[("route", "a\"b\\c\nd")], 1.0);
        assert!(
            out.as_str()
                .ends_with("x_total{route=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{}",
            out.as_str()
        );
    }

    #[test]
    fn values_print_as_integers_or_floats() {
        let mut s = String::new();
        for v in [3.0, 0.25, f64::INFINITY, 1e20] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "3 0.25 +Inf 100000000000000000000 ");
    }
}

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use axum_core::body::Body;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use super::{
    config::MetricsConfig,
    exposition::{Collector, Exposition, MetricKind, TEXT_FORMAT, write_value},
};
use crate::{context::RequestContext, error::ConfigError, problem::Problem, rejection::Rejection};

/// The `route` label of requests no declared or matched route template covers.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Route templates learnt from the router (not declared) beyond the declared ones, at most.
const MAX_LEARNT_ROUTES: usize = 256;

/// Method label values; anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

fn method_index(m: &Method) -> u8 {
    if *m == Method::GET {
        0
    } else if *m == Method::HEAD {
        1
    } else if *m == Method::POST {
        2
    } else if *m == Method::PUT {
        3
    } else if *m == Method::PATCH {
        4
    } else if *m == Method::DELETE {
        5
    } else if *m == Method::OPTIONS {
        6
    } else {
        7
    }
}

/// Statuses counted in fixed slots; others go to a small locked map (rare by nature).
const STATUSES: [u16; 46] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406,
    408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 425, 426, 428, 429, 431, 451, 499,
    500, 501, 502, 503, 504, 505, 507, 511,
];
const NO_SLOT: u8 = u8::MAX;
static STATUS_SLOT: [u8; 600] = {
    let mut t = [NO_SLOT; 600];
    let mut i = 0;
    while i < STATUSES.len() {
        t[STATUSES[i] as usize] = i as u8;
        i += 1;
    }
    t
};
/// Recorded for requests that ended before a response (the client went away): nginx's
/// "client closed request".
const CLIENT_CLOSED: u16 = 499;

/// Offsets of one cell's counters in its flat array.
#[derive(Debug)]
struct Layout {
    /// Duration bounds in nanoseconds.
    duration_ns: Box<[u64]>,
    /// Size bounds in bytes.
    size: Box<[u64]>,
    duration_at: usize,
    request_size_at: usize,
    response_size_at: usize,
    len: usize,
}

impl Layout {
    fn new(config: &MetricsConfig) -> Self {
        let duration_ns: Box<[u64]> = config
            .duration_buckets
            .iter()
            .map(|s| (s * 1e9).round() as u64)
            .collect();
        let size: Box<[u64]> = config.size_buckets.iter().map(|b| *b as u64).collect();
        // Per histogram: one slot per bound, one for +Inf, one for the sum.
        let duration_at = STATUSES.len();
        let request_size_at = duration_at + duration_ns.len() + 2;
        let response_size_at = request_size_at + size.len() + 2;
        let len = response_size_at + size.len() + 2;
        Self {
            duration_ns,
            size,
            duration_at,
            request_size_at,
            response_size_at,
            len,
        }
    }
}

/// The counters of one (route, method) pair.
struct Cell(Box<[AtomicU64]>);

impl Cell {
    fn new(len: usize) -> Self {
        Self((0..len).map(|_| AtomicU64::new(0)).collect())
    }

    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }

    /// Counts `value` in the histogram at `at` with `bounds`.
    fn observe(&self, at: usize, bounds: &[u64], value: u64) {
        let bucket = bounds.partition_point(|b| *b < value);
        self.add(at + bucket, 1);
        self.add(at + bounds.len() + 1, value);
    }
}

/// The registry behind [`Metrics`].
pub(super) struct Registry {
    matcher: matchit::Router<u16>,
    /// Labels by route slot: declared templates, then [`UNMATCHED_ROUTE`], then learnt ones.
    declared: Box<[Box<str>]>,
    learnt: RwLock<HashMap<Box<str>, u16>>,
    learnt_names: Box<[OnceLock<Box<str>>]>,
    layout: Layout,
    /// `slot * METHODS.len() + method`.
    cells: Box<[OnceLock<Cell>]>,
    other_statuses: Mutex<BTreeMap<(u16, u8, u16), u64>>,
    in_flight: AtomicI64,
    rejections: [AtomicU64; Rejection::ALL.len()],
    collectors: RwLock<Vec<Arc<dyn Collector>>>,
    token_digest: Option<[u8; 32]>,
}

/// The metrics registry: HTTP request metrics recorded by [`MetricsLayer`](super::MetricsLayer),
/// families added by [`Collector`]s, and the exposition. Cheap to clone (one `Arc`).
///
/// See the [module docs](super).
#[derive(Clone)]
pub struct Metrics(pub(super) Arc<Registry>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.0.declared)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for `config`, labelling requests by the declared route `templates`
    /// (`/items/{id}`, `/files/{*path}`, as given to the router). Requests that match none are
    /// labelled by the template the router matched, if any reached it (see the module docs),
    /// else [`UNMATCHED_ROUTE`].
    pub fn new<I, T>(config: &MetricsConfig, templates: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let templates: Vec<T> = templates.into_iter().collect();
        Self::with_labels(config, templates.iter().map(|t| (t.as_ref(), t.as_ref())))
    }

    /// Like [`new`](Self::new), with a label per template: several templates may share one
    /// label (a gateway prefix `/orders` and `/orders/{*path}` both count as
    /// `/orders/{*path}`). A template given twice keeps its first label.
    pub fn with_labels<'a, I>(config: &MetricsConfig, templates: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        config.validate()?;
        let mut matcher = matchit::Router::new();
        let mut declared: Vec<Box<str>> = Vec::new();
        let mut patterns: Vec<&str> = Vec::new();
        for (t, label) in templates {
            if patterns.contains(&t) {
                continue;
            }
            let slot = match declared.iter().position(|d| **d == *label) {
                Some(s) => s as u16,
                None => {
                    let slot = u16::try_from(declared.len())
                        .ok()
                        .filter(|s| usize::from(*s) < 4096)
                        .ok_or_else(|| {
                            ConfigError::new("routes", "at most 4096 route templates")
                        })?;
                    declared.push(label.into());
                    slot
                }
            };
            matcher
                .insert(t, slot)
                .map_err(|e| ConfigError::new("routes", format!("{t:?}: {e}")))?;
            patterns.push(t);
        }
        let slots = declared.len() + 1 + MAX_LEARNT_ROUTES;
        let layout = Layout::new(config);
        Ok(Self(Arc::new(Registry {
            matcher,
            declared: declared.into(),
            learnt: RwLock::default(),
            learnt_names: (0..MAX_LEARNT_ROUTES).map(|_| OnceLock::new()).collect(),
            layout,
            cells: (0..slots * METHODS.len())
                .map(|_| OnceLock::new())
                .collect(),
            other_statuses: Mutex::default(),
            in_flight: AtomicI64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            collectors: RwLock::default(),
            token_digest: config
                .token
                .as_ref()
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        })))
    }

    /// Adds a collector whose families join every scrape.
    pub fn add_collector(&self, collector: impl Collector) {
        self.0
            .collectors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(collector));
    }

    /// Requests being served now (between arrival and the end of the response body).
    pub fn in_flight(&self) -> i64 {
        self.0.in_flight.load(Relaxed)
    }

    /// The exposition in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        self.0.render_http(&mut out);
        let collectors = self
            .0
            .collectors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for c in collectors {
            c.collect(&mut out);
        }
        out.into_string()
    }

    /// Answers a scrape: the exposition, or a `401` problem when a token is configured and
    /// the request's `Authorization: Bearer` does not carry it (compared in constant time).
    pub fn scrape(&self, headers: &HeaderMap) -> Response<Body> {
        if let Some(expected) = &self.0.token_digest {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
            let ok = given.is_some_and(|g| {
                g.iter()
                    .zip(expected)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
            });
            if !ok {
                let mut res = Problem::new(StatusCode::UNAUTHORIZED)
                    .with_detail("Scraping metrics needs the configured bearer token.")
                    .into_response();
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"metrics\""),
                );
                return res;
            }
        }
        let mut res = Response::new(Body::from(self.render()));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }

    /// Starts recording a request: called by the layer when it arrives.
    pub(super) fn start(
        &self,
        method: &Method,
        path: &str,
        ctx: Option<RequestContext>,
    ) -> Recording {
        let r = &self.0;
        r.in_flight.fetch_add(1, Relaxed);
        let route = match r.matcher.at(path) {
            Ok(m) => *m.value,
            Err(_) => r.unmatched_slot(),
        };
        Recording {
            metrics: self.clone(),
            route,
            method: method_index(method),
            started: ctx
                .as_ref()
                .map_or_else(Instant::now, RequestContext::started),
            ctx,
            status: None,
            response_bytes: 0,
        }
    }
}

/// One request being recorded; counted when dropped (the response body ended or was dropped,
/// or the request was cancelled before a response: status 499).
pub(super) struct Recording {
    metrics: Metrics,
    route: u16,
    method: u8,
    started: Instant,
    ctx: Option<RequestContext>,
    pub(super) status: Option<StatusCode>,
    pub(super) response_bytes: u64,
}

impl Recording {
    /// The response head is ready: notes its status and any rejection tag.
    pub(super) fn head(&mut self, status: StatusCode, rejection: Option<&Rejection>) {
        self.status = Some(status);
        if let Some(r) = rejection {
            self.metrics.0.rejections[r.index()].fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.metrics.0.finish(self);
    }
}

impl Registry {
    fn unmatched_slot(&self) -> u16 {
        self.declared.len() as u16
    }

    fn cell(&self, slot: u16, method: u8) -> &Cell {
        self.cells[usize::from(slot) * METHODS.len() + usize::from(method)]
            .get_or_init(|| Cell::new(self.layout.len))
    }

    /// The slot of a template the router matched that was not declared; learnt once, then a
    /// read lock per request. Beyond [`MAX_LEARNT_ROUTES`], requests stay unmatched.
    fn learnt_slot(&self, template: &str) -> u16 {
        if let Some(s) = self
            .learnt
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(template)
        {
            return *s;
        }
        let mut learnt = self.learnt.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = learnt.get(template) {
            return *s;
        }
        let n = learnt.len();
        if n >= MAX_LEARNT_ROUTES {
            return self.unmatched_slot();
        }
        let _ = self.learnt_names[n].set(template.into());
        let slot = self.unmatched_slot() + 1 + n as u16;
        learnt.insert(template.into(), slot);
        slot
    }

    fn route_label(&self, slot: u16) -> &str {
        let s = usize::from(slot);
        let d = self.declared.len();
        match s.cmp(&d) {
            std::cmp::Ordering::Less => &self.declared[s],
            std::cmp::Ordering::Equal => UNMATCHED_ROUTE,
            std::cmp::Ordering::Greater => self.learnt_names[s - d - 1]
                .get()
                .map_or(UNMATCHED_ROUTE, |n| &**n),
        }
    }

    fn finish(&self, rec: &Recording) {
        let elapsed = rec.started.elapsed();
        let mut slot = rec.route;
        if slot == self.unmatched_slot() {
            if let Some(t) = rec.ctx.as_ref().and_then(RequestContext::route) {
                slot = self.learnt_slot(t);
            }
        }
        let status = rec.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        let cell = self.cell(slot, rec.method);
        match STATUS_SLOT.get(usize::from(status)) {
            Some(&i) if i != NO_SLOT => cell.add(usize::from(i), 1),
            _ => {
                *self
                    .other_statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((slot, rec.method, status))
                    .or_default() += 1;
            }
        }
        let l = &self.layout;
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        cell.observe(l.duration_at, &l.duration_ns, nanos);
        let request_bytes = rec
            .ctx
            .as_ref()
            .map_or(0, RequestContext::request_body_bytes);
        cell.observe(l.request_size_at, &l.size, request_bytes);
        cell.observe(l.response_size_at, &l.size, rec.response_bytes);
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Every initialised cell with its labels.
    fn each_cell(&self, mut f: impl FnMut(&str, &str, &Cell)) {
        for (i, cell) in self.cells.iter().enumerate() {
            if let Some(cell) = cell.get() {
                let route = self.route_label((i / METHODS.len()) as u16);
                f(route, METHODS[i % METHODS.len()], cell);
            }
        }
    }

    fn render_http(&self, out: &mut Exposition) {
        let mut requests = out.family(
            "http_requests_total",
            "HTTP requests by method, route template and status (499: the client went away before the response).",
            MetricKind::Counter,
        );
        self.each_cell(|route, method, cell| {
            for (i, status) in STATUSES.iter().enumerate() {
                let n = cell.get(i);
                if n > 0 {
                    let status = status.to_string();
                    requests.sample(
                        &[("method", method), ("route", route), ("status", &status)],
                        n as f64,
                    );
                }
            }
        });
        let others = self
            .other_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((slot, method, status), n) in others {
            let status = status.to_string();
            requests.sample(
                &[
                    ("method", METHODS[usize::from(method)]),
                    ("route", self.route_label(slot)),
                    ("status", &status),
                ],
                n as f64,
            );
        }

        let l = &self.layout;
        let seconds = |ns: u64| ns as f64 / 1e9;
        self.histogram(
            out,
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body.",
            l.duration_at,
            &l.duration_ns,
            seconds,
        );
        let bytes = |b: u64| b as f64;
        self.histogram(
            out,
            "http_request_size_bytes",
            "Request body bytes read.",
            l.request_size_at,
            &l.size,
            bytes,
        );
        self.histogram(
            out,
            "http_response_size_bytes",
            "Response body bytes sent.",
            l.response_size_at,
            &l.size,
            bytes,
        );

        out.family(
            "http_requests_in_flight",
            "Requests between arrival and the end of their response body.",
            MetricKind::Gauge,
        )
        .sample(&[], self.in_flight.load(Relaxed) as f64);

        let mut rejections = out.family(
            "http_rejections_total",
            "Requests refused by a Palisade layer, by layer and reason.",
            MetricKind::Counter,
        );
        for r in Rejection::ALL {
            rejections.sample(
                &[("layer", r.layer()), ("reason", r.reason())],
                self.rejections[r.index()].load(Relaxed) as f64,
            );
        }
    }

    fn histogram(
        &self,
        out: &mut Exposition,
        name: &str,
        help: &str,
        at: usize,
        bounds: &[u64],
        unit: impl Fn(u64) -> f64,
    ) {
        out.histogram(name, help);
        let bucket = format!("{name}_bucket");
        let sum = format!("{name}_sum");
        let count = format!("{name}_count");
        let le: Vec<String> = bounds
            .iter()
            .map(|b| {
                let mut s = String::new();
                write_value(&mut s, unit(*b));
                s
            })
            .chain(std::iter::once("+Inf".to_owned()))
            .collect();
        self.each_cell(|route, method, cell| {
            let mut cumulative = 0;
            for (i, le) in le.iter().enumerate() {
                cumulative += cell.get(at + i);
                out.line(
                    &bucket,
                    &[("method", method), ("route", route), ("le", le)],
                    cumulative as f64,
                );
            }
            let labels = [("method", method), ("route", route)];
            out.line(&sum, &labels, unit(cell.get(at + bounds.len() + 1)));
            out.line(&count, &labels, cumulative as f64);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(routes: &[&str]) -> Metrics {
        Metrics::new(&MetricsConfig::default(), routes).unwrap()
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn requests_are_labelled_by_declared_template_and_unknown_paths_share_one_label() {
        let m = metrics(&["/items/{id}", "/items"]);
        for path in [
            "/items/1",
            "/items/2",
            "/items",
            "/random/abc",
            "/random/def",
        ] {
            let mut rec = m.start(&Method::GET, path, None);
            rec.head(StatusCode::OK, None);
        }
        let text = m.render();
        let ok = |route: &str| {
            sample(
                &text,
                &format!("http_requests_total{{method=\"GET\",route=\"{route}\",status=\"200\"}}"),
            )
        };
        assert_eq!(ok("/items/{id}"), Some(2.0), "{text}");
        assert_eq!(ok("/items"), Some(1.0));
        assert_eq!(ok("unmatched"), Some(2.0));
        assert!(!text.contains("/random"), "raw paths never become labels");
        assert_eq!(m.in_flight(), 0);
    }

    #[test]
    fn a_request_dropped_before_its_response_counts_as_499_and_leaves_in_flight() {
        let m = metrics(&["/x"]);
        let rec = m.start(&Method::POST, "/x", None);
        assert_eq!(m.in_flight(), 1);
        drop(rec);
        assert_eq!(m.in_flight(), 0);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "http_requests_total{method=\"POST\",route=\"/x\",status=\"499\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn unusual_statuses_and_methods_are_still_counted_exactly() {
        let m = metrics(&["/x"]);
        let method = Method::from_bytes(b"PURGE").unwrap();
        let mut rec = m.start(&method, "/x", None);
        rec.head(StatusCode::from_u16(418).unwrap(), None);
        drop(rec);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "http_requests_total{method=\"other\",route=\"/x\",status=\"418\"}"
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_sum_the_observations() {
        let m = metrics(&["/x"]);
        for bytes in [10, 100, 5000] {
            let mut rec = m.start(&Method::GET, "/x", None);
            rec.head(StatusCode::OK, None);
            rec.response_bytes = bytes;
        }
        let text = m.render();
        let b = |le: &str| {
            sample(
                &text,
                &format!(
                    "http_response_size_bytes_bucket{{method=\"GET\",route=\"/x\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(b("64"), Some(1.0), "{text}");
        assert_eq!(b("256"), Some(2.0));
        assert_eq!(b("4096"), Some(2.0));
        assert_eq!(b("16384"), Some(3.0));
        assert_eq!(b("+Inf"), Some(3.0));
        assert_eq!(
            sample(
                &text,
                "http_response_size_bytes_sum{method=\"GET\",route=\"/x\"}"
            ),
            Some(5110.0)
        );
        assert_eq!(
            sample(
                &text,
                "http_response_size_bytes_count{method=\"GET\",route=\"/x\"}"
            ),
            Some(3.0)
        );
    }

    #[test]
    fn rejections_are_counted_by_layer_and_reason() {
        let m = metrics(&[]);
        let mut rec = m.start(&Method::GET, "/", None);
        rec.head(StatusCode::TOO_MANY_REQUESTS, Some(&Rejection::RateLimited));
        drop(rec);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "http_rejections_total{layer=\"rate_limit\",reason=\"quota_exceeded\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "http_rejections_total{layer=\"body_limit\",reason=\"too_large\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn conflicting_templates_are_a_config_error() {
        let e = Metrics::new(&MetricsConfig::default(), ["/a/{x}", "/a/{y}"]).unwrap_err();
        assert_eq!(e.key, "routes");
    }

    #[test]
    fn a_scrape_without_the_token_is_refused() {
        let config = MetricsConfig {
            token: Some("0123456789abcdef-secret".into()),
            ..MetricsConfig::default()
        };
        let m = Metrics::new(&config, ["/x"]).unwrap();
        assert_eq!(m.scrape(&HeaderMap::new()).status(), 401);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong-token-value"),
        );
        assert_eq!(m.scrape(&h).status(), 401);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef-secret"),
        );
        let res = m.scrape(&h);
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[header::CONTENT_TYPE], TEXT_FORMAT);
    }
}

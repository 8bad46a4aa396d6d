//! Path patterns for per-route config, matched against the raw path before routing,
//! segment by segment and without allocating: `/items` (exact), `/items/{id}` (`{..}`
//! matches one segment), `/admin/*` or `/files/{*rest}` (the prefix and everything below
//! it), `/*` (everything).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Box<[Segment]>,
    /// Matches the segments and anything below them.
    prefix: bool,
}

impl PathPattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} must start with '/'"));
        };
        let mut segments = Vec::new();
        let mut prefix = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, seg) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *seg == "*" || (seg.starts_with("{*") && seg.ends_with('}')) {
                if !last {
                    return Err(format!("{pattern:?}: a wildcard must be the last segment"));
                }
                prefix = true;
            } else if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                segments.push(Segment::Param);
            } else if seg.contains(['{', '}', '*']) {
                return Err(format!(
                    "{pattern:?}: segment {seg:?} is neither a literal, {{param}} nor a trailing *"
                ));
            } else {
                segments.push(Segment::Literal((*seg).into()));
            }
        }
        Ok(Self {
            segments: segments.into(),
            prefix,
        })
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = rest.split('/');
        if rest.is_empty() {
            // "/" has no segments.
            return self.segments.is_empty();
        }
        for seg in &*self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (Segment::Param, Some(p)) if !p.is_empty() => {}
                (Segment::Literal(l), Some(p)) if **l == *p => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }
}

/// The matching half of a `[[<section>.routes]]` entry: a path pattern and methods.
#[derive(Debug, Clone)]
pub(crate) struct RouteMatch {
    pub(crate) pattern: PathPattern,
    /// Empty: every method (or, where a layer says so, its default list).
    pub(crate) methods: Box<[http::Method]>,
}

impl RouteMatch {
    /// Compiles rule `index`; errors name `routes[<index>].path` or `.methods`.
    pub(crate) fn compile(
        index: usize,
        path: &str,
        methods: &[String],
    ) -> Result<Self, crate::error::ConfigError> {
        let key = |f: &str| format!("routes[{index}].{f}");
        let pattern =
            PathPattern::parse(path).map_err(|m| crate::error::ConfigError::new(key("path"), m))?;
        let methods = parse_methods(methods)
            .map_err(|m| crate::error::ConfigError::new(key("methods"), m))?;
        Ok(Self { pattern, methods })
    }

    /// Whether the rule applies (empty methods: any).
    pub(crate) fn matches(&self, method: &http::Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method)) && self.pattern.matches(path)
    }
}

/// Per-route values, first matching rule wins: the shared lookup of the layers' `routes`.
#[derive(Debug)]
pub(crate) struct RouteRules<T>(Box<[(RouteMatch, T)]>);

impl<T> RouteRules<T> {
    pub(crate) fn new(rules: Vec<(RouteMatch, T)>) -> Self {
        Self(rules.into())
    }

    pub(crate) fn none() -> Self {
        Self(Box::new([]))
    }

    /// The index of the first rule matching `method` and `path`.
    pub(crate) fn position(&self, method: &http::Method, path: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|(route, _)| route.matches(method, path))
    }

    /// The value of rule `index` (from [`position`](Self::position)).
    pub(crate) fn get(&self, index: usize) -> &T {
        &self.0[index].1
    }

    /// The value of the first rule matching `method` and `path`.
    pub(crate) fn find(&self, method: &http::Method, path: &str) -> Option<&T> {
        self.position(method, path).map(|i| self.get(i))
    }
}

/// Parses config method names (`"post"`, `" PATCH "`), for per-route rules.
pub(crate) fn parse_methods(names: &[String]) -> Result<Box<[http::Method]>, String> {
    names
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{m:?} is not a method"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, path: &str| PathPattern::parse(p).unwrap().matches(path);
        assert!(m("/login", "/login"));
        assert!(!m("/login", "/login/x"));
        assert!(!m("/login", "/logins"));
        assert!(m("/items/{id}", "/items/7"));
        assert!(!m("/items/{id}", "/items/"));
        assert!(!m("/items/{id}", "/items/7/parts"));
        assert!(m("/admin/*", "/admin"));
        assert!(m("/admin/*", "/admin/users/1"));
        assert!(!m("/admin/*", "/administrator"));
        assert!(m("/files/{*rest}", "/files/a/b"));
        assert!(m("/*", "/anything/at/all"));
        assert!(m("/*", "/"));
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
        for bad in ["login", "/a/*/b", "/a{b}", "/a/*x"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}

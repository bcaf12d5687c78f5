//! Value matchers of AuthorizationPolicy, precompiled from the strings users write (Istio's
//! `authz/matcher/string.go` and the generators of `authz/model/generator.go`):
//!
//! - a string value is exact `v`, prefix `v*`, suffix `*v`, or `*` = present **and non-empty**;
//!   only one leading or trailing `*` counts, any other `*` is literal;
//! - principals match the peer's SPIFFE ID without `spiffe://`; namespaces, service accounts
//!   and trust domains are the regular expressions Istio generates, evaluated here by hand;
//! - IPs are an address or a CIDR; paths may be `{*}`/`{**}` templates.
//!
//! Nothing here allocates while matching.

use std::net::IpAddr;

/// A string matcher: Istio's exact / prefix / suffix / present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: present and non-empty.
    Present,
}

impl StrMatch {
    /// Istio's reading of a value: `*` ⇒ present, `*v` ⇒ suffix, `v*` ⇒ prefix, else exact.
    pub fn parse(value: &str) -> StrMatch {
        if value == "*" {
            StrMatch::Present
        } else if let Some(rest) = value.strip_prefix('*') {
            StrMatch::Suffix(rest.to_string())
        } else if let Some(rest) = value.strip_suffix('*') {
            StrMatch::Prefix(rest.to_string())
        } else {
            StrMatch::Exact(value.to_string())
        }
    }

    /// The same matcher with its text lower-cased (for case-insensitive matching).
    pub fn lowercase(self) -> StrMatch {
        match self {
            StrMatch::Exact(s) => StrMatch::Exact(s.to_ascii_lowercase()),
            StrMatch::Prefix(s) => StrMatch::Prefix(s.to_ascii_lowercase()),
            StrMatch::Suffix(s) => StrMatch::Suffix(s.to_ascii_lowercase()),
            StrMatch::Present => StrMatch::Present,
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(s) => v == s,
            StrMatch::Prefix(s) => v.starts_with(s.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Present => !v.is_empty(),
        }
    }

    /// Matches ignoring ASCII case; the matcher's own text must be lower case.
    pub fn matches_ignore_case(&self, v: &str) -> bool {
        let v = v.as_bytes();
        match self {
            StrMatch::Exact(s) => v.eq_ignore_ascii_case(s.as_bytes()),
            StrMatch::Prefix(s) => {
                v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            StrMatch::Present => !v.is_empty(),
        }
    }

    /// Matches the concatenation `a + b` without building it (a principal is the trust
    /// domain followed by the path).
    pub fn matches_joined(&self, a: &str, b: &str) -> bool {
        match self {
            StrMatch::Exact(s) => s.len() == a.len() + b.len() && joined_starts_with(a, b, s),
            StrMatch::Prefix(s) => joined_starts_with(a, b, s),
            StrMatch::Suffix(s) => {
                if s.len() <= b.len() {
                    b.ends_with(s.as_str())
                } else {
                    s.ends_with(b)
                        && s.len() - b.len() <= a.len()
                        && a.ends_with(&s[..s.len() - b.len()])
                }
            }
            StrMatch::Present => !a.is_empty() || !b.is_empty(),
        }
    }
}

fn joined_starts_with(a: &str, b: &str, prefix: &str) -> bool {
    if prefix.len() <= a.len() {
        a.starts_with(prefix)
    } else {
        prefix.starts_with(a) && b.starts_with(&prefix[a.len()..])
    }
}

/// A `*`-glob (every `*` matches any run of characters, `/` included), the shape of Istio's
/// `namespaces` regex `.*/ns/<value with * as .*>/.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The literal pieces between `*`s.
    pieces: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pieces: pattern.split('*').map(str::to_string).collect(),
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        let n = self.pieces.len();
        if n == 1 {
            return v == self.pieces[0];
        }
        let (first, last) = (&self.pieces[0], &self.pieces[n - 1]);
        if v.len() < first.len() + last.len() || !v.starts_with(first.as_str()) {
            return false;
        }
        if !v.ends_with(last.as_str()) {
            return false;
        }
        let mut rest = &v[first.len()..v.len() - last.len()];
        for piece in &self.pieces[1..n - 1] {
            match rest.find(piece.as_str()) {
                Some(i) => rest = &rest[i + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// `namespaces`: Istio's regex `.*/ns/<ns>/.*` on the peer's ID (`*` in the value ⇒ `.*`).
/// A trust domain holds no `/`, so `/ns/` can only be in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceMatch(Glob);

impl NamespaceMatch {
    pub fn new(namespace: &str) -> NamespaceMatch {
        NamespaceMatch(Glob::new(&format!("*/ns/{namespace}/*")))
    }

    pub fn matches(&self, id_path: &str) -> bool {
        self.0.matches(id_path)
    }
}

/// `serviceAccounts` (`ns/sa`): Istio's regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
/// Istio does not quote `ns` and `sa` in its regex; here they are literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    /// `/ns/<ns>/`
    ns: String,
    /// `sa/<sa>`
    sa: String,
}

impl ServiceAccountMatch {
    pub fn new(namespace: &str, service_account: &str) -> ServiceAccountMatch {
        ServiceAccountMatch {
            ns: format!("/ns/{namespace}/"),
            sa: format!("sa/{service_account}"),
        }
    }

    pub fn matches(&self, trust_domain: &str, id_path: &str) -> bool {
        // `.+` before `/ns/`: the trust domain is never empty, so any position in the path.
        if trust_domain.is_empty() {
            return false;
        }
        let mut from = 0;
        while let Some(i) = id_path[from..].find(self.ns.as_str()) {
            let rest = &id_path[from + i + self.ns.len()..];
            if self.rest_matches(rest) {
                return true;
            }
            from += i + 1;
        }
        false
    }

    /// `(.+/|)sa/<sa>(/.+)?` over the whole of `rest`.
    fn rest_matches(&self, rest: &str) -> bool {
        let mut from = 0;
        while let Some(i) = rest[from..].find(self.sa.as_str()) {
            let at = from + i;
            let before_ok = at == 0 || (at >= 2 && rest.as_bytes()[at - 1] == b'/');
            let after = &rest[at + self.sa.len()..];
            let after_ok = after.is_empty() || (after.len() >= 2 && after.starts_with('/'));
            if before_ok && after_ok {
                return true;
            }
            from = at + 1;
        }
        false
    }
}

/// An IP address or CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ip` or `ip/len`; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may appear as an IPv4-mapped IPv6 address on a dual-stack socket.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A `paths` value: a string matcher, or a `{*}`/`{**}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Str(StrMatch),
    Template(Vec<Segment>),
}

/// One `/`-separated piece of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: whatever remains (zero or more segments); only last.
    Rest,
}

/// Why a `paths` value is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the {{**}} operator must be the last segment")]
    RestNotLast,
    #[error("a path template segment must be exactly {{*}} or {{**}} (no other braces)")]
    BadOperator,
    #[error("a path template must start with /")]
    NotAbsolute,
}

impl PathMatch {
    pub fn parse(value: &str) -> Result<PathMatch, TemplateError> {
        if !value.contains(['{', '}']) {
            return Ok(PathMatch::Str(StrMatch::parse(value)));
        }
        let Some(rest) = value.strip_prefix('/') else {
            return Err(TemplateError::NotAbsolute);
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(TemplateError::RestNotLast),
                p if p.contains(['{', '}']) => return Err(TemplateError::BadOperator),
                p => Segment::Literal(p.to_string()),
            });
        }
        Ok(PathMatch::Template(segments))
    }

    /// `path` is already normalized and without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(segments) => {
                let Some(mut rest) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, segment) in segments.iter().enumerate() {
                    let last = i + 1 == segments.len();
                    if *segment == Segment::Rest {
                        return true;
                    }
                    let (piece, tail) = match rest.split_once('/') {
                        Some((p, t)) => (p, Some(t)),
                        None => (rest, None),
                    };
                    let ok = match segment {
                        Segment::Literal(l) => piece == l,
                        Segment::One => !piece.is_empty(),
                        Segment::Rest => true,
                    };
                    if !ok {
                        return false;
                    }
                    match (tail, last) {
                        (None, true) => return true,
                        // More path than template, or more template than path (`/a/{**}`
                        // needs the `/` after `a`).
                        (Some(_), true) | (None, false) => return false,
                        (Some(t), false) => rest = t,
                    }
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_values() {
        // (value, input, matches)
        let table = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc*", "abcd", true),
            ("abc*", "ab", false),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),     // present AND non-empty
            ("*a*", "xa*", true), // only the leading * counts
            ("*a*", "xab", false),
            ("a*b", "a*b", true), // a middle * is literal
            ("a*b", "axb", false),
        ];
        for (value, input, want) in table {
            assert_eq!(
                StrMatch::parse(value).matches(input),
                want,
                "{value} vs {input}"
            );
        }
    }

    #[test]
    fn joined_matches_as_the_concatenation() {
        let values = [
            "cluster.local/ns/default/sa/sentences",
            "cluster.local/ns/default/sa/*",
            "cluster.local*",
            "cluster*",
            "*/ns/default/sa/sentences",
            "*local/ns/default/sa/sentences",
            "*.local/ns/default/sa/sentences",
            "*",
            "cluster.local/ns/default/sa/sentencesx",
            "cluster.localx*",
            "*xcluster.local/ns/default/sa/sentences",
        ];
        let (td, path) = ("cluster.local", "/ns/default/sa/sentences");
        let joined = format!("{td}{path}");
        for v in values {
            let m = StrMatch::parse(v);
            assert_eq!(m.matches_joined(td, path), m.matches(&joined), "{v}");
        }
    }

    #[test]
    fn case_insensitive() {
        assert!(StrMatch::parse("Example.COM")
            .lowercase()
            .matches_ignore_case("example.com"));
        assert!(StrMatch::parse("*.Example.com")
            .lowercase()
            .matches_ignore_case("API.EXAMPLE.COM"));
        assert!(StrMatch::parse("api.*")
            .lowercase()
            .matches_ignore_case("API.x"));
    }

    #[test]
    fn namespaces() {
        let table = [
            ("default", "/ns/default/sa/a", true),
            ("default", "/ns/defaultx/sa/a", false),
            ("def*", "/ns/default/sa/a", true),
            ("*ult", "/ns/default/sa/a", true),
            ("*", "/ns/x/sa/a", true),
            ("default", "/sa/default/ns/x", false),
            ("default", "/x/ns/default/sa/a", true),
        ];
        for (ns, path, want) in table {
            assert_eq!(NamespaceMatch::new(ns).matches(path), want, "{ns} {path}");
        }
    }

    #[test]
    fn service_accounts() {
        let m = ServiceAccountMatch::new("default", "sentences");
        let table = [
            ("/ns/default/sa/sentences", true),
            ("/ns/default/sa/sentences/extra", true),
            ("/ns/default/x/sa/sentences", true),
            ("/ns/default/sa/sentencesx", false),
            ("/ns/other/sa/sentences", false),
            ("/ns/default/xsa/sentences", false),
            ("/ns/default/sa/sentences/", false),
        ];
        for (path, want) in table {
            assert_eq!(m.matches("cluster.local", path), want, "{path}");
        }
    }

    #[test]
    fn cidrs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "10.0.0.1", false),
        ];
        for (cidr, addr, want) in table {
            assert_eq!(
                Cidr::parse(cidr).unwrap().contains(ip(addr)),
                want,
                "{cidr} {addr}"
            );
        }
        for bad in ["10.0.0.0/33", "10.0.0", "x", "::1/129", "10.0.0.0/-1", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn path_templates() {
        let table = [
            ("/foo/{*}", "/foo/bar", true),
            ("/foo/{*}", "/foo/bar/baz", false),
            ("/foo/{*}", "/foo/", false),
            ("/foo/{*}/baz", "/foo/bar/baz", true),
            ("/foo/{*}/baz", "/foo/bar/qux", false),
            ("/foo/{**}", "/foo/bar/baz", true),
            ("/foo/{**}", "/foo/", true),
            ("/foo/{**}", "/foo", false),
            ("/{*}/{**}", "/a/b/c", true),
            ("/foo/*", "/foo/x", true), // not a template: a prefix
            ("/foo", "/foo", true),
        ];
        for (t, path, want) in table {
            assert_eq!(
                PathMatch::parse(t).unwrap().matches(path),
                want,
                "{t} vs {path}"
            );
        }
        assert_eq!(
            PathMatch::parse("/foo/{**}/bar"),
            Err(TemplateError::RestNotLast)
        );
        assert_eq!(
            PathMatch::parse("/foo/x{*}"),
            Err(TemplateError::BadOperator)
        );
        assert_eq!(PathMatch::parse("foo/{*}"), Err(TemplateError::NotAbsolute));
    }
}

//! Request routing over the gateway plan ([`crate::config::GatewayPlan`]): which server a
//! connection or request belongs to ([`host`]), which VirtualService rule a request matches
//! and which weighted destination it goes to (here), what the rule changes on the way
//! ([`rewrite`]: path and authority rewrites, redirects, header edits) and when a failed
//! attempt is tried again ([`retry`]).
//!
//! Everything is a pure function over plan types and a small fact struct
//! ([`RequestFacts`]): no sockets, no clocks, no I/O. The gateway's HTTP handler calls these,
//! and sidecars can later route with the same rules without knowing the gateway's listeners.
//!
//! The semantics are Envoy's as Istio configures it for a gateway (Istio translates a
//! VirtualService into Envoy routes; the observable behaviour is Envoy's). Where the two
//! projects' documentation leaves room, the function's doc says which rule is implemented:
//!
//! - the `uri` of a match is compared with the request path: `exact` and `regex` with the
//!   path without its query string, `prefix` with the path as sent (a prefix without `?`
//!   never reaches into the query, so the two readings agree); `ignoreUriCase` folds ASCII
//!   case for `exact` and `prefix` only;
//! - `authority` is compared with the `Host` / `:authority` value as the client sent it, port
//!   included (Istio gateways do not strip the port from the header; only the choice of
//!   virtual host ignores it, see [`host`]);
//! - `headers` need the header present (several values of one header are joined with `,`);
//!   `withoutHeaders` treats a missing header as empty, so a request without the header is
//!   never excluded by a value condition, and `{}` there means "absent";
//! - `queryParams` compare the first value of the parameter as it appears in the request
//!   (not percent-decoded); `key` without `=` has the value `""`;
//! - the rules of the VirtualServices whose `hosts` cover the authority most specifically
//!   (Envoy's virtual host) are tried in order; the first rule without `match`, or with any
//!   match that holds, wins. A request no rule takes is Envoy's 404 (`NR`).

pub mod host;
pub mod retry;
pub mod rewrite;

use std::borrow::Cow;

use http::{HeaderMap, Method};
use rand::Rng;

use crate::config::{HttpMatch, HttpRule, StringMatch, WeightedDestination};

pub use host::{host_matches, select_l4, server_for_host};
pub use retry::{backoff, retriable, AttemptResult};
pub use rewrite::{
    apply_header_ops, authority_rewrite, https_redirect_location, redirect_location, rewrite_path,
};

/// What routing reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// `http` or `https`: how the request reached the gateway (plaintext or TLS terminated).
    pub scheme: &'a str,
    /// The `Host` header (HTTP/1) or `:authority` (HTTP/2) exactly as the client sent it, port
    /// included when it sent one; `""` when the request has neither.
    pub authority: &'a str,
    /// The request target in origin form: the path, then `?query` when there is one.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The gateway listener port the request arrived on (the server's `port.number`).
    pub port: u16,
}

impl RequestFacts<'_> {
    /// The path without query string or fragment.
    pub fn path(&self) -> &str {
        path_only(self.path_and_query)
    }

    /// The query string without its `?` (and without a fragment), if the target has one.
    pub fn query(&self) -> Option<&str> {
        let (_, query) = self.path_and_query.split_once('?')?;
        Some(query.split_once('#').map_or(query, |(q, _)| q))
    }
}

/// Whether `value` satisfies an Istio StringMatch. `ignore_case` folds ASCII case for
/// `exact` and `prefix`; a regex is the plan's, already anchored to the whole value by the
/// configuration (RE2 semantics, as Envoy's `safe_regex`), and ignores `ignore_case` as Envoy
/// does. `Present` holds for any value: the caller decides what a missing value means.
pub fn string_match(m: &StringMatch, value: &str, ignore_case: bool) -> bool {
    match m {
        StringMatch::Exact(exact) if ignore_case => value.eq_ignore_ascii_case(exact),
        StringMatch::Exact(exact) => value == exact,
        StringMatch::Prefix(prefix) => starts_with(value, prefix, ignore_case),
        StringMatch::Regex(regex) => regex.is_match(value),
        StringMatch::Present => true,
    }
}

/// Whether every condition of one `match[]` entry holds for the request (see the module doc
/// for how each condition reads the request).
pub fn matches(m: &HttpMatch, facts: &RequestFacts) -> bool {
    if m.port.is_some_and(|port| port != facts.port) {
        return false;
    }
    if let Some(uri) = &m.uri {
        if !uri_matches(uri, facts, m.ignore_uri_case) {
            return false;
        }
    }
    let pseudo = [
        (&m.method, facts.method.as_str()),
        (&m.scheme, facts.scheme),
        (&m.authority, facts.authority),
    ];
    if !pseudo
        .iter()
        .all(|(cond, value)| cond.as_ref().is_none_or(|c| string_match(c, value, false)))
    {
        return false;
    }
    let headers_hold = m.headers.iter().all(|(name, cond)| {
        header_value(facts, name).is_some_and(|value| string_match(cond, &value, false))
    });
    // Istio sends `withoutHeaders` as inverted matchers that treat a missing header as empty
    // (a presence condition stays one: it excludes requests that carry the header).
    let none_excluded = m.without_headers.iter().all(|(name, cond)| {
        let value = header_value(facts, name);
        match cond {
            StringMatch::Present => value.is_none(),
            _ => !string_match(cond, value.as_deref().unwrap_or(""), false),
        }
    });
    let query = facts.query();
    let params_hold = m.query_params.iter().all(|(name, cond)| {
        query_param(query, name).is_some_and(|value| string_match(cond, value, false))
    });
    headers_hold && none_excluded && params_hold
}

/// The rule that takes the request, Envoy's way: first the virtual host, then the route.
///
/// 1. The virtual host: among every `hosts` pattern of the rules, the one that covers the
///    request's authority most specifically (port and ASCII case ignored; exact name, then
///    the longest wildcard suffix, then `*`; see [`host`]). Only the rules whose
///    VirtualService lists that pattern take part (a rule with no `hosts` counts as `*`). No
///    pattern covers the authority: no rule takes the request.
/// 2. The route: the first of those rules (in plan order) without `match`, or with a
///    `match[]` entry that holds; returned with the entry that held (`None` for a rule
///    without `match`), which a prefix rewrite needs.
///
/// `None`: Envoy answers 404 with flag `NR`.
///
/// The order is the plan's. Istio keeps one VirtualService's rules in file order (and drops
/// those after a rule that takes every request), and, within one virtual host, moves such
/// catch-all rules of several VirtualServices after the others (`SortVHostRoutes`); the
/// configuration is expected to hand the rules over in that order. Istio's virtual hosts are
/// the VirtualService hosts intersected with the server's (`*` on a server of
/// `*.example.com` becomes `*.example.com`); `hosts` holding that intersection gives the
/// exact choice, the hosts as written differ only for authorities no server host covers.
pub fn select<'a>(
    rules: &'a [HttpRule],
    facts: &RequestFacts,
) -> Option<(&'a HttpRule, Option<&'a HttpMatch>)> {
    let domain = virtual_host(rules, facts.authority)?;
    rules
        .iter()
        .filter(|rule| rule_hosts(rule).any(|h| h.eq_ignore_ascii_case(domain)))
        .find_map(|rule| {
            if rule.matches.is_empty() {
                return Some((rule, None));
            }
            let hit = rule.matches.iter().find(|m| matches(m, facts))?;
            Some((rule, Some(hit)))
        })
}

/// The `hosts` pattern of `rules` that covers `authority` most specifically (the first
/// among equals); without an authority only `*` does.
pub fn virtual_host<'a>(rules: &'a [HttpRule], authority: &str) -> Option<&'a str> {
    let name = host::strip_port(authority);
    let mut best: Option<(&str, host::HostSpecificity)> = None;
    for pattern in rules.iter().flat_map(rule_hosts) {
        let s = if name.is_empty() {
            (pattern == "*").then_some(host::HostSpecificity::Any)
        } else {
            host::specificity(pattern, name)
        };
        if let Some(s) = s {
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((pattern, s));
            }
        }
    }
    best.map(|(pattern, _)| pattern)
}

fn rule_hosts(rule: &HttpRule) -> impl Iterator<Item = &str> {
    let any: &[&str] = if rule.hosts.is_empty() { &["*"] } else { &[] };
    rule.hosts
        .iter()
        .map(String::as_str)
        .chain(any.iter().copied())
}

/// Picks one of `destinations` by weight (weights are relative; weight 0 is never chosen
/// while another weight is positive; when every weight is 0 the first is chosen, as Istio
/// does with a single `route` entry). `None` only for an empty list.
pub fn pick_weighted(destinations: &[WeightedDestination]) -> Option<usize> {
    let total = total_weight(destinations);
    let ticket = if total == 0 {
        0
    } else {
        rand::rng().random_range(0..total)
    };
    pick_weighted_with(destinations, ticket)
}

/// [`pick_weighted`] with the random number given: `ticket` (reduced modulo the total
/// weight) falls in the share of one destination, counted in list order.
pub fn pick_weighted_with(destinations: &[WeightedDestination], ticket: u64) -> Option<usize> {
    if destinations.is_empty() {
        return None;
    }
    let total = total_weight(destinations);
    if total == 0 {
        return Some(0);
    }
    let mut ticket = ticket % total;
    for (i, d) in destinations.iter().enumerate() {
        let weight = u64::from(d.weight);
        if ticket < weight {
            return Some(i);
        }
        ticket -= weight;
    }
    // Unreachable: the ticket is below the total of the weights walked above.
    None
}

fn total_weight(destinations: &[WeightedDestination]) -> u64 {
    destinations.iter().map(|d| u64::from(d.weight)).sum()
}

fn uri_matches(uri: &StringMatch, facts: &RequestFacts, ignore_case: bool) -> bool {
    match uri {
        // Envoy compares a prefix with `:path` as sent, and `path`/`safe_regex` with `:path`
        // once the query string is removed.
        StringMatch::Prefix(prefix) => starts_with(facts.path_and_query, prefix, ignore_case),
        StringMatch::Regex(_) => string_match(uri, facts.path(), false),
        _ => string_match(uri, facts.path(), ignore_case),
    }
}

/// The value a header condition compares: pseudo-headers from the facts, others from the
/// header map with several values joined by `,` (as Envoy does). `None`: absent.
fn header_value<'a>(facts: &RequestFacts<'a>, name: &str) -> Option<Cow<'a, str>> {
    let pseudo = match name {
        ":authority" => Some(facts.authority),
        ":method" => Some(facts.method.as_str()),
        ":scheme" => Some(facts.scheme),
        ":path" => Some(facts.path_and_query),
        _ => None,
    };
    if let Some(value) = pseudo {
        return (!value.is_empty()).then_some(Cow::Borrowed(value));
    }
    let mut values = facts.headers.get_all(name).iter();
    let first = values.next()?;
    let mut joined = String::from_utf8_lossy(first.as_bytes());
    for more in values {
        let joined = joined.to_mut();
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(joined)
}

/// The first value of query parameter `name`, undecoded (`key` without `=` has `""`).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

pub(crate) fn path_only(path_and_query: &str) -> &str {
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    &path_and_query[..end]
}

/// Byte-wise prefix test; `ignore_case` folds ASCII letters only (as Envoy does).
pub(crate) fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    if ignore_case {
        value
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    } else {
        value.starts_with(prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;

    use http::{HeaderName, HeaderValue};

    use super::*;
    use crate::config::{
        Destination, HeaderEdits, HttpAction, HttpRouteAction, OutboundPlan, Protocol, RetryPolicy,
    };

    /// An owned request to borrow [`RequestFacts`] from.
    pub(super) struct Req {
        pub method: Method,
        pub scheme: &'static str,
        pub authority: String,
        pub path_and_query: String,
        pub headers: HeaderMap,
        pub port: u16,
    }

    impl Req {
        pub fn get(authority: &str, path_and_query: &str) -> Req {
            Req {
                method: Method::GET,
                scheme: "http",
                authority: authority.to_string(),
                path_and_query: path_and_query.to_string(),
                headers: HeaderMap::new(),
                port: 8080,
            }
        }

        pub fn header(mut self, name: &str, value: &str) -> Req {
            self.headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            self
        }

        pub fn method(mut self, method: Method) -> Req {
            self.method = method;
            self
        }

        pub fn scheme(mut self, scheme: &'static str) -> Req {
            self.scheme = scheme;
            self
        }

        pub fn port(mut self, port: u16) -> Req {
            self.port = port;
            self
        }

        pub fn facts(&self) -> RequestFacts<'_> {
            RequestFacts {
                method: &self.method,
                scheme: self.scheme,
                authority: &self.authority,
                path_and_query: &self.path_and_query,
                headers: &self.headers,
                port: self.port,
            }
        }
    }

    /// A regex as the configuration compiles it: anchored to the whole value.
    pub(super) fn re(pattern: &str) -> StringMatch {
        StringMatch::Regex(Arc::new(
            regex::Regex::new(&format!("^(?:{pattern})$")).unwrap(),
        ))
    }

    pub(super) fn exact(s: &str) -> StringMatch {
        StringMatch::Exact(s.to_string())
    }

    pub(super) fn prefix(s: &str) -> StringMatch {
        StringMatch::Prefix(s.to_string())
    }

    pub(super) fn uri(m: StringMatch) -> HttpMatch {
        HttpMatch {
            uri: Some(m),
            ..HttpMatch::default()
        }
    }

    pub(super) fn destination(weight: u32) -> WeightedDestination {
        WeightedDestination {
            weight,
            plan: OutboundPlan {
                bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                to: "sentences.default:8080".to_string(),
                destination: Destination {
                    host: "sentences.default.svc.cluster.local".to_string(),
                    service: Some("sentences".to_string()),
                    namespace: Some("default".to_string()),
                    port: 8080,
                    in_mesh: true,
                    protocol: Protocol::Http,
                },
                routes: Vec::new(),
                decided_by: "test".to_string(),
            },
            headers: HeaderEdits::default(),
        }
    }

    pub(super) fn rule(origin: &str, matches: Vec<HttpMatch>) -> HttpRule {
        hosted(origin, &["*"], matches)
    }

    pub(super) fn hosted(origin: &str, hosts: &[&str], matches: Vec<HttpMatch>) -> HttpRule {
        HttpRule {
            origin: origin.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            matches,
            action: HttpAction::Route(HttpRouteAction {
                destinations: vec![destination(100)],
                rewrite: None,
                timeout: None,
                retries: RetryPolicy {
                    attempts: 0,
                    per_try_timeout: None,
                    retry_on: Vec::new(),
                },
            }),
            headers: HeaderEdits::default(),
        }
    }

    #[test]
    fn string_matches_follow_istio() {
        let rows: &[(StringMatch, &str, bool, bool)] = &[
            // (match, value, ignore_case, expected)
            (exact("/api"), "/api", false, true),
            (exact("/api"), "/API", false, false),
            (exact("/api"), "/API", true, true),
            (exact("/api"), "/api/", false, false),
            (exact(""), "", false, true),
            (exact("straße"), "STRASSE", true, false),
            (prefix("/api"), "/api/v1", false, true),
            (prefix("/api"), "/apiv1", false, true),
            (prefix("/api"), "/ap", false, false),
            (prefix("/Api"), "/aPI/x", true, true),
            (prefix("/Api"), "/aPI/x", false, false),
            (prefix(""), "anything", false, true),
            (prefix("/é"), "/É", true, false),
            (prefix("/é"), "/é/x", true, true),
            (re("/v[0-9]+"), "/v12", false, true),
            (re("/v[0-9]+"), "/v12/x", false, false),
            (re("/v[0-9]+"), "x/v12", false, false),
            (re("/V[0-9]+"), "/v1", true, false),
            (re("a|ab"), "ab", false, true),
            (StringMatch::Present, "", false, true),
            (StringMatch::Present, "x", true, true),
        ];
        for (i, (m, value, ignore_case, expected)) in rows.iter().enumerate() {
            assert_eq!(
                string_match(m, value, *ignore_case),
                *expected,
                "row {i}: {m:?} against {value:?} (ignore_case {ignore_case})"
            );
        }
    }

    #[test]
    fn uri_conditions_read_the_path_as_envoy_does() {
        let rows: &[(HttpMatch, &str, bool)] = &[
            (uri(exact("/productpage")), "/productpage", true),
            (uri(exact("/productpage")), "/productpage?u=1", true),
            (uri(exact("/productpage")), "/productpage/", false),
            (uri(exact("/productpage")), "/ProductPage", false),
            (uri(prefix("/api/")), "/api/users?x=1", true),
            (uri(prefix("/api/")), "/api", false),
            (uri(prefix("/api")), "/api?x=1", true),
            (uri(prefix("/api?x")), "/api?x=1", true),
            (uri(prefix("/")), "/", true),
            (uri(re("/reviews/[0-9]+")), "/reviews/12", true),
            (uri(re("/reviews/[0-9]+")), "/reviews/12?full=1", true),
            (uri(re("/reviews/[0-9]+")), "/reviews/12/x", false),
            (uri(re("/reviews/[0-9]+")), "/x/reviews/12", false),
            (uri(StringMatch::Present), "/any", true),
            (
                HttpMatch {
                    uri: Some(exact("/Login")),
                    ignore_uri_case: true,
                    ..HttpMatch::default()
                },
                "/LOGIN?next=/",
                true,
            ),
            (
                HttpMatch {
                    uri: Some(prefix("/Static/")),
                    ignore_uri_case: true,
                    ..HttpMatch::default()
                },
                "/static/app.js",
                true,
            ),
            (
                // ignoreUriCase does not apply to regex (Istio's documented rule).
                HttpMatch {
                    uri: Some(re("/Static/.*")),
                    ignore_uri_case: true,
                    ..HttpMatch::default()
                },
                "/static/app.js",
                false,
            ),
            (HttpMatch::default(), "/whatever", true),
        ];
        for (i, (m, path, expected)) in rows.iter().enumerate() {
            let req = Req::get("sentences.example.com", path);
            assert_eq!(matches(m, &req.facts()), *expected, "row {i}: {path}");
        }
    }

    #[test]
    fn header_conditions_need_the_header() {
        let cond = |name: &str, m: StringMatch| HttpMatch {
            headers: vec![(name.to_string(), m)],
            ..HttpMatch::default()
        };
        let rows: Vec<(HttpMatch, Req, bool)> = vec![
            (
                cond("end-user", exact("jason")),
                Req::get("h", "/").header("end-user", "jason"),
                true,
            ),
            (
                cond("end-user", exact("jason")),
                Req::get("h", "/").header("End-User", "jason"),
                true,
            ),
            (
                cond("end-user", exact("jason")),
                Req::get("h", "/").header("end-user", "Jason"),
                false,
            ),
            (cond("end-user", exact("jason")), Req::get("h", "/"), false),
            (cond("end-user", exact("")), Req::get("h", "/"), false),
            (
                cond("end-user", exact("")),
                Req::get("h", "/").header("end-user", ""),
                true,
            ),
            (
                cond("end-user", prefix("ja")),
                Req::get("h", "/").header("end-user", "jason"),
                true,
            ),
            (cond("end-user", prefix("")), Req::get("h", "/"), false),
            (
                cond("end-user", re("j.*n")),
                Req::get("h", "/").header("end-user", "jason"),
                true,
            ),
            (
                cond("end-user", re("j")),
                Req::get("h", "/").header("end-user", "jason"),
                false,
            ),
            (
                cond("x-canary", StringMatch::Present),
                Req::get("h", "/").header("x-canary", ""),
                true,
            ),
            (
                cond("x-canary", StringMatch::Present),
                Req::get("h", "/"),
                false,
            ),
            // Several values of one header are compared joined with ",".
            (
                cond("x-a", exact("1,2")),
                Req::get("h", "/").header("x-a", "1").header("x-a", "2"),
                true,
            ),
            (
                cond("x-a", exact("1")),
                Req::get("h", "/").header("x-a", "1").header("x-a", "2"),
                false,
            ),
            (
                cond("cookie", re(".*(user=jason).*")),
                Req::get("h", "/").header("cookie", "a=b; user=jason"),
                true,
            ),
            // Pseudo-headers read the facts.
            (
                cond(":authority", exact("a.example.com:8080")),
                Req::get("a.example.com:8080", "/"),
                true,
            ),
            (
                cond(":method", exact("POST")),
                Req::get("h", "/").method(Method::POST),
                true,
            ),
            (cond(":path", prefix("/api")), Req::get("h", "/api?x"), true),
            (cond(":scheme", exact("https")), Req::get("h", "/"), false),
            (
                cond(":authority", StringMatch::Present),
                Req::get("", "/"),
                false,
            ),
            // A name the header map cannot hold never matches (and never panics).
            (
                cond("bad name", StringMatch::Present),
                Req::get("h", "/"),
                false,
            ),
        ];
        for (i, (m, req, expected)) in rows.iter().enumerate() {
            assert_eq!(
                matches(m, &req.facts()),
                *expected,
                "row {i}: {:?}",
                m.headers
            );
        }
    }

    #[test]
    fn without_headers_exclude_only_what_matches() {
        let without = |name: &str, m: StringMatch| HttpMatch {
            without_headers: vec![(name.to_string(), m)],
            ..HttpMatch::default()
        };
        let rows: Vec<(HttpMatch, Req, bool)> = vec![
            (
                without("end-user", exact("jason")),
                Req::get("h", "/").header("end-user", "jason"),
                false,
            ),
            (
                without("end-user", exact("jason")),
                Req::get("h", "/").header("end-user", "mary"),
                true,
            ),
            // Missing is empty: not "jason", so not excluded.
            (
                without("end-user", exact("jason")),
                Req::get("h", "/"),
                true,
            ),
            // ...but an empty value condition does exclude a missing header.
            (without("end-user", exact("")), Req::get("h", "/"), false),
            (without("end-user", prefix("")), Req::get("h", "/"), false),
            (without("end-user", re("j.*")), Req::get("h", "/"), true),
            (without("end-user", re(".*")), Req::get("h", "/"), false),
            (
                without("x-debug", StringMatch::Present),
                Req::get("h", "/"),
                true,
            ),
            (
                without("x-debug", StringMatch::Present),
                Req::get("h", "/").header("x-debug", "1"),
                false,
            ),
        ];
        for (i, (m, req, expected)) in rows.iter().enumerate() {
            assert_eq!(
                matches(m, &req.facts()),
                *expected,
                "row {i}: {:?}",
                m.without_headers
            );
        }
    }

    #[test]
    fn query_parameters_compare_the_first_raw_value() {
        let param = |name: &str, m: StringMatch| HttpMatch {
            query_params: vec![(name.to_string(), m)],
            ..HttpMatch::default()
        };
        let rows: &[(HttpMatch, &str, bool)] = &[
            (param("debug", exact("true")), "/?debug=true", true),
            (param("debug", exact("true")), "/?a=1&debug=true&b", true),
            (
                param("debug", exact("true")),
                "/?debug=false&debug=true",
                false,
            ),
            (param("debug", exact("true")), "/?Debug=true", false),
            (param("debug", exact("true")), "/?debug=TRUE", false),
            (param("debug", exact("true")), "/", false),
            (param("debug", exact("true")), "/?debug=true#frag", true),
            (param("debug", exact("")), "/?debug", true),
            (param("debug", exact("")), "/?debug=", true),
            (param("debug", StringMatch::Present), "/?debug", true),
            (param("debug", StringMatch::Present), "/?other=debug", false),
            (param("q", exact("a b")), "/?q=a%20b", false),
            (param("q", exact("a%20b")), "/?q=a%20b", true),
            (param("q", prefix("ab")), "/?q=abc", true),
            (param("q", re("[0-9]+")), "/?q=42", true),
            (param("q", re("[0-9]+")), "/?q=42a", false),
            (param("q", exact("x=y")), "/?q=x=y", true),
        ];
        for (i, (m, path, expected)) in rows.iter().enumerate() {
            let req = Req::get("h", path);
            assert_eq!(matches(m, &req.facts()), *expected, "row {i}: {path}");
        }
    }

    #[test]
    fn method_scheme_authority_and_port() {
        let rows: Vec<(HttpMatch, Req, bool)> = vec![
            (
                HttpMatch {
                    method: Some(exact("GET")),
                    ..HttpMatch::default()
                },
                Req::get("h", "/"),
                true,
            ),
            (
                HttpMatch {
                    method: Some(exact("get")),
                    ..HttpMatch::default()
                },
                Req::get("h", "/"),
                false,
            ),
            (
                HttpMatch {
                    method: Some(re("GET|HEAD")),
                    ..HttpMatch::default()
                },
                Req::get("h", "/").method(Method::HEAD),
                true,
            ),
            (
                HttpMatch {
                    scheme: Some(exact("https")),
                    ..HttpMatch::default()
                },
                Req::get("h", "/").scheme("https"),
                true,
            ),
            (
                HttpMatch {
                    scheme: Some(exact("https")),
                    ..HttpMatch::default()
                },
                Req::get("h", "/"),
                false,
            ),
            // The authority is compared as sent: port included, case kept.
            (
                HttpMatch {
                    authority: Some(exact("sentences.example.com")),
                    ..HttpMatch::default()
                },
                Req::get("sentences.example.com", "/"),
                true,
            ),
            (
                HttpMatch {
                    authority: Some(exact("sentences.example.com")),
                    ..HttpMatch::default()
                },
                Req::get("sentences.example.com:8080", "/"),
                false,
            ),
            (
                HttpMatch {
                    authority: Some(prefix("sentences.example.com")),
                    ..HttpMatch::default()
                },
                Req::get("sentences.example.com:8080", "/"),
                true,
            ),
            (
                HttpMatch {
                    authority: Some(exact("sentences.example.com")),
                    ..HttpMatch::default()
                },
                Req::get("Sentences.Example.com", "/"),
                false,
            ),
            (
                HttpMatch {
                    port: Some(8080),
                    ..HttpMatch::default()
                },
                Req::get("h", "/"),
                true,
            ),
            (
                HttpMatch {
                    port: Some(8443),
                    ..HttpMatch::default()
                },
                Req::get("h", "/"),
                false,
            ),
            (
                HttpMatch {
                    port: Some(8443),
                    ..HttpMatch::default()
                },
                Req::get("h", "/").port(8443),
                true,
            ),
            // Every condition must hold.
            (
                HttpMatch {
                    uri: Some(prefix("/api")),
                    method: Some(exact("POST")),
                    headers: vec![("x-v".to_string(), exact("2"))],
                    ..HttpMatch::default()
                },
                Req::get("h", "/api/x")
                    .method(Method::POST)
                    .header("x-v", "2"),
                true,
            ),
            (
                HttpMatch {
                    uri: Some(prefix("/api")),
                    method: Some(exact("POST")),
                    headers: vec![("x-v".to_string(), exact("2"))],
                    ..HttpMatch::default()
                },
                Req::get("h", "/api/x").header("x-v", "2"),
                false,
            ),
        ];
        for (i, (m, req, expected)) in rows.iter().enumerate() {
            assert_eq!(matches(m, &req.facts()), *expected, "row {i}");
        }
    }

    #[test]
    fn the_first_rule_that_matches_wins() {
        let rules = vec![
            rule("r0", vec![uri(exact("/login")), uri(prefix("/auth/"))]),
            rule("r1", vec![uri(prefix("/api/"))]),
            rule("r2", vec![uri(prefix("/api/v2/"))]),
            rule("r3", vec![]),
            rule("r4", vec![uri(prefix("/never"))]),
        ];
        let rows: &[(&str, &str, Option<usize>)] = &[
            ("/login", "r0", Some(0)),
            ("/auth/x", "r0", Some(1)),
            ("/api/v2/x", "r1", Some(0)),
            ("/never", "r3", None),
            ("/", "r3", None),
        ];
        for (path, origin, which) in rows {
            let req = Req::get("h", path);
            let (r, hit) = select(&rules, &req.facts()).unwrap();
            assert_eq!(r.origin, *origin, "{path}");
            let hit_index = hit.map(|h| r.matches.iter().position(|m| std::ptr::eq(m, h)).unwrap());
            assert_eq!(hit_index, *which, "{path}");
        }
        let only_api = vec![rule("r1", vec![uri(prefix("/api/"))])];
        assert!(select(&only_api, &Req::get("h", "/").facts()).is_none());
        assert!(select(&[], &Req::get("h", "/").facts()).is_none());
    }

    #[test]
    fn the_virtual_host_comes_first() {
        let rules = vec![
            hosted(
                "a-api",
                &["sentences.example.com"],
                vec![uri(prefix("/api"))],
            ),
            hosted("a-all", &["sentences.example.com"], vec![]),
            hosted("b-all", &["*.example.com"], vec![]),
            hosted("c-x", &["*"], vec![uri(prefix("/x"))]),
            hosted("d", &["SHARED.test"], vec![uri(prefix("/d"))]),
            hosted("e", &["e.test", "shared.test"], vec![uri(prefix("/e"))]),
            hosted("f-any", &[], vec![uri(prefix("/f"))]),
        ];
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("sentences.example.com", "/api/x", Some("a-api")),
            ("sentences.example.com", "/other", Some("a-all")),
            ("Sentences.Example.COM:8080", "/other", Some("a-all")),
            // A more general virtual host is not a fallback for a more specific one...
            ("sentences.example.com", "/x", Some("a-all")),
            ("other.example.com", "/api", Some("b-all")),
            ("a.b.example.com", "/x", Some("b-all")),
            ("example.com", "/x", Some("c-x")),
            ("foo.org", "/x", Some("c-x")),
            // ...so a request its virtual host does not take is 404.
            ("foo.org", "/y", None),
            ("", "/x", Some("c-x")),
            // Rules of several VirtualServices with one host share its virtual host.
            ("shared.test", "/d", Some("d")),
            ("shared.test", "/e", Some("e")),
            ("e.test", "/e", Some("e")),
            ("e.test", "/d", None),
            // No hosts counts as `*`.
            ("foo.org", "/f", Some("f-any")),
        ];
        for (authority, path, expected) in rows {
            let req = Req::get(authority, path);
            let chosen = select(&rules, &req.facts()).map(|(r, _)| r.origin.as_str());
            assert_eq!(chosen, *expected, "{authority} {path}");
        }
        let named_only = vec![hosted("a", &["a.test"], vec![])];
        assert!(select(&named_only, &Req::get("b.test", "/").facts()).is_none());
        assert!(select(&named_only, &Req::get("", "/").facts()).is_none());
        assert_eq!(
            virtual_host(&rules, "x.example.com:443"),
            Some("*.example.com")
        );
        assert_eq!(virtual_host(&rules, "shared.TEST"), Some("SHARED.test"));
        assert_eq!(virtual_host(&named_only, "b.test"), None);
    }

    #[test]
    fn weights_split_by_ticket() {
        let dests: Vec<WeightedDestination> = [10, 0, 30, 60].map(destination).to_vec();
        let rows: &[(u64, usize)] = &[
            (0, 0),
            (9, 0),
            (10, 2),
            (39, 2),
            (40, 3),
            (99, 3),
            // Tickets past the total wrap around: 100 -> 0, 115 -> 15.
            (100, 0),
            (115, 2),
            // u64::MAX % 100 == 15.
            (u64::MAX, 2),
        ];
        for (ticket, expected) in rows {
            assert_eq!(
                pick_weighted_with(&dests, *ticket),
                Some(*expected),
                "ticket {ticket}"
            );
        }
        // Weight 0 is never chosen, whatever the ticket.
        assert!((0..1000).all(|t| pick_weighted_with(&dests, t) != Some(1)));
        assert!((0..200).all(|_| pick_weighted(&dests) != Some(1)));
        // All zero: the first; one destination: it; none: nothing.
        let zeros: Vec<WeightedDestination> = [0, 0].map(destination).to_vec();
        assert_eq!(pick_weighted_with(&zeros, 7), Some(0));
        assert_eq!(pick_weighted(&zeros), Some(0));
        assert_eq!(pick_weighted(&[destination(0)]), Some(0));
        assert_eq!(pick_weighted(&[destination(100)]), Some(0));
        assert_eq!(pick_weighted(&[]), None);
        assert_eq!(pick_weighted_with(&[], 3), None);
        // Huge weights do not overflow.
        let big: Vec<WeightedDestination> = [u32::MAX, u32::MAX].map(destination).to_vec();
        assert_eq!(pick_weighted_with(&big, u64::from(u32::MAX)), Some(1));
    }

    #[test]
    fn facts_split_path_and_query() {
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/a?b=c", "/a", Some("b=c")),
            ("/a?", "/a", Some("")),
            ("/a#f", "/a", None),
            ("/a?b#f", "/a", Some("b")),
            ("/a?b?c", "/a", Some("b?c")),
        ];
        for (pq, path, query) in rows {
            let req = Req::get("h", pq);
            assert_eq!(req.facts().path(), *path, "{pq}");
            assert_eq!(req.facts().query(), *query, "{pq}");
        }
    }
}

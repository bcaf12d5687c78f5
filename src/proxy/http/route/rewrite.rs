//! What a matched rule changes: the path and authority sent upstream (`rewrite`,
//! `headers.request.set: {host: ...}`), the `Location` of a redirect (`redirect`, a server's
//! `httpsRedirect`), and header edits (`headers`).
//!
//! Istio turns `rewrite.uri` into Envoy's `prefix_rewrite`, `redirect` into a
//! `RedirectAction` and `httpsRedirect` into `require_tls: ALL`; the functions reproduce what
//! Envoy then does with the request, including the cases the Istio reference does not spell
//! out (each function's doc names them).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use super::host::strip_port;
use super::{path_only, starts_with, RequestFacts};
use crate::config::{HeaderOps, HttpAction, HttpMatch, Redirect, Rewrite, StringMatch};

/// The request path after `rewrite.uri`, query string kept; `None` when the rule has no `uri`
/// rewrite (or an empty one), or when the result would not be a valid origin-form target
/// (the caller then forwards the path unchanged; configuration should reject a rewrite that
/// does not start with `/`).
///
/// Envoy's `prefix_rewrite` replaces what the route matched: the matched prefix for a
/// `prefix` uri match (the first `prefix.len()` bytes, whatever their case under
/// `ignoreUriCase`), the whole path for `exact` and `regex`, and the leading `/` when the
/// match has no `uri` condition or the rule has no `match` (Istio matches those with prefix
/// `/`). So prefix `/api/` with rewrite `/` turns `/api/users` into `/users`, while prefix
/// `/api` with rewrite `/` turns it into `//users`, and a rule without `uri` rewriting to
/// `/v2` turns `/users` into `/v2users`: Envoy's documented trailing-slash caveat.
pub fn rewrite_path(
    matched: Option<&HttpMatch>,
    rewrite: &Rewrite,
    path_and_query: &str,
) -> Option<String> {
    let new = rewrite.uri.as_deref().filter(|u| !u.is_empty())?;
    let ignore_case = matched.is_some_and(|m| m.ignore_uri_case);
    let replaced = match matched.and_then(|m| m.uri.as_ref()) {
        Some(StringMatch::Prefix(prefix)) => {
            if !starts_with(path_and_query, prefix, ignore_case) {
                return None;
            }
            prefix.len()
        }
        Some(StringMatch::Exact(_) | StringMatch::Regex(_)) => path_only(path_and_query).len(),
        Some(StringMatch::Present) | None => {
            if !path_and_query.starts_with('/') {
                return None;
            }
            1
        }
    };
    let rest = path_and_query.get(replaced..)?;
    let path = format!("{new}{rest}");
    (path.starts_with('/') && path.parse::<PathAndQuery>().is_ok()).then_some(path)
}

/// The authority to send upstream for `destination` (an index into the rule's `route[]`), if
/// the rule changes it: `rewrite.authority`, else a `host`/`:authority` entry of the rule's
/// `headers.request` (`set` before `add`, the last entry of a list winning), and the
/// destination's own `headers.request` entry. With one destination the rule's wins over the
/// destination's; with several the destination's wins: Istio puts the former on the route
/// and the latter on the weighted cluster. `None`: keep the client's authority (also for
/// redirects and direct responses).
pub fn authority_rewrite(rule: &crate::config::HttpRule, destination: usize) -> Option<&str> {
    let HttpAction::Route(action) = &rule.action else {
        return None;
    };
    let on_rule = action
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.as_deref())
        .filter(|a| !a.is_empty())
        .or_else(|| ops_authority(&rule.headers.request));
    let on_destination = action
        .destinations
        .get(destination)
        .and_then(|d| ops_authority(&d.headers.request));
    if action.destinations.len() == 1 {
        on_rule.or(on_destination)
    } else {
        on_destination.or(on_rule)
    }
}

/// The `Location` of a VirtualService `redirect`, as Envoy builds it:
/// - scheme: `redirect.scheme`, else the request's;
/// - port: `redirect.port`, dropped when it is the new scheme's default (Istio never writes
///   `:80` for http or `:443` for https);
/// - host: `redirect.authority` as written (any port of its own dropped when a port is
///   given), else the request's authority, whose port is dropped when a port is given, or
///   when the scheme changes and the port was the default of the request's scheme
///   (`http://a:80` → `https://a`; `http://a:8080` → `https://a:8080`);
/// - path: `redirect.uri` replaces the whole path, whatever the match type, and the request's
///   query string is kept unless `uri` carries its own (Envoy's `path_redirect`; Istio never
///   sets `strip_query`); no `uri` keeps the path and query.
pub fn redirect_location(r: &Redirect, facts: &RequestFacts) -> String {
    let scheme = r
        .scheme
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(facts.scheme);
    let port = r.port.filter(|&p| !is_default_port(scheme, p));
    let host = match r.authority.as_deref().filter(|a| !a.is_empty()) {
        Some(authority) if port.is_some() => strip_port(authority),
        Some(authority) => authority,
        None => request_host(facts, scheme, port.is_some()),
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = redirect_path(r.uri.as_deref(), facts.path_and_query);
    format!("{scheme}://{host}{port}{path}")
}

/// The `Location` Envoy answers (301) for a server with `tls.httpsRedirect`: `https://`, the
/// authority exactly as the client sent it (port included: Envoy's `require_tls` keeps the
/// `Host` header as is, so a client that named `:8080` is sent to `https://host:8080`), then
/// the path and query unchanged.
pub fn https_redirect_location(facts: &RequestFacts) -> String {
    let path = if facts.path_and_query.is_empty() {
        "/"
    } else {
        facts.path_and_query
    };
    format!("https://{}{path}", facts.authority)
}

/// Applies `headers.request` or `headers.response` edits in Envoy's order: `remove`, then
/// `set` (replaces every value), then `add` (appends a value). `host` and pseudo-headers
/// (`:authority`, ...) are not edited here, as Istio drops them from the edits (the authority
/// goes through [`authority_rewrite`]); names or values a header map cannot hold are skipped
/// (configuration validates them), so this never panics. A rule's edits go before its
/// destination's.
pub fn apply_header_ops(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in &ops.remove {
        if let Some(name) = editable_name(name) {
            headers.remove(name);
        }
    }
    for (name, value) in &ops.set {
        if let (Some(name), Ok(value)) = (editable_name(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &ops.add {
        if let (Some(name), Ok(value)) = (editable_name(name), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
}

fn editable_name(name: &str) -> Option<HeaderName> {
    if is_authority_header(name) || name.starts_with(':') {
        return None;
    }
    HeaderName::from_bytes(name.as_bytes()).ok()
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// The authority a list of edits sets: `set` wins over `add`; in a list the last entry wins.
fn ops_authority(ops: &HeaderOps) -> Option<&str> {
    let last = |entries: &'_ [(String, String)]| -> Option<usize> {
        entries
            .iter()
            .rposition(|(name, _)| is_authority_header(name))
    };
    if let Some(i) = last(&ops.set) {
        return Some(ops.set[i].1.as_str());
    }
    last(&ops.add).map(|i| ops.add[i].1.as_str())
}

fn is_default_port(scheme: &str, port: u16) -> bool {
    (scheme.eq_ignore_ascii_case("http") && port == 80)
        || (scheme.eq_ignore_ascii_case("https") && port == 443)
}

/// The request's authority for a redirect (see [`redirect_location`] for when its port goes).
fn request_host<'a>(facts: &RequestFacts<'a>, new_scheme: &str, new_port: bool) -> &'a str {
    let authority = facts.authority;
    let name = strip_port(authority);
    if name.len() == authority.len() {
        return authority;
    }
    let port = &authority[name.len()..];
    let was_default = (facts.scheme.eq_ignore_ascii_case("https") && port == ":443")
        || (facts.scheme.eq_ignore_ascii_case("http") && port == ":80");
    if new_port || (new_scheme != facts.scheme && was_default) {
        name
    } else {
        authority
    }
}

fn redirect_path(uri: Option<&str>, path_and_query: &str) -> String {
    let path = match uri.filter(|u| !u.is_empty()) {
        None => path_and_query.to_string(),
        Some(uri) if uri.contains('?') => uri.to_string(),
        Some(uri) => match path_and_query.find('?') {
            Some(q) => format!("{uri}{}", &path_and_query[q..]),
            None => uri.to_string(),
        },
    };
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::super::tests::{destination, exact, prefix, re, rule, uri, Req};
    use super::*;
    use crate::config::{HeaderEdits, HttpRouteAction, RetryPolicy};

    fn uri_rewrite(to: &str) -> Rewrite {
        Rewrite {
            uri: Some(to.to_string()),
            authority: None,
        }
    }

    #[test]
    fn prefix_rewrites_replace_what_matched() {
        let ignore_case = |m: StringMatch| HttpMatch {
            uri: Some(m),
            ignore_uri_case: true,
            ..HttpMatch::default()
        };
        let no_uri = HttpMatch {
            headers: vec![("x".to_string(), StringMatch::Present)],
            ..HttpMatch::default()
        };
        let rows: Vec<(Option<HttpMatch>, &str, &str, Option<&str>)> = vec![
            // (match, rewrite.uri, request, rewritten)
            (
                Some(uri(prefix("/api/"))),
                "/",
                "/api/users",
                Some("/users"),
            ),
            (
                Some(uri(prefix("/api/"))),
                "/",
                "/api/users?id=7",
                Some("/users?id=7"),
            ),
            (Some(uri(prefix("/api/"))), "/", "/api/", Some("/")),
            (
                Some(uri(prefix("/api"))),
                "/",
                "/api/users",
                Some("//users"),
            ),
            (Some(uri(prefix("/api"))), "/", "/api", Some("/")),
            (
                Some(uri(prefix("/api"))),
                "/v2",
                "/api/users",
                Some("/v2/users"),
            ),
            (Some(uri(prefix("/api"))), "/v2", "/apiary", Some("/v2ary")),
            (
                Some(uri(prefix("/api"))),
                "/v2/",
                "/api?x=1",
                Some("/v2/?x=1"),
            ),
            (
                Some(uri(prefix("/wpcatalog"))),
                "/newcatalog",
                "/wpcatalog/x",
                Some("/newcatalog/x"),
            ),
            (
                Some(ignore_case(prefix("/API/"))),
                "/",
                "/api/Users",
                Some("/Users"),
            ),
            (
                Some(ignore_case(prefix("/Api/"))),
                "/",
                "/aPi/x?Q",
                Some("/x?Q"),
            ),
            (
                Some(uri(prefix("/"))),
                "/app/",
                "/index.html",
                Some("/app/index.html"),
            ),
            // Exact and regex matches: the whole path is replaced, the query kept.
            (
                Some(uri(exact("/consumercatalog"))),
                "/newcatalog",
                "/consumercatalog",
                Some("/newcatalog"),
            ),
            (
                Some(uri(exact("/old"))),
                "/new",
                "/old?a=1&b=2",
                Some("/new?a=1&b=2"),
            ),
            (
                Some(ignore_case(exact("/old"))),
                "/new",
                "/OLD?a",
                Some("/new?a"),
            ),
            (
                Some(uri(re("/usrc(/.*)?"))),
                "/oldcatalog",
                "/usrc/a/b?z",
                Some("/oldcatalog?z"),
            ),
            // No uri condition (or no match at all): Istio's route matches prefix "/".
            (Some(no_uri), "/v2", "/users", Some("/v2users")),
            (None, "/v2/", "/users?x", Some("/v2/users?x")),
            (None, "/", "/users", Some("/users")),
            (Some(uri(StringMatch::Present)), "/v2/", "/a", Some("/v2/a")),
            // Nothing to rewrite.
            (None, "", "/users", None),
            // A prefix that did not match (the caller passed another match) changes nothing.
            (Some(uri(prefix("/api/"))), "/", "/other", None),
            // Results that are not origin-form targets are refused.
            (Some(uri(exact("/a"))), "v2", "/a", None),
            (Some(uri(exact("/a"))), "/has space", "/a", None),
            (None, "/v2", "*", None),
        ];
        for (i, (matched, to, request, expected)) in rows.iter().enumerate() {
            let rewritten = rewrite_path(matched.as_ref(), &uri_rewrite(to), request);
            assert_eq!(
                rewritten.as_deref(),
                *expected,
                "row {i}: {to} on {request}"
            );
        }
        let none = Rewrite::default();
        assert_eq!(rewrite_path(None, &none, "/a"), None);
    }

    fn with_authority(
        rule_ops: HeaderOps,
        rewrite: Option<&str>,
        dests: Vec<HeaderOps>,
    ) -> crate::config::HttpRule {
        let mut r = rule("r", vec![]);
        r.headers.request = rule_ops;
        r.action = HttpAction::Route(HttpRouteAction {
            destinations: dests
                .into_iter()
                .map(|ops| {
                    let mut d = destination(50);
                    d.headers = HeaderEdits {
                        request: ops,
                        response: HeaderOps::default(),
                    };
                    d
                })
                .collect(),
            rewrite: rewrite.map(|a| Rewrite {
                uri: None,
                authority: Some(a.to_string()),
            }),
            timeout: None,
            retries: RetryPolicy {
                attempts: 0,
                per_try_timeout: None,
                retry_on: Vec::new(),
            },
        });
        r
    }

    fn set(pairs: &[(&str, &str)]) -> HeaderOps {
        HeaderOps {
            set: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HeaderOps::default()
        }
    }

    fn add(pairs: &[(&str, &str)]) -> HeaderOps {
        HeaderOps {
            add: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HeaderOps::default()
        }
    }

    #[test]
    fn authority_rewrites_follow_istio_precedence() {
        let rows: Vec<(crate::config::HttpRule, usize, Option<&str>)> = vec![
            (
                with_authority(HeaderOps::default(), None, vec![HeaderOps::default()]),
                0,
                None,
            ),
            (
                with_authority(
                    HeaderOps::default(),
                    Some("r.example"),
                    vec![HeaderOps::default()],
                ),
                0,
                Some("r.example"),
            ),
            (
                with_authority(
                    set(&[("Host", "h.example")]),
                    None,
                    vec![HeaderOps::default()],
                ),
                0,
                Some("h.example"),
            ),
            (
                with_authority(
                    set(&[(":authority", "a.example")]),
                    None,
                    vec![HeaderOps::default()],
                ),
                0,
                Some("a.example"),
            ),
            // rewrite.authority wins over the rule's headers.
            (
                with_authority(
                    set(&[("host", "h.example")]),
                    Some("r.example"),
                    vec![HeaderOps::default()],
                ),
                0,
                Some("r.example"),
            ),
            // set wins over add; the last entry wins.
            (
                with_authority(
                    HeaderOps {
                        set: set(&[("host", "s")]).set,
                        add: add(&[("host", "a")]).add,
                        remove: vec![],
                    },
                    None,
                    vec![HeaderOps::default()],
                ),
                0,
                Some("s"),
            ),
            (
                with_authority(
                    add(&[("host", "a1"), ("host", "a2")]),
                    None,
                    vec![HeaderOps::default()],
                ),
                0,
                Some("a2"),
            ),
            // One destination: the rule's wins, the destination's fills in.
            (
                with_authority(
                    set(&[("host", "rule")]),
                    None,
                    vec![set(&[("host", "dest")])],
                ),
                0,
                Some("rule"),
            ),
            (
                with_authority(HeaderOps::default(), None, vec![set(&[("host", "dest")])]),
                0,
                Some("dest"),
            ),
            // Several destinations: each destination's wins, the rule's fills in.
            (
                with_authority(
                    set(&[("host", "rule")]),
                    None,
                    vec![set(&[("host", "d0")]), HeaderOps::default()],
                ),
                0,
                Some("d0"),
            ),
            (
                with_authority(
                    set(&[("host", "rule")]),
                    None,
                    vec![set(&[("host", "d0")]), HeaderOps::default()],
                ),
                1,
                Some("rule"),
            ),
            (
                with_authority(
                    HeaderOps::default(),
                    None,
                    vec![HeaderOps::default(), HeaderOps::default()],
                ),
                1,
                None,
            ),
            (
                with_authority(set(&[("x-other", "v")]), None, vec![HeaderOps::default()]),
                0,
                None,
            ),
        ];
        for (i, (r, dest, expected)) in rows.iter().enumerate() {
            assert_eq!(authority_rewrite(r, *dest), *expected, "row {i}");
        }
        let mut redirect = rule("redirect", vec![]);
        redirect.headers.request = set(&[("host", "h")]);
        redirect.action = HttpAction::DirectResponse {
            status: 200,
            body: None,
        };
        assert_eq!(authority_rewrite(&redirect, 0), None);
    }

    fn redirect(
        uri: Option<&str>,
        authority: Option<&str>,
        port: Option<u16>,
        scheme: Option<&str>,
    ) -> Redirect {
        Redirect {
            uri: uri.map(str::to_string),
            authority: authority.map(str::to_string),
            port,
            scheme: scheme.map(str::to_string),
            status: 301,
        }
    }

    #[test]
    fn redirects_build_envoys_location() {
        let rows: Vec<(Redirect, Req, &str)> = vec![
            (
                redirect(Some("/v1/bookRatings"), None, None, None),
                Req::get("ratings.example.com", "/v1/getProductRatings"),
                "http://ratings.example.com/v1/bookRatings",
            ),
            // The query is kept unless the new uri has its own.
            (
                redirect(Some("/new"), None, None, None),
                Req::get("h", "/old?a=1"),
                "http://h/new?a=1",
            ),
            (
                redirect(Some("/new?b=2"), None, None, None),
                Req::get("h", "/old?a=1"),
                "http://h/new?b=2",
            ),
            (
                redirect(Some("new"), None, None, None),
                Req::get("h", "/old"),
                "http://h/new",
            ),
            (
                redirect(None, None, None, None),
                Req::get("h:8080", "/same?q"),
                "http://h:8080/same?q",
            ),
            (
                redirect(Some(""), None, None, None),
                Req::get("h", "/same"),
                "http://h/same",
            ),
            // Authority replaced as written.
            (
                redirect(None, Some("new.example.com"), None, None),
                Req::get("old.example.com:8080", "/p"),
                "http://new.example.com/p",
            ),
            (
                redirect(None, Some("new.example.com:9000"), None, None),
                Req::get("old", "/p"),
                "http://new.example.com:9000/p",
            ),
            (
                redirect(None, Some("new.example.com:9000"), Some(7000), None),
                Req::get("old", "/p"),
                "http://new.example.com:7000/p",
            ),
            // A port replaces the request's.
            (
                redirect(None, None, Some(9090), None),
                Req::get("h:8080", "/p"),
                "http://h:9090/p",
            ),
            (
                redirect(None, None, Some(9090), None),
                Req::get("h", "/p"),
                "http://h:9090/p",
            ),
            (
                redirect(None, None, Some(9090), None),
                Req::get("[::1]:8080", "/p"),
                "http://[::1]:9090/p",
            ),
            // The default port of the new scheme is never written...
            (
                redirect(None, None, Some(80), None),
                Req::get("h:8080", "/p"),
                "http://h:8080/p",
            ),
            (
                redirect(None, None, Some(443), Some("https")),
                Req::get("h", "/p"),
                "https://h/p",
            ),
            (
                redirect(None, None, Some(443), None),
                Req::get("h", "/p"),
                "http://h:443/p",
            ),
            // ...and the request's default port goes when the scheme changes.
            (
                redirect(None, None, None, Some("https")),
                Req::get("h:80", "/p"),
                "https://h/p",
            ),
            (
                redirect(None, None, None, Some("https")),
                Req::get("h:8080", "/p"),
                "https://h:8080/p",
            ),
            (
                redirect(None, None, None, Some("https")),
                Req::get("h", "/p"),
                "https://h/p",
            ),
            (
                redirect(None, None, None, Some("http")),
                Req::get("h:443", "/p").scheme("https"),
                "http://h/p",
            ),
            (
                redirect(None, None, None, Some("http")),
                Req::get("h:80", "/p"),
                "http://h:80/p",
            ),
            (
                redirect(None, None, None, None),
                Req::get("h", "/p").scheme("https"),
                "https://h/p",
            ),
            // Everything at once.
            (
                redirect(
                    Some("/login"),
                    Some("auth.example.com"),
                    Some(8443),
                    Some("https"),
                ),
                Req::get("app.example.com:8080", "/private?next=1").method(Method::POST),
                "https://auth.example.com:8443/login?next=1",
            ),
        ];
        for (i, (r, req, expected)) in rows.iter().enumerate() {
            assert_eq!(redirect_location(r, &req.facts()), *expected, "row {i}");
        }
    }

    #[test]
    fn https_redirect_keeps_host_and_target() {
        let rows: &[(&str, &str, &str)] = &[
            (
                "sentences.example.com",
                "/",
                "https://sentences.example.com/",
            ),
            (
                "sentences.example.com",
                "/a/b?c=d",
                "https://sentences.example.com/a/b?c=d",
            ),
            (
                "sentences.example.com:8080",
                "/",
                "https://sentences.example.com:8080/",
            ),
            (
                "Sentences.Example.com",
                "/x",
                "https://Sentences.Example.com/x",
            ),
            ("h", "", "https://h/"),
        ];
        for (authority, target, expected) in rows {
            let req = Req::get(authority, target);
            let location = https_redirect_location(&req.facts());
            assert_eq!(location, *expected);
            assert!(HeaderValue::from_str(&location).is_ok());
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn header_edits_remove_then_set_then_add() {
        let ops = HeaderOps {
            set: vec![
                ("x-set".to_string(), "new".to_string()),
                ("X-Mixed-Case".to_string(), "m".to_string()),
                ("x-twice".to_string(), "one".to_string()),
                ("x-twice".to_string(), "two".to_string()),
            ],
            add: vec![
                ("x-add".to_string(), "appended".to_string()),
                ("x-set".to_string(), "also".to_string()),
                ("x-removed".to_string(), "back".to_string()),
            ],
            remove: vec![
                "x-removed".to_string(),
                "X-Gone".to_string(),
                "x-absent".to_string(),
            ],
        };
        let mut h = map(&[
            ("x-set", "old1"),
            ("x-set", "old2"),
            ("x-add", "first"),
            ("x-removed", "r"),
            ("x-gone", "g"),
            ("x-kept", "k"),
        ]);
        apply_header_ops(&ops, &mut h);
        assert_eq!(values(&h, "x-set"), ["new", "also"]);
        assert_eq!(values(&h, "x-mixed-case"), ["m"]);
        assert_eq!(values(&h, "x-twice"), ["two"]);
        assert_eq!(values(&h, "x-add"), ["first", "appended"]);
        assert_eq!(values(&h, "x-removed"), ["back"]);
        assert!(values(&h, "x-gone").is_empty());
        assert_eq!(values(&h, "x-kept"), ["k"]);
    }

    #[test]
    fn header_edits_skip_what_they_cannot_or_must_not_touch() {
        let ops = HeaderOps {
            set: vec![
                ("host".to_string(), "evil".to_string()),
                (":authority".to_string(), "evil".to_string()),
                ("bad name".to_string(), "v".to_string()),
                ("x-bad-value".to_string(), "line\nbreak".to_string()),
                ("".to_string(), "v".to_string()),
                ("x-ok".to_string(), "ok".to_string()),
            ],
            add: vec![
                (":path".to_string(), "/evil".to_string()),
                ("x-é".to_string(), "v".to_string()),
            ],
            remove: vec![
                "Host".to_string(),
                ":method".to_string(),
                "bad name".to_string(),
            ],
        };
        let mut h = map(&[("host", "kept.example.com")]);
        apply_header_ops(&ops, &mut h);
        assert_eq!(values(&h, "host"), ["kept.example.com"]);
        assert_eq!(values(&h, "x-ok"), ["ok"]);
        assert!(values(&h, "x-bad-value").is_empty());
        assert_eq!(h.len(), 2);
        apply_header_ops(&HeaderOps::default(), &mut h);
        assert_eq!(h.len(), 2);
    }
}

//! Choosing by host name: the gateway server a TLS connection belongs to (by SNI) or a
//! plaintext request belongs to (by its authority), and the `tls[]`/`tcp[]` rule a
//! connection takes.
//!
//! Envoy's rules as Istio sets them up for a gateway:
//! - names compare without ASCII case, and the port of an authority is ignored (Istio sets
//!   `ignore_port_in_host_matching` on gateway route configurations);
//! - the most specific pattern wins whatever the order: an exact name, then the wildcard with
//!   the longest suffix (`*.example.com` covers `a.example.com` and `a.b.example.com`, never
//!   `example.com`), then `*`; equals go to the first in load order;
//! - without a name (a ClientHello without SNI, a request without `Host`) only `*` matches:
//!   Istio gives a server whose hosts include `*` a filter chain without `server_names`, the
//!   only kind a ClientHello without SNI can select; with specific hosts only, such a client
//!   finds no chain and the connection is closed.

use crate::config::{GatewayServer, L4Rule};

/// How specifically a host pattern matches a name; the larger, the more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostSpecificity {
    /// `*`.
    Any,
    /// `*<suffix>`, ranked by the suffix length.
    Suffix(usize),
    /// The name itself.
    Exact,
}

/// Whether `host` (a name or an authority, port ignored) is covered by `pattern` (`*`,
/// `*.example.com` or a name), ASCII case ignored.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    specificity(pattern, host).is_some()
}

/// How specifically `pattern` covers `host` (port ignored, ASCII case ignored); `None` when it
/// does not.
pub fn specificity(pattern: &str, host: &str) -> Option<HostSpecificity> {
    let host = strip_port(host);
    if pattern == "*" {
        return Some(HostSpecificity::Any);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // The wildcard stands for at least one character (Envoy: `*-bar.foo.com` does not
        // cover `-bar.foo.com`).
        let covered = host.len() > suffix.len()
            && host
                .as_bytes()
                .get(host.len() - suffix.len()..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()));
        return covered.then_some(HostSpecificity::Suffix(suffix.len()));
    }
    pattern
        .eq_ignore_ascii_case(host)
        .then_some(HostSpecificity::Exact)
}

/// The best of `patterns` for `host`; without a host only `*` matches.
pub fn best_specificity(patterns: &[String], host: Option<&str>) -> Option<HostSpecificity> {
    match host.filter(|h| !strip_port(h).is_empty()) {
        Some(host) => patterns.iter().filter_map(|p| specificity(p, host)).max(),
        None => patterns
            .iter()
            .any(|p| p == "*")
            .then_some(HostSpecificity::Any),
    }
}

/// The index of the candidate (a list of host patterns each) that covers `host` most
/// specifically; the first among equals. Serves servers by SNI or authority, and any other
/// choice by host (a virtual host's domains, say).
pub fn most_specific<'p>(
    candidates: impl IntoIterator<Item = &'p [String]>,
    host: Option<&str>,
) -> Option<usize> {
    let mut best: Option<(usize, HostSpecificity)> = None;
    for (i, patterns) in candidates.into_iter().enumerate() {
        if let Some(s) = best_specificity(patterns, host) {
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// The server of one port that serves `host`: the SNI of a TLS connection, or the authority
/// of a plaintext HTTP request (its port is ignored). `None` (no SNI and no `*` server, or a
/// name no server lists): refuse the handshake (`no_server`), or answer a request 404.
pub fn server_for_host(servers: &[GatewayServer], host: Option<&str>) -> Option<usize> {
    most_specific(servers.iter().map(|s| s.hosts.as_slice()), host)
}

/// The `tls[]` or `tcp[]` rule a connection on `port` takes: rules whose `port` is unset or
/// equal, then the most specific `sniHosts` for `sni` (each rule is an Envoy filter chain
/// with those server names, so specificity decides, not order); a rule without `sniHosts`
/// takes any connection, like `*`. Equals go to the first in order (Istio keeps the first
/// `tcp[]` rule whose match holds).
pub fn select_l4<'a>(rules: &'a [L4Rule], sni: Option<&str>, port: u16) -> Option<&'a L4Rule> {
    let mut best: Option<(&L4Rule, HostSpecificity)> = None;
    for rule in rules.iter().filter(|r| r.port.is_none_or(|p| p == port)) {
        let s = if rule.sni_hosts.is_empty() {
            Some(HostSpecificity::Any)
        } else {
            best_specificity(&rule.sni_hosts, sni)
        };
        if let Some(s) = s {
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((rule, s));
            }
        }
    }
    best.map(|(rule, _)| rule)
}

/// `host` without a trailing `:port` (`[v6]:port` keeps its brackets); a bare IPv6 address
/// or a name whose "port" is not a number is left whole.
pub fn strip_port(host: &str) -> &str {
    let Some(colon) = host.rfind(':') else {
        return host;
    };
    let (name, port) = (&host[..colon], &host[colon + 1..]);
    let numeric = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let bracketed = name.starts_with('[') && name.ends_with(']');
    if numeric && (bracketed || !name.contains(':')) {
        name
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayProtocol;

    fn server(name: &str, hosts: &[&str]) -> GatewayServer {
        GatewayServer {
            gateway: "istio-system/gw".to_string(),
            name: name.to_string(),
            protocol: GatewayProtocol::Https,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls: None,
            https_redirect: false,
            http: Vec::new(),
            tls_routes: Vec::new(),
            tcp: Vec::new(),
        }
    }

    fn l4(origin: &str, sni_hosts: &[&str], port: Option<u16>) -> L4Rule {
        L4Rule {
            origin: origin.to_string(),
            sni_hosts: sni_hosts.iter().map(|h| h.to_string()).collect(),
            port,
            destinations: Vec::new(),
        }
    }

    #[test]
    fn patterns_cover_names() {
        let rows: &[(&str, &str, Option<HostSpecificity>)] = &[
            (
                "sentences.example.com",
                "sentences.example.com",
                Some(HostSpecificity::Exact),
            ),
            (
                "sentences.example.com",
                "Sentences.EXAMPLE.com",
                Some(HostSpecificity::Exact),
            ),
            (
                "sentences.example.com",
                "sentences.example.com:8443",
                Some(HostSpecificity::Exact),
            ),
            ("sentences.example.com", "sentences.example.com.", None),
            ("sentences.example.com", "other.example.com", None),
            (
                "*.example.com",
                "a.example.com",
                Some(HostSpecificity::Suffix(12)),
            ),
            (
                "*.example.com",
                "a.b.example.com",
                Some(HostSpecificity::Suffix(12)),
            ),
            (
                "*.example.com",
                "A.Example.Com:80",
                Some(HostSpecificity::Suffix(12)),
            ),
            ("*.example.com", "example.com", None),
            ("*.example.com", ".example.com", None),
            ("*.example.com", "aexample.com", None),
            (
                "*-bar.foo.com",
                "baz-bar.foo.com",
                Some(HostSpecificity::Suffix(12)),
            ),
            ("*-bar.foo.com", "-bar.foo.com", None),
            ("*", "anything.at.all", Some(HostSpecificity::Any)),
            ("*", "x:1", Some(HostSpecificity::Any)),
            ("*.é.com", "a.É.com", None),
            ("é.com", "é.com", Some(HostSpecificity::Exact)),
        ];
        for (pattern, host, expected) in rows {
            assert_eq!(specificity(pattern, host), *expected, "{pattern} vs {host}");
            assert_eq!(
                host_matches(pattern, host),
                expected.is_some(),
                "{pattern} vs {host}"
            );
        }
        assert!(HostSpecificity::Exact > HostSpecificity::Suffix(100));
        assert!(HostSpecificity::Suffix(13) > HostSpecificity::Suffix(12));
        assert!(HostSpecificity::Suffix(0) > HostSpecificity::Any);
    }

    #[test]
    fn ports_are_stripped_only_when_they_are_ports() {
        let rows: &[(&str, &str)] = &[
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com:", "example.com:"),
            ("example.com:http", "example.com:http"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
            ("::1", "::1"),
            ("fe80::1:80", "fe80::1:80"),
            ("", ""),
            (":80", ""),
        ];
        for (input, expected) in rows {
            assert_eq!(strip_port(input), *expected, "{input}");
        }
    }

    #[test]
    fn servers_are_chosen_by_the_most_specific_host() {
        let servers = vec![
            server("star", &["*"]),
            server("wild", &["*.example.com"]),
            server("deep", &["*.api.example.com"]),
            server("exact", &["sentences.example.com"]),
            server("exact-again", &["sentences.example.com"]),
            server("multi", &["a.test", "*.other.test"]),
        ];
        let rows: &[(Option<&str>, Option<&str>)] = &[
            (Some("sentences.example.com"), Some("exact")),
            (Some("SENTENCES.example.com:8443"), Some("exact")),
            (Some("x.example.com"), Some("wild")),
            (Some("v1.api.example.com"), Some("deep")),
            (Some("api.example.com"), Some("wild")),
            (Some("example.com"), Some("star")),
            (Some("a.test"), Some("multi")),
            (Some("b.other.test"), Some("multi")),
            (Some("unknown.org"), Some("star")),
            (None, Some("star")),
            (Some(""), Some("star")),
        ];
        for (host, expected) in rows {
            let chosen = server_for_host(&servers, *host).map(|i| servers[i].name.as_str());
            assert_eq!(chosen, *expected, "{host:?}");
        }
    }

    #[test]
    fn without_a_star_server_no_sni_finds_nothing() {
        let servers = vec![
            server("sentences", &["sentences.example.com"]),
            server("wild", &["*.example.com"]),
        ];
        assert_eq!(server_for_host(&servers, None), None);
        assert_eq!(server_for_host(&servers, Some("")), None);
        assert_eq!(server_for_host(&servers, Some("unknown.org")), None);
        assert_eq!(
            server_for_host(&servers, Some("sentences.example.com")),
            Some(0)
        );
        assert_eq!(
            server_for_host(&servers, Some("other.example.com")),
            Some(1)
        );
        assert_eq!(server_for_host(&[], Some("x")), None);
        // A server listing `*` among other hosts takes clients without SNI too.
        let mixed = vec![server("mixed", &["a.example.com", "*"])];
        assert_eq!(server_for_host(&mixed, None), Some(0));
    }

    #[test]
    fn most_specific_serves_any_list_of_domains() {
        let domains: Vec<Vec<String>> = vec![
            vec!["*".to_string()],
            vec!["*.example.com".to_string()],
            vec!["a.example.com".to_string()],
        ];
        let pick = |host| most_specific(domains.iter().map(Vec::as_slice), host);
        assert_eq!(pick(Some("a.example.com")), Some(2));
        assert_eq!(pick(Some("b.example.com")), Some(1));
        assert_eq!(pick(Some("b.org")), Some(0));
        assert_eq!(pick(None), Some(0));
    }

    #[test]
    fn l4_rules_by_port_then_sni() {
        let rules = vec![
            l4("wild", &["*.example.com"], None),
            l4("exact", &["db.example.com"], None),
            l4("other-port", &["db.example.com"], Some(15443)),
            l4("port-only", &[], Some(9443)),
            l4("names", &["a.test", "b.test"], Some(443)),
        ];
        let rows: &[(Option<&str>, u16, Option<&str>)] = &[
            (Some("db.example.com"), 443, Some("exact")),
            (Some("DB.example.com"), 443, Some("exact")),
            (Some("x.example.com"), 443, Some("wild")),
            (Some("db.example.com"), 15443, Some("exact")),
            (Some("b.test"), 443, Some("names")),
            (Some("b.test"), 444, None),
            (Some("c.test"), 443, None),
            (None, 443, None),
            (None, 9443, Some("port-only")),
            (Some("x.example.com"), 9443, Some("wild")),
            (Some("unknown.org"), 9443, Some("port-only")),
        ];
        for (sni, port, expected) in rows {
            let chosen = select_l4(&rules, *sni, *port).map(|r| r.origin.as_str());
            assert_eq!(chosen, *expected, "{sni:?} on {port}");
        }
    }

    #[test]
    fn tcp_rules_go_in_order() {
        let rules = vec![
            l4("first", &[], Some(31400)),
            l4("second", &[], None),
            l4("third", &[], None),
        ];
        assert_eq!(select_l4(&rules, None, 31400).unwrap().origin, "first");
        assert_eq!(
            select_l4(&rules, Some("x"), 31401).unwrap().origin,
            "second"
        );
        assert!(select_l4(&[], None, 1).is_none());
        let star = vec![l4("named", &["a.test"], None), l4("star", &["*"], None)];
        assert_eq!(select_l4(&star, None, 1).unwrap().origin, "star");
        assert_eq!(select_l4(&star, Some("a.test"), 1).unwrap().origin, "named");
    }
}

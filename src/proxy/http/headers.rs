//! Hop-by-hop headers (RFC 9110 §7.6.1): a proxy removes `Connection`, every header the
//! `Connection` header names, and the fixed list below, before forwarding either way. An
//! upgrade keeps `Connection: upgrade` and `Upgrade`, which the next hop needs to answer it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

/// Removed whatever `Connection` says (`TE` is kept when it is exactly `trailers`, which gRPC
/// requires end to end).
const ALWAYS: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers of `headers`; `upgrade` keeps what an upgrade needs.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(connection)
            .filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in ALWAYS {
        if !(upgrade && *name == "upgrade") {
            headers.remove(*name);
        }
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// An HTTP/1 request that asks to switch protocols (`Connection: upgrade` + `Upgrade`), or a
/// `CONNECT`: both continue as a raw tunnel once the app agrees.
pub fn wants_tunnel<B>(req: &Request<B>) -> bool {
    if req.version() >= Version::HTTP_2 {
        return false;
    }
    if req.method() == Method::CONNECT {
        return true;
    }
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| connection_tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Approximate wire size of a header block (`name: value\r\n` per field), for the request
/// and response size metrics.
pub fn wire_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum::<u64>()
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_the_proxy() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("host", "age"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-end-to-end"]);
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-type", "te"]);
    }

    #[test]
    fn an_upgrade_keeps_what_the_app_needs() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn tunnels_are_upgrades_and_connect() {
        let upgrade = Request::get("/")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&upgrade));
        let connect = Request::connect("age:80").body(()).unwrap();
        assert!(wants_tunnel(&connect));
        let plain = Request::get("/").header("upgrade", "x").body(()).unwrap();
        assert!(!wants_tunnel(&plain), "Upgrade without Connection: upgrade");
        let h2 = Request::get("/")
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!wants_tunnel(&h2));
    }
}

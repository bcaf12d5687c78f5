//! Where tokens are found, as Envoy's jwt_authn extractor finds them: header locations
//! (ordered by header name + prefix), then query parameters, then cookies (each ordered by
//! name). A header prefix is searched anywhere in the value (not only at its start); a value
//! without it is skipped (no token there, not an invalid one). Every value of a repeated
//! header is a token; a parameter or cookie gives its first value.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Uri};

/// One place a provider looks for its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenLocation {
    /// `fromHeaders[] {name, prefix}`: the header's value after `prefix` (empty: all of it).
    Header { name: HeaderName, prefix: String },
    /// `fromParams[]`: a query parameter.
    Param(String),
    /// `fromCookies[]`: a cookie.
    Cookie(String),
}

impl TokenLocation {
    /// Istio's default when a rule names no location: `Authorization: Bearer <token>`, then
    /// `?access_token=<token>`.
    pub fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".to_string(),
            },
            TokenLocation::Param("access_token".to_string()),
        ]
    }

    /// Envoy's extraction order: headers, params, cookies; each by its key.
    pub(crate) fn order_key(&self) -> (u8, String) {
        match self {
            TokenLocation::Header { name, prefix } => (0, format!("{}{prefix}", name.as_str())),
            TokenLocation::Param(p) => (1, p.clone()),
            TokenLocation::Cookie(c) => (2, c.clone()),
        }
    }
}

impl std::fmt::Display for TokenLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenLocation::Header { name, prefix } if prefix.is_empty() => {
                write!(f, "header {name}")
            }
            TokenLocation::Header { name, prefix } => write!(f, "header {name}: {prefix:?}"),
            TokenLocation::Param(p) => write!(f, "param {p}"),
            TokenLocation::Cookie(c) => write!(f, "cookie {c}"),
        }
    }
}

/// A token found at `locations[location]`.
#[derive(Debug)]
pub(crate) struct Found<'r> {
    pub location: usize,
    pub token: Cow<'r, str>,
}

/// Every token at `locations` (already in Envoy's order), in order.
pub(crate) fn extract<'r>(
    locations: &[TokenLocation],
    uri: &'r Uri,
    headers: &'r HeaderMap,
) -> Vec<Found<'r>> {
    let mut found = Vec::new();
    for (i, location) in locations.iter().enumerate() {
        match location {
            TokenLocation::Header { name, prefix } => {
                for value in headers.get_all(name) {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    if let Some(token) = after_prefix(value, prefix) {
                        found.push(Found { location: i, token });
                    }
                }
            }
            TokenLocation::Param(name) => {
                if let Some(token) = query_param(uri.query().unwrap_or(""), name) {
                    found.push(Found { location: i, token });
                }
            }
            TokenLocation::Cookie(name) => {
                if let Some(token) = cookie(headers, name) {
                    found.push(Found {
                        location: i,
                        token: Cow::Borrowed(token),
                    });
                }
            }
        }
    }
    found
}

/// Envoy's `extractJWT`: the value from the first base64url-or-dot character after the
/// prefix (wherever the prefix is); the rest of the value as is when there is none.
fn after_prefix<'v>(value: Cow<'v, str>, prefix: &str) -> Option<Cow<'v, str>> {
    if prefix.is_empty() {
        return Some(value);
    }
    let at = value.find(prefix)? + prefix.len();
    let start = value[at..]
        .find(|c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .map(|i| at + i);
    let Some(start) = start else {
        return Some(value);
    };
    Some(match value {
        Cow::Borrowed(v) => Cow::Borrowed(&v[start..]),
        Cow::Owned(v) => Cow::Owned(v[start..].to_string()),
    })
}

/// The first value of query parameter `name`, percent-decoded (keys are compared decoded).
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// `path_and_query` without any `name=...` pair (the token is not forwarded); `None` when
/// `name` is not there.
pub(crate) fn remove_param(path_and_query: &str, name: &str) -> Option<String> {
    let (path, query) = path_and_query.split_once('?')?;
    let mut kept = Vec::new();
    let mut removed = false;
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if percent_decode(key) == name {
            removed = true;
        } else {
            kept.push(pair);
        }
    }
    if !removed {
        return None;
    }
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

/// `%XX` decoded (invalid escapes kept as written; `+` is not a space, as in Envoy).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The first cookie `name` of the `Cookie` headers (surrounding double quotes removed).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim_start().split_once('=')?;
            (key == name).then(|| {
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &'static str, prefix: &str) -> TokenLocation {
        TokenLocation::Header {
            name: HeaderName::from_static(name),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn finds_tokens_where_envoy_does() {
        let locations = [
            header("authorization", "Bearer "),
            header("x-token", ""),
            TokenLocation::Param("access_token".into()),
            TokenLocation::Cookie("session".into()),
        ];
        let mut headers = HeaderMap::new();
        headers.append("authorization", "Basic abc".parse().unwrap());
        headers.append("authorization", "Bearer   a.b.c".parse().unwrap());
        headers.append("authorization", "xBearer d.e.f".parse().unwrap());
        headers.append("x-token", "raw".parse().unwrap());
        headers.append(
            "cookie",
            "a=1; session=\"s.t.u\"; session=no".parse().unwrap(),
        );
        let uri: Uri = "/p?x=1&access%5Ftoken=q%2Er.s&access_token=second"
            .parse()
            .unwrap();
        let found: Vec<(usize, String)> = extract(&locations, &uri, &headers)
            .into_iter()
            .map(|f| (f.location, f.token.into_owned()))
            .collect();
        assert_eq!(
            found,
            [
                (0, "a.b.c".to_string()), // leading spaces after the prefix skipped
                (0, "d.e.f".to_string()), // the prefix anywhere in the value
                (1, "raw".to_string()),
                (2, "q.r.s".to_string()),
                (3, "s.t.u".to_string()),
            ]
        );
    }

    #[test]
    fn removes_the_token_parameter() {
        assert_eq!(
            remove_param("/p?x=1&access_token=t&y=2", "access_token").unwrap(),
            "/p?x=1&y=2"
        );
        assert_eq!(
            remove_param("/p?access_token=t", "access_token").unwrap(),
            "/p"
        );
        assert_eq!(remove_param("/p?access_token=t", "other"), None);
        assert_eq!(remove_param("/p", "access_token"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }

    #[test]
    fn order_follows_envoy() {
        let mut l = [
            TokenLocation::Cookie("c".into()),
            TokenLocation::Param("p".into()),
            header("x-b", ""),
            header("authorization", "Bearer "),
        ];
        l.sort_by_key(TokenLocation::order_key);
        assert_eq!(l[0], header("authorization", "Bearer "));
        assert_eq!(l[3], TokenLocation::Cookie("c".into()));
    }
}

//! Istio's default path normalization (`meshConfig.pathNormalization: BASE`, istio.io
//! `docs/reference/config/security/normalization`), applied before `paths` are matched:
//!
//! - the query (and fragment) is not part of the matched path;
//! - `%00` makes the request a bad request (`400`);
//! - percent-encoded unreserved characters are decoded once (`%2d %2e %30-39 %41-5a %5f
//!   %61-7a %7e`); `%2f`, `%5c` and every other escape stay as they are;
//! - `\` becomes `/`;
//! - dot segments are resolved (RFC 3986 §5.2.4); repeated slashes are kept (merging is off
//!   by default, as in Istio).
//!
//! A path that needs none of this is returned borrowed, so most requests allocate nothing.

use std::borrow::Cow;

/// Why a path cannot be authorized.
pub const NUL_IN_PATH: &str = "the path contains %00";

/// The path as `paths` see it, or why the request is a bad request.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let path = match raw.find(['?', '#']) {
        Some(i) => &raw[..i],
        None => raw,
    };
    let bytes = path.as_bytes();
    let has_percent = bytes.contains(&b'%');
    if has_percent && bytes.windows(3).any(|w| w == b"%00") {
        return Err(NUL_IN_PATH);
    }
    if !has_percent && !bytes.contains(&b'\\') && !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        if b == b'\\' {
            decoded.push('/');
            i += 1;
            continue;
        }
        // Copy one whole character (the path may hold UTF-8 the client sent raw).
        let len = utf8_len(b);
        decoded.push_str(&path[i..(i + len).min(path.len())]);
        i += len;
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 §5.2.4 over `/`-separated segments; a path ending in `.` or `..` keeps its
/// trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    if !has_dot_segment(path) {
        return path.to_string();
    }
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = body.split('/').collect();
    let mut trailing_slash = false;
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    if absolute {
        result.push('/');
    }
    result.push_str(&out.join("/"));
    if trailing_slash && !out.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let table: &[(&str, Result<&str, &str>)] = &[
            ("/foo", Ok("/foo")),
            ("/foo?x=1", Ok("/foo")),        // query ignored for matching
            ("/foo#frag", Ok("/foo")),       // fragment too
            ("/%66oo", Ok("/foo")),          // unreserved decoded once
            ("/%2e%2e/admin", Ok("/admin")), // %2e is a dot: dot segments resolved after
            ("/a/%2E%2E/b", Ok("/b")),       // hex in either case
            ("/a/b/../c", Ok("/a/c")),
            ("/a/./b", Ok("/a/b")),
            ("/a/b/..", Ok("/a/")),
            ("/..", Ok("/")),
            ("/../../x", Ok("/x")),
            ("\\foo\\bar", Ok("/foo/bar")), // backslash is a slash
            ("/a\\..\\b", Ok("/b")),
            ("/a%2fb", Ok("/a%2fb")), // %2f kept (not decoded by default)
            ("/a%5cb", Ok("/a%5cb")), // %5c kept
            ("/a%2Fb", Ok("/a%2Fb")),
            ("/a//b", Ok("/a//b")),   // slash merging off
            ("/%252e", Ok("/%252e")), // decoded once only: %25 is not unreserved
            ("/a%00b", Err(NUL_IN_PATH)),
            ("/%00", Err(NUL_IN_PATH)),
            ("/ok?q=%00", Ok("/ok")), // only the path part counts
            ("/caf\u{e9}/%7euser", Ok("/caf\u{e9}/~user")),
            ("/trailing%", Ok("/trailing%")),
            ("/x%4", Ok("/x%4")),
            ("/%zz", Ok("/%zz")),
            ("/%41%5A%5f%2D%7E%30", Ok("/AZ_-~0")),
        ];
        for (raw, want) in table {
            let got = normalize(raw).map(|p| p.into_owned());
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{raw}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/api/v1/items?x"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a.b/c..d"), Ok(Cow::Borrowed(_))));
    }
}

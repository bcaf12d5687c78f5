//! `application/x-www-form-urlencoded` bodies, as the token endpoint receives them (`curl -d
//! username=alice -d password=alice ...`). Decoded as the WHATWG URL standard says: `&`
//! separates pairs, the first `=` splits name from value, `+` is a space, `%XX` is a byte, and
//! anything malformed (`%zz`, a lone `%`) is kept as written rather than refused; bytes that
//! are not UTF-8 become U+FFFD. So decoding never fails, and a bad value simply does not match
//! a user.

/// The name/value pairs of a form body, in order, empty pairs (`a&&b`) skipped.
pub fn parse(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&pair[..i]), decode(&pair[i + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &str) -> Vec<(String, String)> {
        parse(body.as_bytes())
    }

    #[test]
    fn decodes_as_the_url_standard_does() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            (
                "username=alice&password=alice",
                &[("username", "alice"), ("password", "alice")],
            ),
            ("scope=openid+profile", &[("scope", "openid profile")]),
            ("p=a%26b%3Dc%2B", &[("p", "a&b=c+")]),
            ("p=%C3%A9t%C3%A9", &[("p", "été")]),
            ("p=%E9", &[("p", "\u{FFFD}")]),
            ("p=100%", &[("p", "100%")]),
            ("p=%zz%4", &[("p", "%zz%4")]),
            ("p=a=b", &[("p", "a=b")]),
            ("flag&&x=", &[("flag", ""), ("x", "")]),
            ("%75ser=bob", &[("user", "bob")]),
        ];
        for (body, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(pairs(body), want, "{body:?}");
        }
    }
}

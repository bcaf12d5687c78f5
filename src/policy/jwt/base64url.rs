//! Base64url decoding as Envoy's JWT library reads the three parts of a token
//! (`absl::WebSafeBase64Unescape`): the URL-safe alphabet, padding optional. Hand-written so the
//! request path needs no extra dependency; nothing here panics on any input.

/// Decodes URL-safe base64 with or without `=` padding; `None` on any other character or an
/// impossible length.
pub(crate) fn decode(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let trimmed = match bytes {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        _ => bytes,
    };
    // With padding, the padded length must be a multiple of 4.
    if trimmed.len() != bytes.len() && bytes.len() % 4 != 0 {
        return None;
    }
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut chunks = trimmed.chunks_exact(4);
    for chunk in &mut chunks {
        let n = (u32::from(value(chunk[0])?) << 18)
            | (u32::from(value(chunk[1])?) << 12)
            | (u32::from(value(chunk[2])?) << 6)
            | u32::from(value(chunk[3])?);
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    match chunks.remainder() {
        [] => {}
        [a, b] => {
            let n = (u32::from(value(*a)?) << 18) | (u32::from(value(*b)?) << 12);
            out.push((n >> 16) as u8);
        }
        [a, b, c] => {
            let n = (u32::from(value(*a)?) << 18)
                | (u32::from(value(*b)?) << 12)
                | (u32::from(value(*c)?) << 6);
            out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
        }
        _ => return None,
    }
    Some(out)
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_with_and_without_padding() {
        let table: [(&str, Option<&[u8]>); 11] = [
            ("", Some(b"")),
            ("Zg", Some(b"f")),
            ("Zg==", Some(b"f")),
            ("Zm8", Some(b"fo")),
            ("Zm8=", Some(b"fo")),
            ("Zm9v", Some(b"foo")),
            ("eyJhIjoxfQ", Some(b"{\"a\":1}")),
            ("_-8", Some(&[0xff, 0xef])),
            ("Z", None),
            ("Zm9v+A", None), // standard alphabet is refused
            ("Zg=", None),
        ];
        for (input, want) in table {
            assert_eq!(decode(input).as_deref(), want, "{input:?}");
        }
    }
}

//! Base64url decoding as Envoy's JWT library reads the three parts of a token
//! (`absl::WebSafeBase64Unescape`): the URL-safe alphabet, padding optional (canonical when
//! present), unused low bits of the last character ignored. The `base64` crate's engine,
//! configured for that.

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes URL-safe base64 with or without `=` padding; `None` on any other character or an
/// impossible length.
pub(crate) fn decode(input: &str) -> Option<Vec<u8>> {
    // Padding, when present, must make whole quads (the engine's indifferent mode would also
    // take a partial `=`).
    if input.ends_with('=') && input.len() % 4 != 0 {
        return None;
    }
    ENGINE.decode(input).ok()
}

/// Encodes URL-safe base64 without padding (the tests' tokens).
#[cfg(test)]
pub(crate) fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENGINE.encode(bytes)
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

//! Parsing one compact JWT the way Envoy's `jwt_verify_lib` does (`Jwt::parseFromString`),
//! check by check and in the same order, so a malformed token gets the same reason: three
//! non-empty dot-separated parts, the header (base64url, JSON, `alg`, `kid`), the payload
//! (base64url, JSON object, the types of `iss`, `sub`, `iat`, `nbf`, `exp`, `jti`, `aud`),
//! then the signature's base64url. Then the time window with its clock skew
//! ([`Jwt::check_time`]) and the signature against a key set ([`Jwt::verify`]).

use std::borrow::Cow;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::base64url;
use super::keys::{KeySet, KeyType};
use super::TokenError;

/// The `alg` values outrider verifies: Envoy's, except ES512 (jsonwebtoken's aws-lc backend
/// has no P-521 ECDSA), which is refused as not supported.
fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A parsed (not yet verified) token; borrows the parts of the token text it can.
#[derive(Debug)]
pub(crate) struct Jwt<'t> {
    /// `header.payload` as signed.
    signed: Cow<'t, str>,
    /// The payload part as sent (`outputPayloadToHeader` forwards it as is).
    pub payload_b64: &'t str,
    /// The signature part without `=` padding (jsonwebtoken decodes it unpadded).
    signature_b64: Cow<'t, str>,
    signature_len: usize,
    /// `alg` as written, compared with a key's `alg`.
    alg_text: String,
    alg: Algorithm,
    /// `kid`, empty when absent (as Envoy keeps it).
    pub kid: String,
    /// The payload object.
    pub claims: Map<String, Value>,
    pub nbf: u64,
    pub exp: u64,
    /// `aud` as a list (a string is one audience).
    pub audiences: Vec<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    kid: Option<Value>,
}

impl<'t> Jwt<'t> {
    /// Parses a token; every failure is the reason Envoy gives.
    pub fn parse(token: &'t str) -> Result<Jwt<'t>, TokenError> {
        // absl::StrSplit(jwt, '.', SkipEmpty()): empty parts do not count.
        let mut parts = token.split('.').filter(|p| !p.is_empty());
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::BadFormat);
        };
        let header = base64url::decode(header_b64).ok_or(TokenError::HeaderBadBase64)?;
        let header: RawHeader =
            serde_json::from_slice(&header).map_err(|_| TokenError::HeaderBadJson)?;
        let Some(Value::String(alg_text)) = header.alg else {
            return Err(TokenError::HeaderBadAlg);
        };
        let alg = parse_alg(&alg_text).ok_or(TokenError::HeaderNotImplementedAlg)?;
        let kid = match header.kid {
            None => String::new(),
            Some(Value::String(k)) => k,
            Some(_) => return Err(TokenError::HeaderBadKid),
        };
        let payload = base64url::decode(payload_b64).ok_or(TokenError::PayloadBadBase64)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| TokenError::PayloadBadJson)?;
        for (name, error) in [
            ("iss", TokenError::IssNotString),
            ("sub", TokenError::SubNotString),
        ] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(error);
            }
        }
        unsigned(
            &claims,
            "iat",
            TokenError::IatNotInteger,
            TokenError::IatOutOfRange,
        )?;
        let nbf = unsigned(
            &claims,
            "nbf",
            TokenError::NbfNotInteger,
            TokenError::NbfOutOfRange,
        )?;
        let exp = unsigned(
            &claims,
            "exp",
            TokenError::ExpNotInteger,
            TokenError::ExpOutOfRange,
        )?;
        if claims.get("jti").is_some_and(|v| !v.is_string()) {
            return Err(TokenError::JtiNotString);
        }
        let audiences = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenError::AudNotString)?,
            Some(_) => return Err(TokenError::AudNotString),
        };
        let signature = base64url::decode(signature_b64).ok_or(TokenError::SignatureBadBase64)?;
        let contiguous = header_b64.len() + payload_b64.len() + 1;
        let signed = if token.get(..contiguous).is_some_and(|s| {
            s.starts_with(header_b64)
                && s.ends_with(payload_b64)
                && s.as_bytes()[header_b64.len()] == b'.'
        }) {
            Cow::Borrowed(&token[..contiguous])
        } else {
            Cow::Owned(format!("{header_b64}.{payload_b64}"))
        };
        let unpadded = signature_b64.trim_end_matches('=');
        let signature_b64 = if unpadded.len() == signature_b64.len() {
            Cow::Borrowed(signature_b64)
        } else {
            Cow::Owned(unpadded.to_string())
        };
        Ok(Jwt {
            signed,
            payload_b64,
            signature_b64,
            signature_len: signature.len(),
            alg_text,
            alg,
            kid,
            claims,
            nbf,
            exp,
            audiences,
        })
    }

    /// `iss`, empty when absent.
    pub fn issuer(&self) -> &str {
        self.claims.get("iss").and_then(Value::as_str).unwrap_or("")
    }

    /// Envoy's `verifyTimeConstraint`: not before `nbf - skew`, not after `exp + skew`
    /// (`exp` 0 or absent: no expiry).
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), TokenError> {
        if now.saturating_add(skew) < self.nbf {
            return Err(TokenError::NotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Envoy's `verifyJwtWithoutTimeChecking`: every key whose `kid` (when both have one)
    /// and `alg` (when the key has one) fit is tried; none fits ⇒ `KidAlgMismatch`, none
    /// verifies ⇒ `VerificationFail`.
    pub fn verify(&self, keys: &KeySet) -> Result<(), TokenError> {
        let mut matched = false;
        for key in keys.keys() {
            if !self.kid.is_empty() && key.kid.as_deref().is_some_and(|k| k != self.kid) {
                continue;
            }
            if key.alg.as_deref().is_some_and(|a| a != self.alg_text) {
                continue;
            }
            matched = true;
            let alg = self.alg;
            if key.kty == KeyType::Ed25519 && alg == Algorithm::EdDSA && self.signature_len != 64 {
                return Err(TokenError::Ed25519SignatureWrongLength);
            }
            if !fits(key.kty, alg) {
                continue;
            }
            let ok = jsonwebtoken::crypto::verify(
                &self.signature_b64,
                self.signed.as_bytes(),
                &key.decoding,
                alg,
            );
            if matches!(ok, Ok(true)) {
                return Ok(());
            }
        }
        Err(if matched {
            TokenError::VerificationFail
        } else {
            TokenError::KidAlgMismatch
        })
    }
}

/// Whether a key of type `kty` can check `alg` at all (Envoy tries and fails; asking
/// jsonwebtoken with the wrong family is an error, not a failed check: same outcome).
fn fits(kty: KeyType, alg: Algorithm) -> bool {
    use Algorithm::*;
    match kty {
        KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        // Envoy checks ES256 with the key's curve and SHA-256, ES384 with SHA-384: a P-384
        // key never verifies an ES256 signature and vice versa.
        KeyType::Ec { p256 } => (alg == ES256 && p256) || (alg == ES384 && !p256),
        KeyType::Oct => matches!(alg, HS256 | HS384 | HS512),
        KeyType::Ed25519 => alg == EdDSA,
    }
}

/// A claim read as Envoy's `GetUInt64`: absent ⇒ 0; not a number ⇒ `not_integer`; negative
/// or ≥ 2^64 ⇒ `out_of_range`; a fraction is truncated.
fn unsigned(
    claims: &Map<String, Value>,
    name: &str,
    not_integer: TokenError,
    out_of_range: TokenError,
) -> Result<u64, TokenError> {
    match claims.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            match n.as_f64() {
                Some(f) if (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as u64),
                _ => Err(out_of_range),
            }
        }
        Some(_) => Err(not_integer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64url::encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn malformed_tokens_get_envoys_reasons() {
        let h = r#"{"alg":"RS256"}"#;
        let table: Vec<(String, Option<TokenError>)> = vec![
            ("abc".into(), Some(TokenError::BadFormat)),
            ("a.b".into(), Some(TokenError::BadFormat)),
            ("a.b.c.d".into(), Some(TokenError::BadFormat)),
            ("a..b".into(), Some(TokenError::BadFormat)),
            ("!!.e30.c2ln".into(), Some(TokenError::HeaderBadBase64)),
            (token("not json", "{}"), Some(TokenError::HeaderBadJson)),
            (token("[]", "{}"), Some(TokenError::HeaderBadJson)),
            (token("{}", "{}"), Some(TokenError::HeaderBadAlg)),
            (token(r#"{"alg":1}"#, "{}"), Some(TokenError::HeaderBadAlg)),
            (
                token(r#"{"alg":"none"}"#, "{}"),
                Some(TokenError::HeaderNotImplementedAlg),
            ),
            (
                token(r#"{"alg":"RS256","kid":1}"#, "{}"),
                Some(TokenError::HeaderBadKid),
            ),
            (
                format!("{}.!!.c2ln", b64(h)),
                Some(TokenError::PayloadBadBase64),
            ),
            (token(h, "[1]"), Some(TokenError::PayloadBadJson)),
            (token(h, r#"{"iss":1}"#), Some(TokenError::IssNotString)),
            (token(h, r#"{"sub":true}"#), Some(TokenError::SubNotString)),
            (token(h, r#"{"iat":"x"}"#), Some(TokenError::IatNotInteger)),
            (token(h, r#"{"nbf":-1}"#), Some(TokenError::NbfOutOfRange)),
            (token(h, r#"{"exp":"1"}"#), Some(TokenError::ExpNotInteger)),
            (token(h, r#"{"exp":1e30}"#), Some(TokenError::ExpOutOfRange)),
            (token(h, r#"{"jti":2}"#), Some(TokenError::JtiNotString)),
            (token(h, r#"{"aud":[1]}"#), Some(TokenError::AudNotString)),
            (token(h, r#"{"aud":{}}"#), Some(TokenError::AudNotString)),
            (
                format!("{}.{}.!!", b64(h), b64("{}")),
                Some(TokenError::SignatureBadBase64),
            ),
            (
                token(r#"{"alg":"ES512"}"#, "{}"),
                Some(TokenError::HeaderNotImplementedAlg),
            ),
            (token(h, r#"{"exp":1.9,"aud":"a"}"#), None),
            // empty parts are skipped, as absl::SkipEmpty does
            (format!("{}..{}.c2ln", b64(h), b64("{}")), None),
        ];
        for (t, want) in table {
            assert_eq!(Jwt::parse(&t).err(), want, "{t}");
        }
        let t = token(h, r#"{"exp":1.9,"aud":"a","nbf":3}"#);
        let jwt = Jwt::parse(&t).unwrap();
        assert_eq!(
            (jwt.exp, jwt.nbf, jwt.audiences.as_slice()),
            (1, 3, &["a".to_string()][..])
        );
    }

    #[test]
    fn time_window_with_skew() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"nbf":1000,"exp":2000}"#);
        let jwt = Jwt::parse(&t).unwrap();
        let table = [
            (939, Err(TokenError::NotYetValid)),
            (940, Ok(())),
            (2060, Ok(())),
            (2061, Err(TokenError::Expired)),
        ];
        for (now, want) in table {
            assert_eq!(jwt.check_time(now, 60), want, "{now}");
        }
        let t = token(r#"{"alg":"RS256"}"#, "{}");
        let no_exp = Jwt::parse(&t).unwrap();
        assert_eq!(no_exp.check_time(u64::MAX, 60), Ok(()));
    }
}

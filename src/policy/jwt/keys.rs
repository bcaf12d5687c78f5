//! Verification keys: a parsed JWKS ([`KeySet`]) and the live key set of one remote JWKS
//! source ([`KeySlot`]), shared between the request path (readers) and the fetcher (the one
//! writer).
//!
//! A JWKS is parsed once, when it is loaded or fetched, into ready [`DecodingKey`]s, so a
//! request never parses key material. Keys outrider cannot use (an unknown `kty`, a P-521
//! curve, missing members, an `alg` that contradicts the key type) are skipped and
//! remembered in [`KeySet::skipped`]; a JWKS without any usable key is an error, so a typo
//! in an inline `jwks` fails the load instead of failing every request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::base64url;

/// Why a JWKS document is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or not a JSON object.
    #[error("the JWKS is not a JSON object: {0}")]
    Json(String),
    /// The object has no `keys` array.
    #[error("the JWKS has no \"keys\" array")]
    NoKeys,
    /// Every key was skipped; each entry says which and why.
    #[error("the JWKS has no usable key ({})", if .skipped.is_empty() { "\"keys\" is empty".to_string() } else { .skipped.join("; ") })]
    NoUsableKey { skipped: Vec<String> },
}

/// The key type of a JWK, as verification needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Rsa,
    /// `crv` P-256 (`true`) or P-384.
    Ec {
        p256: bool,
    },
    Oct,
    Ed25519,
}

/// One usable key of a JWKS.
#[derive(Clone)]
pub(crate) struct Key {
    /// `kid`, if the JWK has one (a key without `kid` matches every token).
    pub kid: Option<String>,
    /// `alg` as written, if the JWK has one (it must then equal the token's `alg`).
    pub alg: Option<String>,
    pub kty: KeyType,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.kty)
            .finish_non_exhaustive()
    }
}

/// A parsed JWKS: its usable keys, in document order.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<String>,
    /// A digest of the document, so configurations with other key material differ.
    digest: u64,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Unusable keys are skipped (see
    /// [`KeySet::skipped`]); a document without any usable key is an error.
    pub fn from_json(json: &[u8]) -> Result<KeySet, JwksError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| JwksError::Json(e.to_string()))?;
        let Value::Object(doc) = doc else {
            return Err(JwksError::Json("expected an object".into()));
        };
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeys);
        };
        let mut keys = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match parse_key(entry) {
                Ok(key) => keys.push(key),
                Err(why) => {
                    let kid = entry
                        .get("kid")
                        .and_then(Value::as_str)
                        .map(|k| format!(" (kid {k:?})"))
                        .unwrap_or_default();
                    skipped.push(format!("key {i}{kid}: {why}"));
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            json.hash(&mut h);
            h.finish()
        };
        Ok(KeySet {
            keys,
            skipped,
            digest,
        })
    }

    /// The number of usable keys (never 0).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a `KeySet` has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that were skipped, with the reason (`key 2 (kid "x"): kty "RSA" needs "n"`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// A digest of the JWKS document it was parsed from (a fetcher can skip publishing an
    /// unchanged set; the plan's fingerprint changes with the key material).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Whether a key has this `kid`, or no `kid` at all (such a key matches every token).
    pub fn matches_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.kid.as_deref().is_none_or(|k| k == kid))
    }

    pub(crate) fn keys(&self) -> &[Key] {
        &self.keys
    }
}

/// Builds one key, or says why it is not usable.
fn parse_key(entry: &Value) -> Result<Key, String> {
    let Value::Object(jwk) = entry else {
        return Err("not a JSON object".into());
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("?");
        let value = text(name)?.ok_or_else(|| format!("kty {kty:?} needs \"{name}\""))?;
        match base64url::decode(value) {
            Some(b) if !b.is_empty() => Ok(b),
            Some(_) => Err(format!("\"{name}\" is empty")),
            None => Err(format!("\"{name}\" is not base64url")),
        }
    };
    let kid = text("kid")?.map(str::to_string);
    let alg = text("alg")?.map(str::to_string);
    let kty = text("kty")?.ok_or("no \"kty\"")?;
    let alg_is = |ok: &dyn Fn(&str) -> bool, expected: &str| match alg.as_deref() {
        Some(a) if !ok(a) => Err(format!("alg {a:?} is not {expected} for kty {kty:?}")),
        _ => Ok(()),
    };
    let (kty, decoding) = match kty {
        "RSA" => {
            alg_is(
                &|a| matches!(a, "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"),
                "RS256/384/512 or PS256/384/512",
            )?;
            let n = bytes("n")?;
            let e = bytes("e")?;
            (KeyType::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (p256, len) = match text("crv")? {
                Some("P-256") => (true, 32),
                Some("P-384") => (false, 48),
                Some("P-521") => {
                    return Err("crv \"P-521\" (ES512) is not supported by outrider".into())
                }
                Some(c) => return Err(format!("crv {c:?} is not P-256 or P-384")),
                None => return Err("kty \"EC\" needs \"crv\"".into()),
            };
            let expected = if p256 { "ES256" } else { "ES384" };
            alg_is(&|a| a == expected, expected)?;
            let x = bytes("x")?;
            let y = bytes("y")?;
            if x.len() != len || y.len() != len {
                return Err(format!(
                    "\"x\" and \"y\" must be {len} bytes for crv {:?}",
                    if p256 { "P-256" } else { "P-384" }
                ));
            }
            // The uncompressed point, as the verifier takes it.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (KeyType::Ec { p256 }, DecodingKey::from_ec_der(&point))
        }
        "oct" => {
            alg_is(
                &|a| matches!(a, "HS256" | "HS384" | "HS512"),
                "HS256/384/512",
            )?;
            (KeyType::Oct, DecodingKey::from_secret(&bytes("k")?))
        }
        "OKP" => {
            match text("crv")? {
                Some("Ed25519") => {}
                Some(c) => return Err(format!("crv {c:?} is not Ed25519")),
                None => return Err("kty \"OKP\" needs \"crv\"".into()),
            }
            alg_is(&|a| a == "EdDSA", "EdDSA")?;
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("\"x\" must be 32 bytes for crv \"Ed25519\"".into());
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    Ok(Key {
        kid,
        alg,
        kty,
        decoding,
    })
}

/// The live keys of one remote JWKS source (`jwksUri` or OIDC discovery). Empty until the
/// first successful fetch: every token then fails (fail closed). The request path reads
/// [`KeySlot::current`] and, on a `kid` it does not know, calls
/// [`KeySlot::request_refresh`]; the fetcher publishes new sets and polls
/// [`KeySlot::take_refresh_request`] (rate limiting is the fetcher's job).
#[derive(Debug, Default)]
pub struct KeySlot {
    keys: RwLock<Option<Arc<KeySet>>>,
    refresh: AtomicBool,
}

impl KeySlot {
    /// An empty slot: no key yet, every token fails.
    pub fn new() -> KeySlot {
        KeySlot::default()
    }

    /// Replaces the keys (the fetcher, after a successful fetch).
    pub fn publish(&self, keys: Arc<KeySet>) {
        // A poisoned lock only means a writer panicked mid-assignment of an `Option<Arc>`,
        // which cannot leave it half-written: keep using it.
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
    }

    /// The keys now, if any was ever published.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the fetcher for an early refresh (a token named a `kid` the set does not have).
    pub fn request_refresh(&self) {
        self.refresh.store(true, Ordering::Relaxed);
    }

    /// Whether a refresh was asked for since the last call (and clears the request).
    pub fn take_refresh_request(&self) -> bool {
        self.refresh.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7517 appendix A.1's EC key (P-256) and a short RSA modulus: shapes, not security.
    const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

    fn set(keys: &str) -> Result<KeySet, JwksError> {
        KeySet::from_json(format!("{{\"keys\": [{keys}]}}").as_bytes())
    }

    #[test]
    fn usable_keys_are_kept_and_the_rest_explained() {
        let ks = set(&format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","kid":"ec"}},
               {{"kty":"RSA","n":"AQAB","e":"AQAB","alg":"RS256"}},
               {{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}},
               {{"kty":"EC","crv":"P-521","x":"{EC_X}","y":"{EC_Y}","kid":"big"}},
               {{"kty":"RSA","e":"AQAB"}},
               {{"kty":"RSA","n":"AQAB","e":"AQAB","alg":"ES256"}},
               {{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}","alg":"ES384"}},
               {{"kty":"OKP","crv":"X25519","x":"{EC_X}"}},
               {{"kty":"EC","crv":"P-384","x":"{EC_X}","y":"{EC_Y}"}},
               {{"kty":"foo"}},
               "x""#
        ))
        .unwrap();
        assert_eq!(ks.len(), 3);
        let skipped = ks.skipped().join("\n");
        for expected in [
            "key 3 (kid \"big\"): crv \"P-521\" (ES512) is not supported by outrider",
            "key 4: kty \"RSA\" needs \"n\"",
            "key 5: alg \"ES256\" is not RS256/384/512 or PS256/384/512 for kty \"RSA\"",
            "key 6: alg \"ES384\" is not ES256 for kty \"EC\"",
            "key 7: crv \"X25519\" is not Ed25519",
            "key 8: \"x\" and \"y\" must be 48 bytes for crv \"P-384\"",
            "key 9: kty \"foo\" is not supported",
            "key 10: not a JSON object",
        ] {
            assert!(skipped.contains(expected), "{expected:?} in\n{skipped}");
        }
        assert!(ks.matches_kid("ec"));
        // the RSA and oct keys have no kid: they match any
        assert!(ks.matches_kid("other"));
    }

    #[test]
    fn documents_without_a_usable_key_fail() {
        assert!(matches!(
            KeySet::from_json(b"nope"),
            Err(JwksError::Json(_))
        ));
        assert_eq!(KeySet::from_json(b"{}").unwrap_err(), JwksError::NoKeys);
        let err = set("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the JWKS has no usable key (\"keys\" is empty)"
        );
        let err = set(r#"{"kty":"RSA"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the JWKS has no usable key (key 0: kty \"RSA\" needs \"n\")"
        );
    }

    #[test]
    fn slot_starts_empty_and_carries_refresh_requests() {
        let slot = KeySlot::new();
        assert!(slot.current().is_none());
        assert!(!slot.take_refresh_request());
        slot.request_refresh();
        assert!(slot.take_refresh_request());
        assert!(!slot.take_refresh_request());
        let ks = Arc::new(set(r#"{"kty":"oct","k":"c2VjcmV0","kid":"a"}"#).unwrap());
        slot.publish(ks.clone());
        assert!(Arc::ptr_eq(&slot.current().unwrap(), &ks));
        assert!(!ks.matches_kid("b"));
    }
}

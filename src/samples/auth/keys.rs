//! The issuer's signing keys: RSA 2048 keys (made with rcgen on aws-lc-rs, or loaded from a
//! PEM file), each named by its RFC 7638 thumbprint as `kid`, so a key loaded again after a
//! restart keeps its `kid` and tokens signed before the restart still find their key.
//!
//! A [`KeyRing`] is the current key plus the one before it: tokens are signed with the
//! current key, the JWKS lists both, so a token signed just before a rotation still verifies
//! until it expires (as long as the next rotation waits at least a token lifetime).

use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Why a signing key could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an RSA key: {0}")]
    Generate(rcgen::Error),
    #[error("not an RSA private key in PEM (PKCS#1 or PKCS#8, 2048 bits or more): {0}")]
    NotRsa(jsonwebtoken::errors::Error),
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// One RSA private key with its public half as a JWK.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A fresh RSA 2048 key.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(KeyError::Generate)?;
        SigningKey::from_pem(&key.serialize_pem())
    }

    /// An RSA private key from PEM (`RSA PRIVATE KEY` or `PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(KeyError::NotRsa)?;
        // Also checks the key: aws-lc-rs parses it (and refuses keys under 2048 bits).
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(KeyError::NotRsa)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(SigningKey { kid, encoding, jwk })
    }

    /// The key's id: its RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty: RSA`, `kid`, `alg: RS256`, `use: sig`, `n`, `e`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// A compact RS256 JWS of `claims`, its header naming this key's `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(KeyError::Sign)
    }
}

/// The current signing key and the one it replaced.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Arc<SigningKey>,
    previous: Option<Arc<SigningKey>>,
}

impl KeyRing {
    /// A ring of one key.
    pub fn new(key: SigningKey) -> KeyRing {
        KeyRing {
            current: Arc::new(key),
            previous: None,
        }
    }

    /// The ring after a rotation to `next`: `next` signs, the current key is kept for
    /// verification, the previous one is dropped.
    pub fn rotated(&self, next: SigningKey) -> KeyRing {
        KeyRing {
            current: Arc::new(next),
            previous: Some(self.current.clone()),
        }
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// The public keys a verifier needs: the current key first, then the previous one.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: std::iter::once(&self.current)
                .chain(&self.previous)
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn verify(token: &str, jwks: &JwkSet) -> Result<Claims, jsonwebtoken::errors::Error> {
        let kid = jsonwebtoken::decode_header(token)?.kid.expect("a kid");
        let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|d| d.claims)
    }

    #[test]
    fn a_rotation_signs_with_the_new_key_and_keeps_the_old_one_for_verification() {
        let claims = Claims {
            sub: "alice".into(),
            exp: u64::MAX / 2,
        };
        let ring = KeyRing::new(SigningKey::generate().unwrap());
        let first = ring.current().sign(&claims).unwrap();
        let jwk = serde_json::to_value(ring.current().jwk()).unwrap();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], ring.current().kid());
        assert_eq!(jwk["e"], "AQAB");
        // 2048 bits = 256 bytes = 342 base64url characters without padding.
        assert_eq!(jwk["n"].as_str().unwrap().len(), 342);

        let ring = ring.rotated(SigningKey::generate().unwrap());
        let second = ring.current().sign(&claims).unwrap();
        let (k1, k2) = (kid_of(&first), kid_of(&second));
        assert_ne!(k1, k2);
        let jwks = ring.jwks();
        let kids: Vec<_> = jwks
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert_eq!(kids, [k2.clone(), k1.clone()]);
        assert_eq!(verify(&first, &jwks).unwrap(), claims);
        assert_eq!(verify(&second, &jwks).unwrap(), claims);

        // Two rotations later the first key is gone.
        let ring = ring.rotated(SigningKey::generate().unwrap());
        assert!(ring.jwks().find(&k1).is_none());
        assert!(ring.jwks().find(&k2).is_some());
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    #[test]
    fn a_loaded_key_keeps_its_kid() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let pkcs8 = key.serialize_pem();
        let a = SigningKey::from_pem(&pkcs8).unwrap();
        let b = SigningKey::from_pem(&pkcs8).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 43, "a base64url SHA-256");
    }

    #[test]
    fn other_keys_are_refused() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for pem in [ec.serialize_pem(), "not a key".to_string()] {
            let err = SigningKey::from_pem(&pem).unwrap_err();
            assert!(matches!(err, KeyError::NotRsa(_)), "{err}");
        }
    }
}

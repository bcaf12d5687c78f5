//! Bootstrap tokens: ES256 JWTs signed by a key the CA holds (`token-key.pem`, mode 0600),
//! shaped like Kubernetes service-account tokens (`sub: system:serviceaccount:<ns>:<sa>`,
//! `aud: istio-ca`). A workload presents one in the `authorization: Bearer` metadata to obtain
//! its first certificate; renewals authenticate with the current certificate instead.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;

use crate::ca::{write_file, CaError};

/// The token signing key file of a CA directory (mode 0600).
pub const TOKEN_KEY: &str = "token-key.pem";
/// The audience a bootstrap token must carry (Istio's CA audience).
pub const AUDIENCE: &str = "istio-ca";
/// The issuer written into and required of every token.
pub const ISSUER: &str = "outrider-ca";
/// Clock skew tolerated on `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;

/// Why a token was refused. Every variant maps to gRPC `UNAUTHENTICATED`.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify with this CA's token key")]
    BadSignature,
    #[error("the token's audience is not {AUDIENCE:?}")]
    WrongAudience,
    #[error("the token's issuer is not {ISSUER:?}")]
    WrongIssuer,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error(
        "the token's subject {0:?} is not system:serviceaccount:<namespace>:<service-account>"
    )]
    BadSubject(String),
}

impl TokenError {
    /// A short snake_case label for metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Expired => "token_expired",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::BadSubject(_) => "token_bad_subject",
        }
    }
}

/// The claims outrider writes (a subset of a Kubernetes service-account token's).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
}

/// The service account a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSubject {
    pub namespace: String,
    pub service_account: String,
}

/// The CA's token key: signs and verifies bootstrap tokens.
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A fresh key, never written anywhere (tests: "a token signed by another key").
    pub fn generate() -> Result<TokenKey, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        TokenKey::from_key_pair(&key, Path::new("(generated)"))
    }

    /// Loads `token-key.pem` from the CA directory `dir`, creating it (P-256, mode 0600) when
    /// it does not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<TokenKey, CaError> {
        if !dir.is_dir() {
            return Err(CaError::DirMissing(dir.to_path_buf()));
        }
        let path = dir.join(TOKEN_KEY);
        if !path.exists() {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| CaError::Generate(e.to_string()))?;
            write_file(&path, key.serialize_pem().as_bytes(), 0o600)?;
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| CaError::ReadKey {
            path: path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&pem).map_err(|e| CaError::BadKey {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        TokenKey::from_key_pair(&key, &path)
    }

    fn from_key_pair(key: &KeyPair, path: &Path) -> Result<TokenKey, CaError> {
        let bad = |detail: String| CaError::BadKey {
            path: path.to_path_buf(),
            detail,
        };
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad("the token key must be an ECDSA P-256 key".into()));
        }
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        Ok(TokenKey { encoding, decoding })
    }

    /// A token for `system:serviceaccount:<namespace>:<service_account>` valid for `ttl`.
    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<String, CaError> {
        let now = unix_now();
        self.mint_claims(&Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        })
    }

    /// A token with exactly these claims (tests build expired or foreign tokens with it).
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, CaError> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .map_err(|e| CaError::Generate(format!("cannot sign the token: {e}")))
    }

    /// Verifies signature (ES256 only), issuer, audience, expiry and subject shape.
    pub fn verify(&self, token: &str) -> Result<TokenSubject, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Malformed(e.to_string()),
            },
        )?;
        if data.claims.iat > unix_now().saturating_add(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        parse_subject(&data.claims.sub)
    }
}

fn parse_subject(sub: &str) -> Result<TokenSubject, TokenError> {
    let bad = || TokenError::BadSubject(sub.to_string());
    let rest = sub.strip_prefix("system:serviceaccount:").ok_or_else(bad)?;
    let (namespace, service_account) = rest.split_once(':').ok_or_else(bad)?;
    if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
        return Err(bad());
    }
    Ok(TokenSubject {
        namespace: namespace.into(),
        service_account: service_account.into(),
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = TokenKey::generate().unwrap();
        let token = key.mint("default", "age", Duration::from_secs(60)).unwrap();
        assert_eq!(
            key.verify(&token).unwrap(),
            TokenSubject {
                namespace: "default".into(),
                service_account: "age".into()
            }
        );
        let other = TokenKey::generate().unwrap();
        assert!(matches!(
            other.verify(&token),
            Err(TokenError::BadSignature)
        ));
        let now = unix_now();
        let expired = key
            .mint_claims(&Claims {
                iss: ISSUER.into(),
                sub: "system:serviceaccount:default:age".into(),
                aud: AUDIENCE.into(),
                iat: now - 120,
                exp: now - 60,
            })
            .unwrap();
        assert!(matches!(key.verify(&expired), Err(TokenError::Expired)));
        let wrong_aud = key
            .mint_claims(&Claims {
                iss: ISSUER.into(),
                sub: "system:serviceaccount:default:age".into(),
                aud: "kubernetes".into(),
                iat: now,
                exp: now + 60,
            })
            .unwrap();
        assert!(matches!(
            key.verify(&wrong_aud),
            Err(TokenError::WrongAudience)
        ));
        let bad_sub = key
            .mint_claims(&Claims {
                iss: ISSUER.into(),
                sub: "age".into(),
                aud: AUDIENCE.into(),
                iat: now,
                exp: now + 60,
            })
            .unwrap();
        assert!(matches!(
            key.verify(&bad_sub),
            Err(TokenError::BadSubject(_))
        ));
        assert!(matches!(
            key.verify("garbage"),
            Err(TokenError::Malformed(_))
        ));
    }
}

//! The resource owner password grant (RFC 6749 §4.3) as a pure decision: the form fields of a
//! token request, the users, the signing key and the time in; an access token or an OAuth
//! error (§5.2) out. No I/O, so every answer is table-tested here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::keys::SigningKey;
use super::users::{User, Users, DEFAULT_SCOPE};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The username.
    pub sub: String,
    /// The user's configured audience, else the `client_id`.
    pub aud: String,
    /// The `client_id` that asked.
    pub azp: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub scope: String,
    pub preferred_username: String,
}

impl Claims {
    /// The claims of a token for `user`, asked for by `client_id` at `now`.
    pub fn new(
        issuer: &str,
        user: &User,
        client_id: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Claims {
        use rand::Rng;
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Claims {
            iss: issuer.to_string(),
            sub: user.username.clone(),
            aud: user
                .audience
                .clone()
                .unwrap_or_else(|| client_id.to_string()),
            azp: client_id.to_string(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            jti: format!("{:032x}", rand::rng().random::<u128>()),
            scope: user
                .scope
                .clone()
                .unwrap_or_else(|| DEFAULT_SCOPE.to_string()),
            preferred_username: user.username.clone(),
        }
    }
}

/// Why a token request was refused: an OAuth 2.0 error (RFC 6749 §5.2); the message is its
/// `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("grant_type {0:?} is not supported (only \"password\")")]
    UnsupportedGrantType(String),
    /// Keycloak's words for a wrong username or password.
    #[error("Invalid user credentials")]
    InvalidGrant,
    /// Our fault: the token could not be signed.
    #[error("cannot sign the token: {0}")]
    Internal(String),
}

impl Refusal {
    /// 400, or 401 for bad credentials (as Keycloak answers; §5.2 says 400), 500 for ours.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::InvalidRequest(_) | Refusal::UnsupportedGrantType(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::InvalidGrant => StatusCode::UNAUTHORIZED,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::UnsupportedGrantType(_) => "unsupported_grant_type",
            Refusal::InvalidGrant => "invalid_grant",
            Refusal::Internal(_) => "server_error",
        }
    }
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct Granted {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

/// What the grant needs besides the request: plain settings.
#[derive(Debug)]
pub struct PasswordGrant {
    /// The `iss` of the tokens.
    pub issuer: String,
    pub users: Users,
    /// Token lifetime (whole seconds).
    pub ttl: Duration,
}

impl PasswordGrant {
    /// Decides a token request: its form fields, signed with `key`, at `now`.
    pub fn decide(
        &self,
        form: &[(String, String)],
        key: &SigningKey,
        now: SystemTime,
    ) -> Result<Granted, Refusal> {
        // RFC 6749 §3.2: parameters must not be included more than once.
        let field = |name: &str| -> Result<Option<&str>, Refusal> {
            let mut values = form
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let first = values.next();
            if values.next().is_some() {
                return Err(Refusal::InvalidRequest(format!(
                    "parameter {name} is repeated"
                )));
            }
            Ok(first)
        };
        let required = |name: &str| {
            field(name)?
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Refusal::InvalidRequest(format!("missing parameter: {name}")))
        };
        let grant = required("grant_type")?;
        if grant != "password" {
            return Err(Refusal::UnsupportedGrantType(grant.to_string()));
        }
        let client_id = required("client_id")?;
        let (username, password) = (required("username")?, required("password")?);
        let Some(user) = self.users.authenticate(username, password) else {
            tracing::info!(%username, %client_id, "token refused: invalid user credentials");
            return Err(Refusal::InvalidGrant);
        };
        let claims = Claims::new(&self.issuer, user, client_id, self.ttl, now);
        let access_token = key
            .sign(&claims)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        tracing::info!(%username, %client_id, aud = %claims.aud, kid = key.kid(), "token issued");
        Ok(Granted {
            access_token,
            token_type: "Bearer",
            expires_in: self.ttl.as_secs(),
            scope: claims.scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    use super::*;
    use crate::samples::auth::form;
    use crate::samples::auth::keys::KeyRing;

    const ISSUER: &str = "http://auth:8080/auth/realms/mesh";

    fn grant(users: Users) -> PasswordGrant {
        PasswordGrant {
            issuer: ISSUER.into(),
            users,
            ttl: Duration::from_secs(300),
        }
    }

    fn fields(body: &str) -> Vec<(String, String)> {
        form::parse(body.as_bytes())
    }

    #[test]
    fn decides_as_rfc_6749_says() {
        let grant = grant(Users::default());
        let key = SigningKey::generate().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let bad = |s: &str| Some(Refusal::InvalidRequest(s.into()));
        let cases: &[(&str, Option<Refusal>)] = &[
            (
                "grant_type=password&username=alice&password=alice&client_id=frontend",
                None,
            ),
            (
                "grant_type=password&username=bob&password=bob&client_id=x&scope=email",
                None,
            ),
            (
                "grant_type=password&username=alice&password=bob&client_id=frontend",
                Some(Refusal::InvalidGrant),
            ),
            (
                "grant_type=password&username=mallory&password=mallory&client_id=frontend",
                Some(Refusal::InvalidGrant),
            ),
            (
                "grant_type=client_credentials&client_id=frontend",
                Some(Refusal::UnsupportedGrantType("client_credentials".into())),
            ),
            (
                "username=alice&password=alice&client_id=frontend",
                bad("missing parameter: grant_type"),
            ),
            (
                "grant_type=password&username=alice&password=alice",
                bad("missing parameter: client_id"),
            ),
            (
                "grant_type=password&password=alice&client_id=f",
                bad("missing parameter: username"),
            ),
            (
                "grant_type=password&username=alice&password=&client_id=f",
                bad("missing parameter: password"),
            ),
            (
                "grant_type=password&username=alice&username=bob&password=alice&client_id=f",
                bad("parameter username is repeated"),
            ),
        ];
        for (body, want) in cases {
            match (grant.decide(&fields(body), &key, now), want) {
                (Ok(granted), None) => {
                    assert_eq!(granted.token_type, "Bearer");
                    assert_eq!(granted.expires_in, 300);
                    assert_eq!(granted.scope, "openid profile", "{body}");
                }
                (Err(got), Some(want)) => assert_eq!(&got, want, "{body}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(Refusal::InvalidGrant.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            Refusal::UnsupportedGrantType("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn tokens_carry_the_claims_and_verify_against_the_jwks() {
        let users = Users::parse(
            Path::new("users.yaml"),
            "users:\n  - { username: carol, password: c, audience: age, scope: openid email }\n",
        )
        .unwrap();
        let grant = grant(users);
        let ring = KeyRing::new(SigningKey::generate().unwrap());
        let body = "grant_type=password&username=carol&password=c&client_id=frontend";
        let granted = grant
            .decide(&fields(body), ring.current(), SystemTime::now())
            .unwrap();
        assert_eq!(granted.scope, "openid email");
        let header = jsonwebtoken::decode_header(&granted.access_token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        let jwks = ring.jwks();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["age"]);
        validation.set_issuer(&[ISSUER]);
        let claims = jsonwebtoken::decode::<Claims>(
            &granted.access_token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims.sub, "carol");
        assert_eq!(claims.preferred_username, "carol");
        assert_eq!(claims.aud, "age");
        assert_eq!(claims.azp, "frontend");
        assert_eq!(claims.scope, "openid email");
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(claims.jti.len(), 32);
    }
}

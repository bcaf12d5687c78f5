//! `outrider sample-app --service auth`: a small OpenID Connect issuer for the labs, so that
//! RequestAuthentication has someone to trust. **A sample, not a product identity provider**:
//! plain-text passwords from a YAML file, one grant, anyone may rotate its key, no refresh
//! tokens, no ID tokens, no login page, no client registry (any `client_id` is accepted).
//!
//! It answers at Keycloak's URLs, because the labs' commands use them (`<realm>` is `mesh` by
//! default):
//! - `GET /auth/realms/<realm>/.well-known/openid-configuration` — the discovery document
//!   (`issuer`, `jwks_uri`, `token_endpoint`, ...); the endpoint URLs are the issuer URL plus
//!   their path, as Keycloak writes them;
//! - `GET /auth/realms/<realm>/protocol/openid-connect/certs` — the JWKS;
//! - `POST /auth/realms/<realm>/protocol/openid-connect/token` — the resource owner password
//!   grant (RFC 6749 §4.3), form fields `grant_type=password`, `username`, `password`,
//!   `client_id`; answers `{access_token, token_type: "Bearer", expires_in, scope}`, or an
//!   OAuth error (§5.2): 400 `invalid_request` / `unsupported_grant_type`, and 401
//!   `invalid_grant` for bad credentials (401 rather than §5.2's 400, as Keycloak answers);
//! - `POST /auth/realms/<realm>/rotate` — a new signing key (also on SIGHUP); answers
//!   `{"kid": <new>, "previous": <old>}`;
//! - `GET /health_check`, `/healthz` — `ok`, as every sample service.
//!
//! Access tokens are RS256 JWTs with `kid` in the header and the claims of
//! [`grant::Claims`]: `iss`, `sub` (the username), `aud` (the user's configured audience, else
//! the `client_id`), `azp` (the `client_id`), `iat`, `exp`, `jti`, `scope`,
//! `preferred_username`. The grant's decisions are in [`grant`], keys in [`keys`], users in
//! [`users`].

mod form;
pub mod grant;
pub mod keys;
pub mod users;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use grant::{PasswordGrant, Refusal};
use keys::{KeyError, KeyRing, SigningKey};
use users::{Users, UsersError};

/// The largest token request body read (a form of four short fields).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Deadline for a client to send its request head, and then its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;

/// How the issuer is set up (`outrider sample-app --service auth` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The realm in the URLs: `/auth/realms/<realm>/...`.
    pub realm: String,
    /// The `iss` of the tokens; `http://<listen address>/auth/realms/<realm>` when absent
    /// (`localhost` for an unspecified listen address such as 0.0.0.0).
    pub issuer: Option<String>,
    /// A users file; alice/alice and bob/bob when absent.
    pub users: Option<PathBuf>,
    /// An RSA private key (PEM) to sign with; a new RSA 2048 key when absent.
    pub key: Option<PathBuf>,
    /// Lifetime of the access tokens (whole seconds, at least one).
    pub token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            realm: "mesh".into(),
            issuer: None,
            users: None,
            key: None,
            token_ttl: Duration::from_secs(300),
        }
    }
}

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--realm {0:?}: use letters, digits, '.', '_' or '-'")]
    Realm(String),
    #[error("--issuer {0:?}: must be an http:// or https:// URL without query or fragment")]
    Issuer(String),
    #[error("--token-ttl {0:?}: must be at least one second")]
    TokenTtl(Duration),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("cannot read the key file {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {}: {source}", path.display())]
    LoadKey { path: PathBuf, source: KeyError },
    #[error(transparent)]
    NewKey(KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The issuer, bound and ready to serve.
pub struct Issuer {
    listener: TcpListener,
    realm: Arc<Realm>,
}

impl Issuer {
    /// Checks the configuration, loads the users and the key (or makes one), and binds.
    pub async fn bind(listen: SocketAddr, config: &AuthConfig) -> Result<Issuer, AuthError> {
        let realm = &config.realm;
        let realm_ok = !realm.is_empty()
            && realm
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !realm_ok {
            return Err(AuthError::Realm(realm.clone()));
        }
        if config.token_ttl < Duration::from_secs(1) {
            return Err(AuthError::TokenTtl(config.token_ttl));
        }
        let users = match &config.users {
            Some(path) => Users::load(path)?,
            None => Users::default(),
        };
        let key = match &config.key {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|source| AuthError::ReadKey {
                    path: path.clone(),
                    source,
                })?;
                SigningKey::from_pem(&pem).map_err(|source| AuthError::LoadKey {
                    path: path.clone(),
                    source,
                })?
            }
            None => generate_key().await.map_err(AuthError::NewKey)?,
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| AuthError::Bind {
                addr: listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| AuthError::Bind {
            addr: listen,
            source,
        })?;
        let prefix = format!("/auth/realms/{realm}");
        let issuer = match &config.issuer {
            Some(url) => parse_issuer(url)?,
            None if local.ip().is_unspecified() => {
                format!("http://localhost:{}{prefix}", local.port())
            }
            None => format!("http://{local}{prefix}"),
        };
        if !issuer.ends_with(&prefix) {
            tracing::warn!(
                %issuer,
                "the issuer URL does not end with {prefix}: the discovery document's endpoint \
                 URLs (issuer + path) only reach this server through a proxy that maps them"
            );
        }
        tracing::info!(
            %issuer,
            kid = key.kid(),
            users = ?users.names().collect::<Vec<_>>(),
            ttl = ?config.token_ttl,
            "OIDC issuer for the labs (a sample, not a product identity provider)"
        );
        Ok(Issuer {
            listener,
            realm: Arc::new(Realm {
                prefix,
                grant: PasswordGrant {
                    issuer,
                    users,
                    ttl: config.token_ttl,
                },
                keys: Mutex::new(KeyRing::new(key)),
            }),
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The issuer URL, the `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.realm.grant.issuer
    }

    /// The `kid` new tokens are signed with.
    pub fn kid(&self) -> String {
        self.realm.keys().current().kid().to_string()
    }

    /// Serves HTTP/1.1 until the task is dropped; SIGHUP rotates the signing key.
    pub async fn run(self) {
        #[cfg(unix)]
        tokio::spawn(rotate_on_sighup(self.realm.clone()));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let realm = self.realm.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let realm = realm.clone();
                    async move { Ok::<_, Infallible>(realm.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(permit);
            });
        }
    }
}

/// Makes an RSA key off the async threads (it takes a noticeable fraction of a second).
async fn generate_key() -> Result<SigningKey, KeyError> {
    tokio::task::spawn_blocking(SigningKey::generate)
        .await
        .expect("key generation does not panic")
}

fn parse_issuer(url: &str) -> Result<String, AuthError> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(['?', '#'])
                && !rest.contains(char::is_whitespace) =>
        {
            Ok(url.to_string())
        }
        _ => Err(AuthError::Issuer(url.to_string())),
    }
}

#[cfg(unix)]
async fn rotate_on_sighup(realm: Arc<Realm>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!("SIGHUP will not rotate the key: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        if let Err(e) = realm.rotate().await {
            tracing::error!("SIGHUP: {e}");
        }
    }
}

/// The issuer's state: plain settings plus the key ring (its one writer is [`Realm::rotate`]).
struct Realm {
    /// `/auth/realms/<realm>`.
    prefix: String,
    grant: PasswordGrant,
    keys: Mutex<KeyRing>,
}

impl Realm {
    /// A snapshot of the key ring.
    fn keys(&self) -> KeyRing {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes a new key and signs with it from now on; returns (new kid, previous kid).
    async fn rotate(&self) -> Result<(String, String), KeyError> {
        let next = generate_key().await?;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let previous = keys.current().kid().to_string();
        *keys = keys.rotated(next);
        let kid = keys.current().kid().to_string();
        tracing::info!(%kid, %previous, "signing key rotated; the JWKS lists both");
        Ok((kid, previous))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path == "/health_check" || path == "/healthz" {
            return text(StatusCode::OK, "ok");
        }
        let Some(route) = path.strip_prefix(&self.prefix) else {
            return text(StatusCode::NOT_FOUND, "not found");
        };
        let allowed = match route {
            "/.well-known/openid-configuration" | "/protocol/openid-connect/certs" => Method::GET,
            "/protocol/openid-connect/token" | "/rotate" => Method::POST,
            _ => return text(StatusCode::NOT_FOUND, "not found"),
        };
        if req.method() != allowed {
            let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            answer.headers_mut().insert(
                header::ALLOW,
                allowed
                    .as_str()
                    .parse()
                    .expect("a method is a header value"),
            );
            return answer;
        }
        match route {
            "/.well-known/openid-configuration" => {
                json(StatusCode::OK, &discovery(&self.grant.issuer))
            }
            "/protocol/openid-connect/certs" => json(StatusCode::OK, &self.keys().jwks()),
            "/rotate" => match self.rotate().await {
                Ok((kid, previous)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "kid": kid, "previous": previous }),
                ),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            _ => {
                let form = match read_form(req).await {
                    Ok(form) => form,
                    Err(refusal) => return oauth_error(&refusal),
                };
                let keys = self.keys();
                match self.grant.decide(&form, keys.current(), SystemTime::now()) {
                    Ok(granted) => no_store(json(StatusCode::OK, &granted)),
                    Err(refusal) => oauth_error(&refusal),
                }
            }
        }
    }
}

/// The discovery document: the endpoints are the issuer URL plus their path, as Keycloak's.
fn discovery(iss: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/protocol/openid-connect/certs"),
        "token_endpoint": format!("{iss}/protocol/openid-connect/token"),
        "grant_types_supported": ["password"],
        "token_endpoint_auth_methods_supported": ["none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile"],
        "claims_supported": [
            "iss", "sub", "aud", "azp", "iat", "exp", "jti", "scope", "preferred_username"
        ],
    })
}

/// The form fields of a token request (`application/x-www-form-urlencoded`, at most
/// [`MAX_FORM_BYTES`], within [`REQUEST_TIMEOUT`]).
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Refusal> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(Refusal::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES).collect();
    match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
        Ok(Ok(body)) => Ok(form::parse(&body.to_bytes())),
        Ok(Err(e)) => Err(Refusal::InvalidRequest(format!(
            "cannot read the body (at most {MAX_FORM_BYTES} bytes): {e}"
        ))),
        Err(_) => Err(Refusal::InvalidRequest(format!(
            "the body did not arrive within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

fn oauth_error(refusal: &Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": refusal.code(),
        "error_description": refusal.to_string(),
    });
    no_store(json(refusal.status(), &body))
}

/// Token answers must not be cached (RFC 6749 §5.1).
fn no_store(mut answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = answer.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
    answer
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("our answers serialize");
    response(status, "application/json", body.into())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(
        status,
        "text/plain",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_document_points_below_the_issuer() {
        let iss = "http://auth:8080/auth/realms/mesh";
        let doc = discovery(iss);
        assert_eq!(doc["issuer"], iss);
        assert_eq!(
            doc["jwks_uri"],
            format!("{iss}/protocol/openid-connect/certs")
        );
        assert_eq!(
            doc["token_endpoint"],
            format!("{iss}/protocol/openid-connect/token")
        );
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256"])
        );
        assert_eq!(
            doc["grant_types_supported"],
            serde_json::json!(["password"])
        );
    }

    #[test]
    fn issuer_urls() {
        let ok = |u: &str| parse_issuer(u).unwrap();
        assert_eq!(
            ok("http://auth:8080/auth/realms/mesh/"),
            "http://auth:8080/auth/realms/mesh"
        );
        assert_eq!(ok("https://idp.example.com"), "https://idp.example.com");
        for bad in [
            "auth:8080",
            "ftp://x",
            "http://",
            "http:///x",
            "http://a/b?c",
            "http://a b",
        ] {
            assert!(parse_issuer(bad).is_err(), "{bad}");
        }
    }
}

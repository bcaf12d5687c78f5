//! End-user authentication (Istio's RequestAuthentication, SEMANTICS §5) as a pure decision:
//! the configuration compiles the `jwtRules` that apply to one workload into an
//! [`Authenticator`]; the HTTP data path asks it once per request and acts on the
//! [`AuthnOutcome`]. No I/O happens here: the clock is a parameter and remote keys arrive
//! through a [`KeySlot`] that a fetcher fills.
//!
//! # Wiring it
//! ```text
//! let authn = &inbound_plan.authentication;             // Arc<Authenticator>
//! match authn.authenticate(req.method(), req.uri(), req.headers(), SystemTime::now()) {
//!     AuthnOutcome::Anonymous(edits) => { edits.apply(&mut parts); /* authz with auth = None */ }
//!     AuthnOutcome::Authenticated(auth, edits) => {
//!         edits.apply(&mut parts);
//!         authorizer.check_request_with_auth(&conn, &request, Some(&auth));
//!     }
//!     AuthnOutcome::Reject { status, reason, www_authenticate } => {
//!         // `status` (401, or 403 for an audience mismatch), body `reason`,
//!         // header `www-authenticate: <www_authenticate>`; authorization is not asked.
//!     }
//! }
//! ```
//! A fetcher keeps the remote keys: for each `(source, timeout, slot)` of
//! [`Authenticator::remote_sources`] it fetches the JWKS (`jwksUri`, or the `jwks_uri` of
//! the issuer's OIDC discovery document), parses it with [`KeySet::from_json`] and
//! [`KeySlot::publish`]es it; it polls [`KeySlot::take_refresh_request`] for early refreshes
//! (a token named a `kid` the set lacks). Until the first publish every token fails.
//!
//! # The rules (Envoy's jwt_authn filter as Istio configures it)
//! - Tokens are looked for at each provider's locations ([`TokenLocation`]); no token
//!   anywhere ⇒ [`AuthnOutcome::Anonymous`].
//! - A provider accepts the request when every token at its locations is valid for it: `iss`
//!   equal to its issuer (any when it has none), the time window (`nbf`/`exp`, 60 s skew,
//!   `exp` optional), `aud` meeting its audiences (none configured ⇒ not checked; `https://`
//!   and a trailing `/` ignored, as Envoy does), and a signature by one of its keys (a key
//!   fits when its `kid` and `alg`, if any, equal the token's).
//! - When no provider accepts, Istio's requirement `OR(P1..Pn, AND(OR(Pi, allow_missing)))`
//!   decides: for each provider in order, its tokens are checked as `allow_missing` does
//!   (the issuer must be the provider's; the keys are those of the first provider with that
//!   issuer) and the outcome is the first token's; the first failure rejects with Envoy's
//!   reason, else the request goes on (with the identity of a valid token, if any).
//! - `Reject`: 401 with Envoy's text ([`TokenError`]), 403 for `Audiences in Jwt are not
//!   allowed`; `www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"`
//!   (the scheme is `x-forwarded-proto` when set, else the URI's, else `http`).
//! - A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is never
//!   checked. Client-sent copies of the output headers (`outputPayloadToHeader`,
//!   `outputClaimToHeaders`) are always removed, so the app can trust them.
//!
//! Algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA (Ed25519), HS256/384/512.
//! **ES512 is the one missing**: the crypto backend (jsonwebtoken on aws-lc-rs) has no P-521
//! ECDSA, so an ES512 token is refused with `Jwt header [alg] is not supported` and a P-521
//! key of a JWKS is skipped.
//!
//! Deliberate differences from Envoy: header edits come only from the accepting provider's
//! tokens (Envoy may already have edited headers for an earlier provider that then failed);
//! output headers of every provider are sanitized (Envoy only those of the providers it ran).

mod base64url;
mod extract;
pub mod keys;
mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::Value;

pub use extract::TokenLocation;
pub use keys::{JwksError, KeySet, KeySlot};

use extract::Found;
use token::Jwt;

/// Envoy's default clock skew on `exp` and `nbf`.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Envoy's cap on the path written into `www-authenticate`'s realm.
const MAX_REALM_PATH: usize = 256;

/// Claims always matched as space-separated lists (Istio adds them to every rule).
const ALWAYS_SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Why a token was refused; `Display` is Envoy's exact text (the response body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three non-empty dot-separated parts.
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    /// `alg` missing or not a string.
    HeaderBadAlg,
    /// `alg` is none of Envoy's (or is ES512, which outrider cannot verify).
    HeaderNotImplementedAlg,
    HeaderBadKid,
    PayloadBadBase64,
    PayloadBadJson,
    IssNotString,
    SubNotString,
    IatNotInteger,
    IatOutOfRange,
    NbfNotInteger,
    NbfOutOfRange,
    ExpNotInteger,
    ExpOutOfRange,
    JtiNotString,
    AudNotString,
    SignatureBadBase64,
    Ed25519SignatureWrongLength,
    /// `iss` is not the provider's issuer.
    UnknownIssuer,
    /// `aud` has none of the provider's audiences (403).
    AudienceNotAllowed,
    Expired,
    NotYetValid,
    /// No key's `kid`/`alg` fits the token (or no key yet: fail closed).
    KidAlgMismatch,
    /// Keys fit, none verifies the signature.
    VerificationFail,
}

impl TokenError {
    /// Envoy's text for it (jwt_verify_lib `getStatusString`).
    pub fn reason(self) -> &'static str {
        use TokenError::*;
        match self {
            BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            HeaderBadJson => "Jwt header is an invalid JSON",
            HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            HeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            HeaderBadKid => "Jwt header [kid] field is not a string",
            PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            PayloadBadJson => "Jwt payload is an invalid JSON",
            IssNotString => "Jwt payload [iss] field is not a string",
            SubNotString => "Jwt payload [sub] field is not a string",
            IatNotInteger => "Jwt payload [iat] field is not an integer",
            IatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
            NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            NbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
            ExpNotInteger => "Jwt payload [exp] field is not an integer",
            ExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
            JtiNotString => "Jwt payload [jti] field is not a string",
            AudNotString => "Jwt payload [aud] field is not a string or string list",
            SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Ed25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            UnknownIssuer => "Jwt issuer is not configured",
            AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Expired => "Jwt is expired",
            NotYetValid => "Jwt not yet valid",
            KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            VerificationFail => "Jwt verification fails",
        }
    }

    /// 403 for an audience mismatch, 401 otherwise (Envoy's filter).
    pub fn status(self) -> StatusCode {
        if self == TokenError::AudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for TokenError {}

/// Where a remote JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwksSource {
    /// `jwksUri`.
    Uri(String),
    /// Neither `jwksUri` nor `jwks`: OIDC discovery from the issuer
    /// ([`JwksSource::discovery_url`], whose `jwks_uri` names the JWKS).
    Discovery { issuer: String },
}

impl JwksSource {
    /// `<issuer>/.well-known/openid-configuration` for discovery (Istio's resolver trims a
    /// trailing `/` of the issuer), `None` for a plain URI.
    pub fn discovery_url(&self) -> Option<String> {
        match self {
            JwksSource::Uri(_) => None,
            JwksSource::Discovery { issuer } => Some(format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )),
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Uri(u) => write!(f, "jwksUri {u}"),
            JwksSource::Discovery { issuer } => write!(f, "OIDC discovery from {issuer}"),
        }
    }
}

/// The verification keys of a provider.
#[derive(Debug, Clone)]
pub enum Keys {
    /// `jwks`, parsed at load.
    Inline(Arc<KeySet>),
    /// `jwksUri` or discovery: whatever the fetcher last published in `slot` (shared by the
    /// providers of a configuration that name the same source).
    Remote {
        source: JwksSource,
        /// The fetch timeout (`timeout`, default 5 s).
        timeout: Duration,
        slot: Arc<KeySlot>,
    },
}

/// `outputClaimToHeaders[]`: `claim` (nested with `.`) copied into `header`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToHeader {
    pub header: HeaderName,
    pub claim: String,
}

/// One compiled `jwtRules[]` entry (Envoy's JwtProvider).
#[derive(Debug, Clone)]
pub struct Provider {
    /// Where it was written (`default/jwt jwtRules[0]`), for `outrider check` and logs.
    pub origin: String,
    /// Must equal the token's `iss`; empty ⇒ any issuer (a rule with only `jwksUri`).
    pub issuer: String,
    /// `aud` must contain one of them; empty ⇒ not checked.
    pub audiences: Vec<String>,
    /// Where tokens are looked for (never empty: [`TokenLocation::defaults`] when the rule
    /// names none).
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the request forwarded to the app (default: removed).
    pub forward_original_token: bool,
    /// A header set to the token's payload, base64url as sent.
    pub output_payload_to_header: Option<HeaderName>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Claims matched as space-separated lists by AuthorizationPolicy (`scope` and
    /// `permission` always are).
    pub space_delimited_claims: Vec<String>,
    pub keys: Keys,
}

impl Provider {
    /// A provider with Istio's defaults: any audience, the default locations, the token
    /// removed after success, no output headers.
    pub fn new(origin: impl Into<String>, issuer: impl Into<String>, keys: Keys) -> Provider {
        Provider {
            origin: origin.into(),
            issuer: issuer.into(),
            audiences: Vec::new(),
            locations: TokenLocation::defaults(),
            forward_original_token: false,
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
            space_delimited_claims: Vec::new(),
            keys,
        }
    }
}

/// Who a validated token says the caller is, as AuthorizationPolicy reads it
/// (`requestPrincipals`, `request.auth.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`; `None` when several tokens were validated (Istio leaves it undefined).
    pub principal: Option<String>,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The token's payload (a JSON object).
    pub claims: Value,
    /// Top-level claims matched as space-separated lists (`scope`, `permission`, and the
    /// rule's `spaceDelimitedClaims`).
    pub space_delimited_claims: Arc<[String]>,
}

impl RequestAuth {
    /// `iss`, when the principal is defined (one token).
    pub fn issuer(&self) -> Option<&str> {
        self.principal.as_ref()?;
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// `sub`, when the principal is defined (one token).
    pub fn subject(&self) -> Option<&str> {
        self.principal.as_ref()?;
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// Whether `matches` holds for the claim at `path` (`["a", "b"]` for `claims[a][b]`): a
    /// string claim (split on spaces when space-delimited) or any string of a list claim.
    pub fn claim_matches(&self, path: &[String], matches: impl Fn(&str) -> bool) -> bool {
        let Some(mut value) = path
            .first()
            .and_then(|first| self.claims.get(first.as_str()))
        else {
            return false;
        };
        for key in &path[1..] {
            match value.get(key.as_str()) {
                Some(v) => value = v,
                None => return false,
            }
        }
        let split = path.len() == 1 && self.space_delimited_claims.contains(&path[0]);
        let string = |s: &str| {
            if split {
                s.split(' ').filter(|p| !p.is_empty()).any(&matches)
            } else {
                matches(s)
            }
        };
        match value {
            Value::String(s) => string(s),
            Value::Array(items) => items.iter().filter_map(Value::as_str).any(string),
            _ => false,
        }
    }
}

/// What the data path changes in the request before it reaches the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Removed first: client-sent output headers, the token's header (unless
    /// `forwardOriginalToken`).
    pub remove: Vec<HeaderName>,
    /// Then set, overwriting: `outputPayloadToHeader`, `outputClaimToHeaders`.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// The new path-and-query when a token came from a query parameter and is not forwarded.
    pub path_and_query: Option<String>,
}

impl HeaderEdits {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.path_and_query.is_none()
    }

    /// Applies the header edits (removals, then sets); the caller rewrites the URI from
    /// [`HeaderEdits::path_and_query`] (or uses [`HeaderEdits::apply_to_parts`]).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Applies every edit to a request's parts, the URI included.
    pub fn apply_to_parts(&self, parts: &mut http::request::Parts) {
        self.apply(&mut parts.headers);
        if let Some(pq) = &self.path_and_query {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            if let Ok(pq) = pq.parse() {
                uri.path_and_query = Some(pq);
            }
            if let Ok(new) = Uri::from_parts(uri) {
                parts.uri = new;
            }
        }
    }
}

/// What the data path does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthnOutcome {
    /// No token (or a CORS preflight): continue without a request principal. The edits
    /// only sanitize client-sent output headers.
    Anonymous(HeaderEdits),
    /// A valid token: continue with its identity, after the edits.
    Authenticated(RequestAuth, HeaderEdits),
    /// A token invalid for every provider: answer `status` with body `reason` and the
    /// `www-authenticate` header; the request never reaches authorization or the app.
    Reject {
        status: StatusCode,
        reason: &'static str,
        www_authenticate: String,
    },
}

/// A provider's request-path precomputation.
#[derive(Debug)]
struct Compiled {
    /// Audiences normalized as Envoy's `CheckAudience` does.
    audiences: Vec<String>,
    /// Indices of its locations in [`Authenticator::locations`], ascending (Envoy's order).
    locations: Vec<usize>,
    space_delimited: Arc<[String]>,
}

/// The `jwtRules` of every RequestAuthentication that applies to one workload, compiled.
#[derive(Debug, Default)]
pub struct Authenticator {
    providers: Vec<Provider>,
    compiled: Vec<Compiled>,
    /// Every provider's locations, deduplicated, in Envoy's extraction order.
    locations: Vec<TokenLocation>,
    /// Output headers of every provider: removed from every request.
    sanitize: Vec<HeaderName>,
    fingerprint: u64,
}

impl Authenticator {
    /// No RequestAuthentication applies: every request is anonymous, nothing is edited.
    pub fn none() -> Arc<Authenticator> {
        Arc::new(Authenticator::default())
    }

    /// The providers of a workload, in order (earlier providers are tried first).
    pub fn new(providers: Vec<Provider>) -> Authenticator {
        use std::hash::{Hash, Hasher};
        let mut locations: Vec<TokenLocation> = Vec::new();
        for p in &providers {
            for l in &p.locations {
                if !locations.contains(l) {
                    locations.push(l.clone());
                }
            }
        }
        locations.sort_by_key(TokenLocation::order_key);
        let compiled = providers
            .iter()
            .map(|p| {
                let mut indices: Vec<usize> = p
                    .locations
                    .iter()
                    .filter_map(|l| locations.iter().position(|x| x == l))
                    .collect();
                indices.sort_unstable();
                indices.dedup();
                let mut delimited: Vec<String> = ALWAYS_SPACE_DELIMITED
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                for c in &p.space_delimited_claims {
                    if !delimited.contains(c) {
                        delimited.push(c.clone());
                    }
                }
                Compiled {
                    audiences: p.audiences.iter().map(|a| sanitize_audience(a)).collect(),
                    locations: indices,
                    space_delimited: delimited.into(),
                }
            })
            .collect();
        let mut sanitize: Vec<HeaderName> = Vec::new();
        for p in &providers {
            let outputs = p
                .output_payload_to_header
                .iter()
                .chain(p.output_claim_to_headers.iter().map(|c| &c.header));
            for h in outputs {
                if !sanitize.contains(h) {
                    sanitize.push(h.clone());
                }
            }
        }
        // The configuration only: not what a fetcher has published into a slot since.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for p in &providers {
            let keys = match &p.keys {
                Keys::Inline(set) => format!("inline {:016x}", set.digest()),
                Keys::Remote {
                    source, timeout, ..
                } => format!("{source} {timeout:?}"),
            };
            (
                &p.origin,
                &p.issuer,
                &p.audiences,
                &p.locations,
                p.forward_original_token,
                &p.output_payload_to_header,
                &p.output_claim_to_headers,
                &p.space_delimited_claims,
                keys,
            )
                .hash(&mut hasher);
        }
        Authenticator {
            providers,
            compiled,
            locations,
            sanitize,
            fingerprint: hasher.finish(),
        }
    }

    /// True when no provider applies.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// A digest of the providers (equal configurations, equal fingerprints), so a reload
    /// notices a changed rule.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Each distinct remote key slot with its source and fetch timeout (the first
    /// provider's, when several share a slot): what a fetcher keeps filled.
    pub fn remote_sources(&self) -> Vec<(&JwksSource, Duration, &Arc<KeySlot>)> {
        let mut out: Vec<(&JwksSource, Duration, &Arc<KeySlot>)> = Vec::new();
        for p in &self.providers {
            if let Keys::Remote {
                source,
                timeout,
                slot,
            } = &p.keys
            {
                if !out.iter().any(|(_, _, s)| Arc::ptr_eq(s, slot)) {
                    out.push((source, *timeout, slot));
                }
            }
        }
        out
    }

    /// The decision for one request (see the module docs for the rules).
    pub fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> AuthnOutcome {
        if self.providers.is_empty() {
            return AuthnOutcome::Anonymous(HeaderEdits::default());
        }
        let sanitized = || HeaderEdits {
            remove: self.sanitize.clone(),
            ..HeaderEdits::default()
        };
        if is_cors_preflight(method, headers) {
            return AuthnOutcome::Anonymous(sanitized());
        }
        let found = extract::extract(&self.locations, uri, headers);
        if found.is_empty() {
            return AuthnOutcome::Anonymous(sanitized());
        }
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut session = Session {
            auth: self,
            found: &found,
            parsed: (0..found.len()).map(|_| None).collect(),
            checked: Vec::new(),
            now,
        };
        // OR(P1..Pn): the first provider whose every token is valid.
        for i in 0..self.providers.len() {
            if let Some(good) = session.provider_accepts(i) {
                return session.accept(good, uri);
            }
        }
        // AND(OR(Pi, allow_missing)): the first provider whose tokens fail rejects.
        let mut good: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.providers.len() {
            match session.allow_missing(i) {
                Ok(valid) => {
                    for g in valid {
                        if !good.iter().any(|(t, _)| *t == g.0) {
                            good.push(g);
                        }
                    }
                }
                Err(e) => return self.reject(e, uri, headers),
            }
        }
        if good.is_empty() {
            return AuthnOutcome::Anonymous(sanitized());
        }
        good.sort_unstable();
        session.accept(good, uri)
    }

    fn reject(&self, error: TokenError, uri: &Uri, headers: &HeaderMap) -> AuthnOutcome {
        AuthnOutcome::Reject {
            status: error.status(),
            reason: error.reason(),
            www_authenticate: format!(
                "Bearer realm=\"{}\", error=\"invalid_token\"",
                realm(uri, headers)
            ),
        }
    }

    /// Envoy's `findByIssuer`: the first provider with this issuer, else the first without
    /// an issuer.
    fn find_by_issuer(&self, issuer: &str) -> Option<usize> {
        self.providers
            .iter()
            .position(|p| p.issuer == issuer)
            .or_else(|| self.providers.iter().position(|p| p.issuer.is_empty()))
    }
}

/// One request's tokens, parsed and checked at most once each.
struct Session<'a, 'r> {
    auth: &'a Authenticator,
    found: &'a [Found<'r>],
    parsed: Vec<Option<Result<Jwt<'a>, TokenError>>>,
    /// `(token, provider)` pairs already checked (time, audience, keys).
    checked: Vec<(usize, usize, Result<(), TokenError>)>,
    now: u64,
}

impl<'a> Session<'a, '_> {
    /// The tokens at provider `i`'s locations, in order.
    fn tokens_of(&self, i: usize) -> Vec<usize> {
        let locations = &self.auth.compiled[i].locations;
        (0..self.found.len())
            .filter(|t| locations.binary_search(&self.found[*t].location).is_ok())
            .collect()
    }

    fn parse(&mut self, t: usize) -> Result<&Jwt<'a>, TokenError> {
        let found: &'a [Found<'_>] = self.found;
        let slot = &mut self.parsed[t];
        if slot.is_none() {
            *slot = Some(Jwt::parse(&found[t].token));
        }
        match slot {
            Some(Ok(jwt)) => Ok(jwt),
            Some(Err(e)) => Err(*e),
            None => Err(TokenError::BadFormat),
        }
    }

    /// Issuer of provider `i` (empty ⇒ any), as the location's issuer check does.
    fn issuer_allowed(&mut self, t: usize, i: usize) -> Result<(), TokenError> {
        let expected = self.auth.providers[i].issuer.as_str();
        let jwt = self.parse(t)?;
        if expected.is_empty() || jwt.issuer() == expected {
            Ok(())
        } else {
            Err(TokenError::UnknownIssuer)
        }
    }

    /// Time window, audiences and signature of token `t` against provider `j`.
    fn check(&mut self, t: usize, j: usize) -> Result<(), TokenError> {
        if let Some((_, _, r)) = self.checked.iter().find(|(a, b, _)| *a == t && *b == j) {
            return *r;
        }
        let now = self.now;
        let provider = &self.auth.providers[j];
        let audiences = &self.auth.compiled[j].audiences;
        let jwt = self.parse(t)?;
        let result = jwt
            .check_time(now, CLOCK_SKEW_SECONDS)
            .and_then(|()| {
                if audiences_allowed(audiences, &jwt.audiences) {
                    Ok(())
                } else {
                    Err(TokenError::AudienceNotAllowed)
                }
            })
            .and_then(|()| match &provider.keys {
                Keys::Inline(keys) => jwt.verify(keys),
                Keys::Remote { slot, .. } => match slot.current() {
                    None => {
                        slot.request_refresh();
                        Err(TokenError::KidAlgMismatch)
                    }
                    Some(keys) => {
                        if !jwt.kid.is_empty() && !keys.matches_kid(&jwt.kid) {
                            slot.request_refresh();
                        }
                        jwt.verify(&keys)
                    }
                },
            });
        self.checked.push((t, j, result));
        result
    }

    /// Provider `i` alone (`provider_name`): its tokens, each valid for it (checked from the
    /// last, stopping at the first failure). `Some(tokens)` when it accepts.
    fn provider_accepts(&mut self, i: usize) -> Option<Vec<(usize, usize)>> {
        let tokens = self.tokens_of(i);
        if tokens.is_empty() {
            return None;
        }
        for &t in tokens.iter().rev() {
            let ok = self.issuer_allowed(t, i).and_then(|()| self.check(t, i));
            if ok.is_err() {
                return None;
            }
        }
        Some(tokens.into_iter().map(|t| (t, i)).collect())
    }

    /// `allow_missing` over provider `i`'s locations: every token is checked (from the
    /// last) and the first token's result is the outcome. `Ok` with the tokens found valid
    /// (and the provider that validated each).
    fn allow_missing(&mut self, i: usize) -> Result<Vec<(usize, usize)>, TokenError> {
        let tokens = self.tokens_of(i);
        let mut valid = Vec::new();
        let mut last = Ok(());
        for &t in tokens.iter().rev() {
            last = self.issuer_allowed(t, i).and_then(|()| {
                let iss = self.parse(t)?.issuer().to_string();
                let j = self
                    .auth
                    .find_by_issuer(&iss)
                    .ok_or(TokenError::UnknownIssuer)?;
                self.check(t, j)?;
                valid.push((t, j));
                Ok(())
            });
        }
        last.map(|()| valid)
    }

    /// The outcome for the valid tokens `good` (`(token, provider)`, in extraction order).
    fn accept(mut self, good: Vec<(usize, usize)>, uri: &Uri) -> AuthnOutcome {
        let auth = self.auth;
        let mut edits = HeaderEdits {
            remove: auth.sanitize.clone(),
            ..HeaderEdits::default()
        };
        // Envoy handles the tokens from the last; the first token's headers win.
        for &(t, j) in good.iter().rev() {
            let provider = &auth.providers[j];
            let Some(Some(Ok(jwt))) = self.parsed.get(t) else {
                continue;
            };
            if let Some(h) = &provider.output_payload_to_header {
                if let Ok(v) = HeaderValue::from_str(jwt.payload_b64) {
                    edits.set.push((h.clone(), v));
                }
            }
            for c in &provider.output_claim_to_headers {
                if let Some(v) = claim_header_value(&jwt.claims, &c.claim) {
                    edits.set.push((c.header.clone(), v));
                }
            }
            if !provider.forward_original_token {
                match &auth.locations[self.found[t].location] {
                    TokenLocation::Header { name, .. } => {
                        if !edits.remove.contains(name) {
                            edits.remove.push(name.clone());
                        }
                    }
                    TokenLocation::Param(name) => {
                        let current = edits
                            .path_and_query
                            .clone()
                            .or_else(|| uri.path_and_query().map(|pq| pq.to_string()))
                            .unwrap_or_default();
                        if let Some(pq) = extract::remove_param(&current, name) {
                            edits.path_and_query = Some(pq);
                        }
                    }
                    // Envoy does not remove cookies either.
                    TokenLocation::Cookie(_) => {}
                }
            }
        }
        let (t, j) = good[0];
        let several = good.len() > 1;
        let Some(Some(Ok(jwt))) = self.parsed.get_mut(t).map(Option::take) else {
            return AuthnOutcome::Anonymous(edits);
        };
        let principal = (!several).then(|| {
            let text = |k: &str| jwt.claims.get(k).and_then(Value::as_str).unwrap_or("");
            format!("{}/{}", text("iss"), text("sub"))
        });
        let presenter = jwt
            .claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_string);
        let request_auth = RequestAuth {
            principal,
            audiences: jwt.audiences,
            presenter,
            claims: Value::Object(jwt.claims),
            space_delimited_claims: auth.compiled[j].space_delimited.clone(),
        };
        AuthnOutcome::Authenticated(request_auth, edits)
    }
}

/// Envoy's `isCorsPreflightRequest`.
fn is_cors_preflight(method: &Method, headers: &HeaderMap) -> bool {
    let present = |h: HeaderName| headers.get(h).is_some_and(|v| !v.is_empty());
    method == Method::OPTIONS
        && present(http::header::ORIGIN)
        && present(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// jwt_verify_lib's audience normalization: without `http://`/`https://` and one trailing `/`.
fn sanitize_audience(aud: &str) -> String {
    let a = aud
        .strip_prefix("https://")
        .or_else(|| aud.strip_prefix("http://"))
        .unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a).to_string()
}

fn audiences_allowed(allowed: &[String], token: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    token.iter().any(|a| {
        let a = a
            .strip_prefix("https://")
            .or_else(|| a.strip_prefix("http://"))
            .unwrap_or(a);
        let a = a.strip_suffix('/').unwrap_or(a);
        allowed.iter().any(|x| x == a)
    })
}

/// The value Envoy writes for `outputClaimToHeaders`: a string as is, an integer without
/// decimals, another number as C's `%f`, a bool as `true`/`false`; nested with `.`. Other
/// types, an absent claim or an empty string: no header.
fn claim_header_value(claims: &serde_json::Map<String, Value>, claim: &str) -> Option<HeaderValue> {
    let mut parts = claim.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_u64() {
            Some(u) => u.to_string(),
            None => {
                let f = n.as_f64()?;
                if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 {
                    (f as u64).to_string()
                } else {
                    format!("{f:.6}")
                }
            }
        },
        _ => return None,
    };
    if text.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// `<scheme>://<host><path>` with the path cut at 256 bytes (Envoy's `buildOriginalUri`).
fn realm(uri: &Uri, headers: &HeaderMap) -> String {
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .or(uri.scheme_str())
        .unwrap_or("http");
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut cut = path.len().min(MAX_REALM_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{scheme}://{host}{}", &path[..cut])
}

#[cfg(test)]
pub(crate) mod tests;

//! RequestAuthentication (SEMANTICS §5): validation of the YAML, compilation of each
//! `jwtRules[]` entry into a [`Provider`] of [`crate::policy::jwt`], the scope rule, and the
//! per-port [`Authenticator`] with the warnings `outrider check` prints.
//!
//! Scope is AuthorizationPolicy's: policies of the root namespace (their selectors match
//! workloads of every namespace) and of the workload's namespace whose
//! `selector.matchLabels` ⊆ the workload's labels; `targetRef`/`targetRefs` policies are for
//! gateways and waypoints and a sidecar ignores them (warned). Unlike PeerAuthentication,
//! **every** matching policy contributes its rules (root, namespace and workload ones alike),
//! in load order. JWT is checked on HTTP ports only (Envoy's jwt_authn is an HTTP filter).
//!
//! Remote keys (`jwksUri`, or OIDC discovery when a rule has neither `jwksUri` nor `jwks`)
//! live in one [`KeySlot`] per source for the whole configuration, so every provider that
//! names the same JWKS shares what the fetcher publishes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::authorization_policy::AuthzPolicy;
use super::error::ConfigError;
use super::resources::{JwtRuleSpec, RequestAuthenticationSpec, Resource};
use super::scope;
use super::source::Document;
use super::{Workload, WorkloadPort};
use crate::policy::authz::Matcher;
use crate::policy::jwt::{
    Authenticator, ClaimToHeader, JwksSource, KeySet, KeySlot, Keys, Provider, TokenLocation,
};

/// Istio's default JWKS fetch timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Istio's limit on the length of `jwksUri`.
const MAX_JWKS_URI: usize = 2048;

/// The key slots of one configuration, by source.
pub(crate) type Slots = BTreeMap<JwksSource, Arc<KeySlot>>;

/// One validated RequestAuthentication.
#[derive(Debug, Clone)]
pub(crate) struct AuthnPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// `targetRef(s)` set: for gateways and waypoints, ignored by sidecars.
    pub targeted: bool,
    pub providers: Vec<Provider>,
    /// `file:line` of `metadata.name`, for messages.
    pub origin: String,
}

/// Validates one document and compiles its rules; remote sources get (or share) a slot of
/// `slots`.
pub(crate) fn validate(
    doc: &Document,
    r: Resource<RequestAuthenticationSpec>,
    slots: &mut Slots,
    warnings: &mut Vec<String>,
) -> Result<AuthnPolicy, ConfigError> {
    let namespace = super::load::namespace_of(r.metadata.namespace);
    let name = r.metadata.name;
    let full = format!("{namespace}/{name}");
    let at = doc.locate("metadata.name");
    let origin = format!("{}:{}", at.file.display(), at.line);
    let warn = |warnings: &mut Vec<String>, field: &str, message: String| {
        let at = doc.locate(field);
        warnings.push(format!(
            "{}:{}: {field}: {message}",
            at.file.display(),
            at.line
        ));
    };
    let spec = r.spec.unwrap_or_default();
    if spec.target_ref.is_some() && spec.target_refs.is_some() {
        return Err(doc.error("spec.targetRefs", "set targetRef or targetRefs, not both"));
    }
    let targeted = spec.target_ref.is_some() || spec.target_refs.is_some();
    if targeted && spec.selector.is_some() {
        return Err(doc.error(
            "spec.selector",
            "selector and targetRef(s) are mutually exclusive",
        ));
    }
    if targeted {
        let field = if spec.target_refs.is_some() {
            "spec.targetRefs"
        } else {
            "spec.targetRef"
        };
        warn(warnings, field, format!("RequestAuthentication {full} targets a gateway or waypoint; sidecars ignore it (use spec.selector for a sidecar)"));
    }
    let selector = spec.selector.map(|s| s.match_labels).unwrap_or_default();
    let mut providers = Vec::with_capacity(spec.jwt_rules.len());
    for (i, rule) in spec.jwt_rules.into_iter().enumerate() {
        let base = format!("spec.jwtRules[{i}]");
        let origin = format!("{full} jwtRules[{i}]");
        providers.push(provider(doc, &base, origin, rule, slots, warnings)?);
    }
    Ok(AuthnPolicy {
        namespace,
        name,
        selector,
        targeted,
        providers,
        origin,
    })
}

/// One `jwtRules[]` entry, validated as Istio's `validateJwtRule` (and its CRD) does.
fn provider(
    doc: &Document,
    base: &str,
    origin: String,
    rule: JwtRuleSpec,
    slots: &mut Slots,
    warnings: &mut Vec<String>,
) -> Result<Provider, ConfigError> {
    let f = |name: &str| format!("{base}.{name}");
    if rule.issuer.is_empty() && rule.jwks_uri.is_none() {
        return Err(doc.error(
            base,
            "a jwtRule needs an issuer or a jwksUri (it names who signs the tokens)",
        ));
    }
    for a in &rule.audiences {
        if a.is_empty() {
            return Err(doc.error(&f("audiences"), "an audience must not be empty"));
        }
    }
    if rule.jwks_uri.is_some() && rule.jwks.is_some() {
        return Err(doc.error(
            &f("jwks"),
            "set jwks or jwksUri, not both (jwks are the keys themselves, jwksUri where to fetch them)",
        ));
    }
    let timeout = match &rule.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => {
            crate::duration::parse(t).map_err(|e| doc.error(&f("timeout"), e.to_string()))?
        }
    };
    let keys = if let Some(jwks) = &rule.jwks {
        let set = KeySet::from_json(jwks.as_bytes())
            .map_err(|e| doc.error(&f("jwks"), format!("not a usable JWKS: {e}")))?;
        for skipped in set.skipped() {
            let at = doc.locate(&f("jwks"));
            warnings.push(format!(
                "{}:{}: {}: {origin}: {skipped}; the key is ignored",
                at.file.display(),
                at.line,
                f("jwks")
            ));
        }
        Keys::Inline(Arc::new(set))
    } else {
        let source = match &rule.jwks_uri {
            Some(uri) => {
                check_jwks_uri(uri).map_err(|m| doc.error(&f("jwksUri"), m))?;
                JwksSource::Uri(uri.clone())
            }
            None => {
                if check_jwks_uri(&rule.issuer).is_err() {
                    let at = doc.locate(&f("issuer"));
                    warnings.push(format!(
                        "{}:{}: {}: {origin}: neither jwksUri nor jwks is set, so the keys come from OIDC discovery at {:?}, but the issuer is not an http(s) URL: no key can be fetched and every token of this issuer is refused",
                        at.file.display(),
                        at.line,
                        f("issuer"),
                        format!("{}/.well-known/openid-configuration", rule.issuer.trim_end_matches('/'))
                    ));
                }
                JwksSource::Discovery {
                    issuer: rule.issuer.clone(),
                }
            }
        };
        let slot = slots.entry(source.clone()).or_default().clone();
        Keys::Remote {
            source,
            timeout,
            slot,
        }
    };
    let header_name = |field: &str, name: &str| -> Result<HeaderName, ConfigError> {
        if name.is_empty() {
            return Err(doc.error(field, "a header name must not be empty"));
        }
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| doc.error(field, format!("{name:?} is not a valid header name")))
    };
    let mut locations = Vec::new();
    for (j, h) in rule.from_headers.iter().enumerate() {
        let name = header_name(&f(&format!("fromHeaders[{j}].name")), &h.name)?;
        locations.push(TokenLocation::Header {
            name,
            prefix: h.prefix.clone(),
        });
    }
    for (j, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err(doc.error(
                &f(&format!("fromParams[{j}]")),
                "a query parameter name must not be empty",
            ));
        }
        locations.push(TokenLocation::Param(p.clone()));
    }
    for (j, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            return Err(doc.error(
                &f(&format!("fromCookies[{j}]")),
                "a cookie name must not be empty",
            ));
        }
        locations.push(TokenLocation::Cookie(c.clone()));
    }
    if locations.is_empty() {
        locations = TokenLocation::defaults();
    }
    let output_payload_to_header = rule
        .output_payload_to_header
        .as_deref()
        .map(|h| header_name(&f("outputPayloadToHeader"), h))
        .transpose()?;
    let mut output_claim_to_headers = Vec::new();
    for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
        let at = f(&format!("outputClaimToHeaders[{j}]"));
        let header = header_name(&format!("{at}.header"), &c.header)?;
        if c.claim.is_empty() {
            return Err(doc.error(&format!("{at}.claim"), "a claim name must not be empty"));
        }
        output_claim_to_headers.push(ClaimToHeader {
            header,
            claim: c.claim.clone(),
        });
    }
    for (j, c) in rule.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            return Err(doc.error(
                &f(&format!("spaceDelimitedClaims[{j}]")),
                "a claim name must not be empty",
            ));
        }
    }
    Ok(Provider {
        origin,
        issuer: rule.issuer,
        audiences: rule.audiences,
        locations,
        forward_original_token: rule.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
        space_delimited_claims: rule.space_delimited_claims,
        keys,
    })
}

/// `jwksUri`: an absolute http or https URL with a host, at most 2048 characters.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_JWKS_URI {
        return Err(format!(
            "is {} characters long; at most {MAX_JWKS_URI}",
            uri.len()
        ));
    }
    let parsed: http::Uri = uri.parse().map_err(|_| format!("{uri:?} is not a URL"))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        Some(s) => return Err(format!("{uri:?}: scheme {s:?} is not http or https")),
        None => return Err(format!("{uri:?} is not an absolute http(s) URL")),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(())
}

impl super::scope::Scoped for AuthnPolicy {
    const KIND: &'static str = "RequestAuthentication";
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn selector(&self) -> &BTreeMap<String, String> {
        &self.selector
    }
    fn targeted(&self) -> bool {
        self.targeted
    }
    fn origin(&self) -> &str {
        &self.origin
    }
}

/// The authenticator of port `p` of `w` (every applying policy's rules, in load order), and
/// the port's warnings. TCP and TLS ports check no JWT.
pub(crate) fn authenticator(
    policies: &[AuthnPolicy],
    root_namespace: &str,
    w: &Workload,
    p: &WorkloadPort,
    warnings: &mut Vec<String>,
) -> Arc<Authenticator> {
    let applying: Vec<&AuthnPolicy> = policies
        .iter()
        .filter(|a| scope::applies_to(*a, root_namespace, w) && !a.providers.is_empty())
        .collect();
    if applying.is_empty() {
        return Authenticator::none();
    }
    if !p.protocol.is_http() {
        for a in &applying {
            warnings.push(format!(
                "{}: RequestAuthentication {}/{} applies to workload {} but port {} ({}) is not HTTP: no token is checked there (JWT is an HTTP filter)",
                a.origin, a.namespace, a.name, w.name, p.port, p.name
            ));
        }
        return Authenticator::none();
    }
    let providers: Vec<Provider> = applying
        .iter()
        .flat_map(|a| a.providers.iter().cloned())
        .collect();
    Arc::new(Authenticator::new(providers))
}

/// Warns about AuthorizationPolicy rules of an HTTP port that read the request's JWT
/// (`requestPrincipals`, `request.auth.*`) when no RequestAuthentication applies there: no
/// request has a JWT identity, so those fields never match (their `not*` forms always do).
pub(crate) fn warn_unauthenticated(
    authz: &[AuthzPolicy],
    root_namespace: &str,
    w: &Workload,
    p: &WorkloadPort,
    authentication: &Authenticator,
    warnings: &mut Vec<String>,
) {
    if !p.protocol.is_http() || !authentication.is_empty() {
        return;
    }
    let reads_jwt = |m: &Matcher| {
        matches!(
            m,
            Matcher::RequestPrincipal { .. }
                | Matcher::RequestAudience(_)
                | Matcher::RequestPresenter(_)
                | Matcher::RequestClaim { .. }
        )
    };
    for a in authz
        .iter()
        .filter(|a| scope::applies_to(*a, root_namespace, w))
    {
        for (i, rule) in a.policy.rules.iter().enumerate() {
            let fields: Vec<&str> = rule
                .from
                .iter()
                .flatten()
                .chain(rule.to.iter().flatten())
                .chain(&rule.when)
                .filter(|f| f.matchers.iter().any(reads_jwt))
                .map(|f| f.name.as_str())
                .collect();
            if !fields.is_empty() {
                warnings.push(format!(
                    "{}: AuthorizationPolicy {} rule {i} uses {} on workload {} port {}, but no RequestAuthentication applies there: no request has a JWT identity, so these never match (not* forms always do)",
                    a.origin, a.policy.name, fields.join(", "), w.name, p.port
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) parsed and validated per the SPIFFE spec
//! (standards/SPIFFE-ID.md), with accessors for Istio's `ns/<namespace>/sa/<service-account>`
//! paths.
//!
//! Parsing is strict: a value of type [`SpiffeId`] is always valid, so the rest of the code
//! never re-checks it.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (the spec: "must accept up to 2048").
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with \"spiffe://\": {0:?}")]
    WrongScheme(String),
    #[error("SPIFFE ID has an empty trust domain: {0:?}")]
    EmptyTrustDomain(String),
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain {domain:?} has a character not in [a-z0-9._-]: {ch:?} (upper case, userinfo, port and %-encoding are not allowed)")]
    BadTrustDomainChar { domain: String, ch: char },
    #[error("SPIFFE ID {0:?} has a query or fragment")]
    QueryOrFragment(String),
    #[error("SPIFFE ID {0:?} has an empty path segment")]
    EmptySegment(String),
    #[error("SPIFFE ID {0:?} has a '.' or '..' path segment")]
    DotSegment(String),
    #[error("SPIFFE ID {0:?} ends with '/'")]
    TrailingSlash(String),
    #[error("path segment of {id:?} has a character not in [a-zA-Z0-9._-]: {ch:?}")]
    BadPathChar { id: String, ch: char },
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID. The scheme is matched case-insensitively; the trust
    /// domain must already be lower case (the spec forbids emitting upper case).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = match s.get(..SCHEME.len()) {
            Some(head) if head.eq_ignore_ascii_case(SCHEME) => &s[SCHEME.len()..],
            _ => return Err(SpiffeIdError::WrongScheme(s.to_string())),
        };
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment(s.to_string()));
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let trust_domain = validate_trust_domain(domain).map_err(|e| match e {
            SpiffeIdError::EmptyTrustDomain(_) => SpiffeIdError::EmptyTrustDomain(s.to_string()),
            other => other,
        })?;
        validate_path(s, path)?;
        Ok(SpiffeId {
            trust_domain,
            path: path.to_string(),
        })
    }

    /// Builds an ID from a trust domain and a path (`/a/b`, or empty for the trust domain ID).
    pub fn new(trust_domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{trust_domain}{path}"))
    }

    /// Istio's workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::new(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    /// The trust domain (lower case, without scheme).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True for the trust-domain ID itself (no path), which a workload SVID must not carry.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }

    /// The Istio principal: the ID without `spiffe://`.
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of an Istio-shaped ID (`/ns/<ns>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-shaped ID (`/ns/<ns>/sa/<sa>`).
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }
}

/// Validates a trust domain name on its own (used for configuration fields too).
pub fn validate_trust_domain(domain: &str) -> Result<String, SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain(domain.to_string()));
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if let Some(ch) = domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeIdError::BadTrustDomainChar {
            domain: domain.to_string(),
            ch,
        });
    }
    Ok(domain.to_string())
}

fn validate_path(id: &str, path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash(id.to_string()));
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment(id.to_string()));
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment(id.to_string()));
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::BadPathChar {
                id: id.to_string(),
                ch,
            });
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_accessors() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/age").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("age"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/age");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/age");
    }
}

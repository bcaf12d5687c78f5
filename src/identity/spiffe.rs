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
        // Each part must be one path segment: "a/b" would silently build a non-Istio ID.
        if namespace.contains('/') || service_account.contains('/') {
            return Err(SpiffeIdError::BadPathChar {
                id: format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"),
                ch: '/',
            });
        }
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

    #[test]
    fn valid_ids() {
        let long_path = format!("/{}", "a".repeat(MAX_ID_LEN - "spiffe://td".len() - 1));
        let long = format!("spiffe://td{long_path}");
        assert_eq!(long.len(), MAX_ID_LEN);
        let cases: &[(&str, &str, &str)] = &[
            (
                "spiffe://cluster.local/ns/default/sa/age",
                "cluster.local",
                "/ns/default/sa/age",
            ),
            (
                "spiffe://example.org/ns/prod-1/sa/front_end.v2",
                "example.org",
                "/ns/prod-1/sa/front_end.v2",
            ),
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://10.0.0.1/ns/a/sa/b", "10.0.0.1", "/ns/a/sa/b"),
            (
                "spiffe://my_domain-1.test/Path/With/UPPER",
                "my_domain-1.test",
                "/Path/With/UPPER",
            ),
            (
                "SPIFFE://cluster.local/ns/a/sa/b",
                "cluster.local",
                "/ns/a/sa/b",
            ),
            ("SpIfFe://cluster.local/x", "cluster.local", "/x"),
            ("spiffe://td/.../a..b/.hidden", "td", "/.../a..b/.hidden"),
            (&long, "td", &long_path),
        ];
        for (input, domain, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain(), *domain, "{input}");
            assert_eq!(id.path(), *path, "{input}");
            assert_eq!(id.to_string(), format!("spiffe://{domain}{path}"));
            assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        }
    }

    #[test]
    fn invalid_ids() {
        use SpiffeIdError as E;
        let too_long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_domain = format!("spiffe://{}/a", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        type Check = fn(&SpiffeIdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::BadTrustDomainChar { ch: 'C', .. })
            }),
            ("spiffe://td/ns/../sa/b", |e| matches!(e, E::DotSegment(_))),
            ("spiffe://td/ns/./sa", |e| matches!(e, E::DotSegment(_))),
            ("spiffe://td/..", |e| matches!(e, E::DotSegment(_))),
            ("spiffe://td/ns//sa/b", |e| matches!(e, E::EmptySegment(_))),
            ("spiffe://td//", |e| matches!(e, E::TrailingSlash(_))),
            ("spiffe://td/ns/a/", |e| matches!(e, E::TrailingSlash(_))),
            ("spiffe://td/", |e| matches!(e, E::TrailingSlash(_))),
            ("spiffe://td/ns/a?x=1", |e| {
                matches!(e, E::QueryOrFragment(_))
            }),
            ("spiffe://td/ns/a#frag", |e| {
                matches!(e, E::QueryOrFragment(_))
            }),
            ("spiffe://td?x", |e| matches!(e, E::QueryOrFragment(_))),
            ("spiffe://td:8443/ns/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: ':', .. })
            }),
            ("spiffe://user@td/ns/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: '@', .. })
            }),
            ("spiffe://user:pw@td/ns/a", |e| {
                matches!(e, E::BadTrustDomainChar { .. })
            }),
            ("spiffe://t%41d/ns/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: '%', .. })
            }),
            ("spiffe://td/ns/a%20b", |e| {
                matches!(e, E::BadPathChar { ch: '%', .. })
            }),
            ("spiffe://td/ns/a b", |e| {
                matches!(e, E::BadPathChar { ch: ' ', .. })
            }),
            ("spiffe://[::1]/ns/a", |e| {
                matches!(e, E::BadTrustDomainChar { ch: '[', .. })
            }),
            ("https://td/ns/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:/td/ns/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe:td", |e| matches!(e, E::WrongScheme(_))),
            ("td/ns/a", |e| matches!(e, E::WrongScheme(_))),
            ("spiffe://", |e| matches!(e, E::EmptyTrustDomain(_))),
            ("spiffe:///ns/a", |e| matches!(e, E::EmptyTrustDomain(_))),
            (&too_long, |e| matches!(e, E::TooLong)),
            (&long_domain, |e| matches!(e, E::TrustDomainTooLong)),
        ];
        for (input, check) in cases {
            match SpiffeId::parse(input) {
                Ok(id) => panic!("{input:?} was accepted as {id}"),
                Err(e) => {
                    assert!(check(&e), "{input:?}: unexpected error {e:?}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn istio_shape() {
        let id = SpiffeId::istio("cluster.local", "ns1", "sa1").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/ns1/sa/sa1");
        for not_istio in [
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
            "spiffe://td",
        ] {
            let id = SpiffeId::parse(not_istio).unwrap();
            assert_eq!(id.namespace(), None, "{not_istio}");
            assert_eq!(id.service_account(), None, "{not_istio}");
        }
        assert!(SpiffeId::istio("cluster.local", "a/b", "c").is_err());
        assert!(SpiffeId::istio("cluster.local", "..", "c").is_err());
        assert!(SpiffeId::istio("cluster.local", "", "c").is_err());
    }
}

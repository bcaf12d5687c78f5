//! Authorization (Istio's AuthorizationPolicy) as a pure decision: the configuration compiles
//! the policies that apply to one workload port into an [`Authorizer`]; the data path asks it
//! once per TCP connection ([`Authorizer::check_connection`]) or once per HTTP request
//! ([`Authorizer::check_request`]) and acts on the [`Outcome`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::SpiffeId;

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The verified peer identity; `None` on plaintext (principals, namespaces, service
    /// accounts and trust domains never match then).
    pub peer: Option<&'a SpiffeId>,
    /// The TCP peer address (`source.ip`, `ipBlocks`).
    pub source: SocketAddr,
    /// The address the connection arrived on (`destination.ip`, `destination.port`).
    pub destination: SocketAddr,
    /// The SNI the client sent, if any (`connection.sni`).
    pub sni: Option<&'a str>,
}

/// What is known about one HTTP request when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// As received (`GET`); a lower-case method is a bad request, as in Envoy.
    pub method: &'a str,
    /// `:authority` or `Host`, as received, port kept.
    pub authority: &'a str,
    /// The path as received, query included; normalization is the authorizer's job.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

/// What the data path does with a connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// HTTP: `403` with body `RBAC: access denied`; TCP: close before any byte reaches the app.
    /// `policy` names the deciding policy (`ns/name`), or says why nothing allowed it.
    Deny {
        policy: Arc<str>,
    },
    /// The request cannot be authorized as sent (e.g. `%00` in the path): HTTP `400`.
    BadRequest {
        reason: &'static str,
    },
}

/// The decision and what the caller reports beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// An `AUDIT` policy matched: the access log marks the request or connection.
    pub audit: bool,
    /// What `istio.io/dry-run` policies would have decided, if any applies (never enforced).
    pub shadow: Option<Verdict>,
}

impl Outcome {
    fn allow() -> Outcome {
        Outcome {
            verdict: Verdict::Allow,
            audit: false,
            shadow: None,
        }
    }
}

/// The AuthorizationPolicies that apply to one workload port, compiled.
#[derive(Debug, Default)]
pub struct Authorizer {}

impl Authorizer {
    /// No policy applies: everything is allowed (Istio's default).
    pub fn allow_all() -> Arc<Authorizer> {
        Arc::new(Authorizer::default())
    }

    /// True when no policy applies, so the data path can skip building facts.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// A TCP port's decision, once per connection, before any byte reaches the app.
    pub fn check_connection(&self, _connection: &Connection<'_>) -> Outcome {
        Outcome::allow()
    }

    /// An HTTP port's decision, once per request.
    pub fn check_request(&self, _connection: &Connection<'_>, _request: &Request<'_>) -> Outcome {
        Outcome::allow()
    }
}

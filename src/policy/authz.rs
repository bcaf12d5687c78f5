//! Authorization (Istio's AuthorizationPolicy) as a pure decision: the configuration compiles
//! the policies that apply to one workload port into an [`Authorizer`]; the data path asks it
//! once per TCP connection ([`Authorizer::check_connection`]) or once per HTTP request
//! ([`Authorizer::check_request`]) and acts on the [`Outcome`].
//!
//! The rules are Istio's (SEMANTICS §4): CUSTOM → DENY → ALLOW → default; a policy is the OR
//! of its rules, a rule the AND of (any `from`) (any `to`) (every `when`); values of a field
//! OR, `not*` fields match when none of their values does. On TCP ports the HTTP-only fields
//! are dropped as Envoy's network RBAC filter drops them ([`tcp_effect`]): an ALLOW rule that
//! uses one is dropped whole, a DENY/AUDIT/CUSTOM rule loses only that field. Dry-run
//! policies are evaluated apart into [`Outcome::shadow`]; AUDIT ones only set
//! [`Outcome::audit`]. `requestPrincipals` and `request.auth.*` read the identity of the
//! request's JWT ([`RequestAuth`], from [`crate::policy::jwt`]), passed to
//! [`Authorizer::check_request_with_auth`]; without one they never match (their `not*`
//! forms always do).

pub mod matcher;
pub mod path;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::SpiffeId;
use crate::policy::jwt::RequestAuth;
use matcher::{Cidr, NamespaceMatch, PathMatch, ServiceAccountMatch, StrMatch};

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

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// Marks the access log; never changes the outcome.
    Audit,
    /// Asks an external authorizer; outrider has none, so a match denies.
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One AuthorizationPolicy, compiled but not yet specialised to a port's protocol.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name`.
    pub name: Arc<str>,
    pub action: Action,
    /// `istio.io/dry-run: "true"`: evaluated into [`Outcome::shadow`], never enforced.
    pub dry_run: bool,
    /// CUSTOM's `provider.name`.
    pub provider: Option<String>,
    /// No rules: matches nothing (ALLOW without rules allows nothing).
    pub rules: Vec<Rule>,
}

/// One rule: (any `from`, or none) AND (any `to`, or none) AND (every `when`).
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Each clause is one `source`: all its fields must match.
    pub from: Vec<Clause>,
    /// Each clause is one `operation`: all its fields must match.
    pub to: Vec<Clause>,
    pub when: Vec<Field>,
}

/// The fields of one `source` or `operation` (AND).
pub type Clause = Vec<Field>;

/// One field (`principals`, `notMethods`, a `when` condition's `values`...): matches when one
/// of its matchers does, or, `negated`, when none does.
#[derive(Debug, Clone)]
pub struct Field {
    /// As the user wrote it (`principals`, `notPaths`, `request.headers[x-user]`), for messages.
    pub name: String,
    pub negated: bool,
    pub matchers: Vec<Matcher>,
}

/// One value of a field, precompiled against the fact it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The peer's ID without `spiffe://` (`principals`, `source.principal`).
    Principal(StrMatch),
    /// `namespaces`, `source.namespace`.
    Namespace(NamespaceMatch),
    /// `serviceAccounts`, `source.serviceAccount`.
    ServiceAccount(ServiceAccountMatch),
    /// `trustDomains`, `source.trustDomain`; `None` = `*` (any mesh peer).
    TrustDomain(Option<String>),
    /// `ipBlocks`, `source.ip`: the TCP peer.
    SourceIp(Cidr),
    /// `remoteIpBlocks`, `remote.ip`: the client per X-Forwarded-For and `numTrustedProxies`.
    RemoteIp(Cidr),
    /// `destination.ip`.
    DestinationIp(Cidr),
    /// `ports`, `destination.port`: the app's port (the workload's `targetPort`).
    Port(u16),
    /// `connection.sni`.
    Sni(StrMatch),
    /// `hosts`: `:authority` / `Host`, case-insensitive, port kept (text lower case).
    Host(StrMatch),
    /// `methods`.
    Method(StrMatch),
    /// `paths`, after normalization.
    Path(PathMatch),
    /// `request.headers[name]`; several values of one header are joined with `,`.
    Header {
        name: http::HeaderName,
        value: StrMatch,
    },
    /// `requestPrincipals`, `request.auth.principal`: the JWT's `iss` and `sub` (Istio splits
    /// the value at its last `/`); only when the request has one token.
    RequestPrincipal { iss: StrMatch, sub: StrMatch },
    /// `request.auth.audiences`: one of the JWT's `aud`.
    RequestAudience(StrMatch),
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter(StrMatch),
    /// `request.auth.claims[a][b]`: a nested claim; a list claim (or a space-delimited one)
    /// matches when one of its strings does.
    RequestClaim { path: Vec<String>, value: StrMatch },
    /// `experimental.envoy.filters.*`: facts outrider does not have; never matches.
    Absent,
}

impl Matcher {
    /// Fields only an HTTP request has (dropped on TCP ports).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Matcher::Host(_)
                | Matcher::Method(_)
                | Matcher::Path(_)
                | Matcher::Header { .. }
                | Matcher::RequestPrincipal { .. }
                | Matcher::RequestAudience(_)
                | Matcher::RequestPresenter(_)
                | Matcher::RequestClaim { .. }
                | Matcher::Absent
        )
    }

    /// Fields that need a mesh identity (never match a plaintext peer).
    pub fn needs_identity(&self) -> bool {
        matches!(
            self,
            Matcher::Principal(_)
                | Matcher::Namespace(_)
                | Matcher::ServiceAccount(_)
                | Matcher::TrustDomain(_)
        )
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let conn = facts.connection;
        match self {
            Matcher::Principal(m) => conn
                .peer
                .is_some_and(|id| m.matches_joined(id.trust_domain(), id.path())),
            Matcher::Namespace(m) => conn.peer.is_some_and(|id| m.matches(id.path())),
            Matcher::ServiceAccount(m) => conn
                .peer
                .is_some_and(|id| m.matches(id.trust_domain(), id.path())),
            Matcher::TrustDomain(td) => conn.peer.is_some_and(|id| match td {
                None => true,
                Some(td) => id.trust_domain() == td && id.path().starts_with('/'),
            }),
            Matcher::SourceIp(c) => c.contains(conn.source.ip()),
            Matcher::RemoteIp(c) => c.contains(facts.remote),
            Matcher::DestinationIp(c) => c.contains(conn.destination.ip()),
            Matcher::Port(p) => facts.port == *p,
            Matcher::Sni(m) => conn.sni.is_some_and(|s| m.matches(s)),
            Matcher::Host(m) => facts
                .request
                .is_some_and(|r| m.matches_ignore_case(r.authority)),
            Matcher::Method(m) => facts.request.is_some_and(|r| m.matches(r.method)),
            Matcher::Path(m) => facts.path.is_some_and(|p| m.matches(p)),
            Matcher::Header { name, value } => facts
                .request
                .is_some_and(|r| header_matches(r.headers, name, value)),
            Matcher::RequestPrincipal { iss, sub } => facts.auth.is_some_and(|a| {
                a.issuer().is_some_and(|i| iss.matches(i))
                    && a.subject().is_some_and(|s| sub.matches(s))
            }),
            Matcher::RequestAudience(m) => facts
                .auth
                .is_some_and(|a| a.audiences.iter().any(|aud| m.matches(aud))),
            Matcher::RequestPresenter(m) => facts
                .auth
                .is_some_and(|a| a.presenter.as_deref().is_some_and(|p| m.matches(p))),
            Matcher::RequestClaim { path, value } => facts
                .auth
                .is_some_and(|a| a.claim_matches(path, |v| value.matches(v))),
            Matcher::Absent => false,
        }
    }
}

fn header_matches(headers: &http::HeaderMap, name: &http::HeaderName, value: &StrMatch) -> bool {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return false;
    };
    let first = String::from_utf8_lossy(first.as_bytes());
    match all.next() {
        None => value.matches(&first),
        Some(second) => {
            let mut joined = first.into_owned();
            for v in std::iter::once(second).chain(all) {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            value.matches(&joined)
        }
    }
}

impl Field {
    pub fn http_only(&self) -> bool {
        self.matchers.iter().any(Matcher::http_only)
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.matchers.iter().any(|m| m.matches(facts)) != self.negated
    }
}

impl Rule {
    /// The names of the HTTP-only fields this rule uses (empty on a pure L4 rule).
    pub fn http_only_fields(&self) -> Vec<&str> {
        self.from
            .iter()
            .chain(&self.to)
            .flatten()
            .chain(&self.when)
            .filter(|f| f.http_only())
            .map(|f| f.name.as_str())
            .collect()
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let clause = |c: &Clause| c.iter().all(|f| f.matches(facts));
        (self.from.is_empty() || self.from.iter().any(clause))
            && (self.to.is_empty() || self.to.iter().any(clause))
            && self.when.iter().all(|f| f.matches(facts))
    }
}

/// What a TCP port makes of a rule (Envoy's network RBAC filter has no HTTP fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpEffect {
    /// No HTTP-only field: the rule applies as written.
    Kept,
    /// An ALLOW rule with HTTP-only fields (named): dropped whole (narrower).
    Dropped(Vec<String>),
    /// A DENY/AUDIT/CUSTOM rule with HTTP-only fields (named): those fields are removed, so
    /// it matches more (a DENY of `methods: [POST]` alone denies every TCP connection).
    Widened(Vec<String>),
}

/// How a TCP port treats `rule` of a policy with `action` (istio/istio#37920: an ALLOW rule
/// mixing HTTP and port-only operations loses its TCP part too).
pub fn tcp_effect(rule: &Rule, action: Action) -> TcpEffect {
    let fields: Vec<String> = rule
        .http_only_fields()
        .into_iter()
        .map(str::to_string)
        .collect();
    if fields.is_empty() {
        TcpEffect::Kept
    } else if action == Action::Allow {
        TcpEffect::Dropped(fields)
    } else {
        TcpEffect::Widened(fields)
    }
}

/// `rule` as a TCP port applies it, or `None` when it is dropped.
fn for_tcp(rule: &Rule, action: Action) -> Option<Rule> {
    match tcp_effect(rule, action) {
        TcpEffect::Kept => Some(rule.clone()),
        TcpEffect::Dropped(_) => None,
        TcpEffect::Widened(_) => {
            let strip = |clauses: &[Clause]| -> Vec<Clause> {
                clauses
                    .iter()
                    .map(|c| c.iter().filter(|f| !f.http_only()).cloned().collect())
                    .collect()
            };
            Some(Rule {
                from: strip(&rule.from),
                to: strip(&rule.to),
                when: rule
                    .when
                    .iter()
                    .filter(|f| !f.http_only())
                    .cloned()
                    .collect(),
            })
        }
    }
}

/// Istio's trust-domain handling of a principal (`pilot/pkg/security/trustdomain/bundle.go`):
/// a `td/ns/<ns>/sa/<sa>` value whose trust domain is `cluster.local` or one of
/// `trust_domains` (ours first, then aliases) stands for the same path in every one of them;
/// a value starting with `*` ignores the trust domain and is kept as written.
pub fn expand_principal(value: &str, trust_domains: &[String]) -> Vec<String> {
    if value.starts_with('*') {
        return vec![value.to_string()];
    }
    let parts: Vec<&str> = value.split('/').collect();
    if parts.len() != 5 {
        return vec![value.to_string()];
    }
    let td = parts[0];
    if td != "cluster.local" && !trust_domains.iter().any(|t| t == td) {
        return vec![value.to_string()];
    }
    let rest = &value[td.len()..];
    let mut out: Vec<String> = Vec::new();
    for t in trust_domains {
        let v = format!("{t}{rest}");
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Where a port's authorizer is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortFacts {
    /// The app's port (`ports`, `destination.port`): the workload's `targetPort`, as Istio
    /// matches the container port; 0: the port of the connection's destination (a captured
    /// workload's undeclared ports).
    pub port: u16,
    /// TCP/TLS port: HTTP-only fields are dropped ([`tcp_effect`]).
    pub tcp: bool,
    /// X-Forwarded-For addresses trusted from the right (`numTrustedProxies`); 0 ⇒
    /// `remote.ip` is the TCP peer.
    pub num_trusted_proxies: u32,
}

/// A policy that applies to the port, as `outrider check` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub name: Arc<str>,
    pub action: Action,
    pub dry_run: bool,
}

/// The policies of one decision engine, by action.
#[derive(Debug, Default)]
struct Engine {
    custom: Vec<Policy>,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
}

impl Engine {
    fn is_empty(&self) -> bool {
        self.custom.is_empty() && self.deny.is_empty() && self.allow.is_empty()
    }

    fn decide(&self, facts: &Facts<'_>) -> Verdict {
        let matched = |p: &&Policy| p.rules.iter().any(|r| r.matches(facts));
        if let Some(p) = self.custom.iter().find(matched) {
            return Verdict::Deny {
                policy: p.name.clone(),
            };
        }
        if let Some(p) = self.deny.iter().find(matched) {
            return Verdict::Deny {
                policy: p.name.clone(),
            };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| matched(&p)) {
            return Verdict::Allow;
        }
        Verdict::Deny {
            policy: NO_ALLOW_MATCHED.clone(),
        }
    }
}

static NO_ALLOW_MATCHED: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("no ALLOW policy matched"));

/// The facts one decision reads.
struct Facts<'a> {
    connection: &'a Connection<'a>,
    request: Option<&'a Request<'a>>,
    /// The normalized path (requests only).
    path: Option<&'a str>,
    /// The request's validated JWT, if any (requests only).
    auth: Option<&'a RequestAuth>,
    port: u16,
    remote: IpAddr,
}

/// The AuthorizationPolicies that apply to one workload port, compiled.
#[derive(Debug, Default)]
pub struct Authorizer {
    enforced: Engine,
    shadow: Engine,
    audit: Vec<Policy>,
    applied: Vec<Applied>,
    port: u16,
    num_trusted_proxies: u32,
    fingerprint: u64,
}

impl Authorizer {
    /// No policy applies: everything is allowed (Istio's default).
    pub fn allow_all() -> Arc<Authorizer> {
        Arc::new(Authorizer::default())
    }

    /// The policies (in load order) that apply to a port, specialised to its protocol.
    pub fn new(policies: &[Policy], port: PortFacts) -> Authorizer {
        use std::hash::{Hash, Hasher};
        // Everything the decisions depend on, so a reload that changes only a rule is seen
        // as a change of plan (`DefaultHasher::new` is stable within a process).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        format!("{policies:?}{port:?}").hash(&mut hasher);
        let mut a = Authorizer {
            port: port.port,
            num_trusted_proxies: port.num_trusted_proxies,
            fingerprint: hasher.finish(),
            ..Authorizer::default()
        };
        for p in policies {
            a.applied.push(Applied {
                name: p.name.clone(),
                action: p.action,
                dry_run: p.dry_run,
            });
            let mut p = p.clone();
            if port.tcp {
                p.rules = p
                    .rules
                    .iter()
                    .filter_map(|r| for_tcp(r, p.action))
                    .collect();
            }
            let engine = if p.dry_run {
                &mut a.shadow
            } else {
                &mut a.enforced
            };
            match p.action {
                Action::Allow => engine.allow.push(p),
                Action::Deny => engine.deny.push(p),
                Action::Custom => engine.custom.push(p),
                // A dry-run AUDIT has nothing to shadow.
                Action::Audit if p.dry_run => {}
                Action::Audit => a.audit.push(p),
            }
        }
        a
    }

    /// True when no policy applies, so the data path can skip building facts.
    pub fn is_empty(&self) -> bool {
        self.enforced.is_empty() && self.shadow.is_empty() && self.audit.is_empty()
    }

    /// A digest of the compiled policies and port facts: equal authorizers have equal
    /// fingerprints (a reload compares plans by their serialized form).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The policies that apply, in load order (dry-run ones included).
    pub fn applied(&self) -> &[Applied] {
        &self.applied
    }

    /// The port `ports` and `destination.port` match: the one compiled in, or, for the
    /// authorizer of a captured workload's undeclared ports (compiled for port 0), the port
    /// the connection was headed for.
    fn port_of(&self, connection: &Connection<'_>) -> u16 {
        if self.port == 0 {
            connection.destination.port()
        } else {
            self.port
        }
    }

    /// A TCP port's decision, once per connection, before any byte reaches the app.
    pub fn check_connection(&self, connection: &Connection<'_>) -> Outcome {
        if self.is_empty() {
            return Outcome::allow();
        }
        let facts = Facts {
            connection,
            request: None,
            path: None,
            auth: None,
            port: self.port_of(connection),
            remote: connection.source.ip(),
        };
        self.decide(&facts)
    }

    /// An HTTP port's decision, once per request, for a request without a JWT identity.
    pub fn check_request(&self, connection: &Connection<'_>, request: &Request<'_>) -> Outcome {
        self.check_request_with_auth(connection, request, None)
    }

    /// An HTTP port's decision, once per request, with the identity of the request's JWT
    /// (`AuthnOutcome::Authenticated` of [`crate::policy::jwt::Authenticator`]), if any.
    pub fn check_request_with_auth(
        &self,
        connection: &Connection<'_>,
        request: &Request<'_>,
        auth: Option<&RequestAuth>,
    ) -> Outcome {
        if request.method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Outcome::bad_request("lower-case method");
        }
        let path = match path::normalize(request.path) {
            Ok(p) => p,
            Err(reason) => return Outcome::bad_request(reason),
        };
        if self.is_empty() {
            return Outcome::allow();
        }
        let facts = Facts {
            connection,
            request: Some(request),
            path: Some(&path),
            auth,
            port: self.port_of(connection),
            remote: self.remote_ip(connection, request),
        };
        self.decide(&facts)
    }

    fn decide(&self, facts: &Facts<'_>) -> Outcome {
        let verdict = self.enforced.decide(facts);
        let audit = self
            .audit
            .iter()
            .any(|p| p.rules.iter().any(|r| r.matches(facts)));
        let shadow = (!self.shadow.is_empty()).then(|| self.shadow.decide(facts));
        Outcome {
            verdict,
            audit,
            shadow,
        }
    }

    /// The client address: the `numTrustedProxies`-th X-Forwarded-For entry from the right,
    /// or the TCP peer when there are none or fewer entries (Envoy's `xff_num_trusted_hops`).
    fn remote_ip(&self, connection: &Connection<'_>, request: &Request<'_>) -> IpAddr {
        let source = connection.source.ip();
        let n = self.num_trusted_proxies as usize;
        if n == 0 {
            return source;
        }
        let entries: Vec<&str> = request
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if entries.len() < n {
            return source;
        }
        entries[entries.len() - n].parse().unwrap_or(source)
    }
}

impl Outcome {
    fn bad_request(reason: &'static str) -> Outcome {
        Outcome {
            verdict: Verdict::BadRequest { reason },
            audit: false,
            shadow: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, negated: bool, matchers: Vec<Matcher>) -> Field {
        Field {
            name: name.into(),
            negated,
            matchers,
        }
    }

    fn methods() -> Field {
        field(
            "methods",
            false,
            vec![Matcher::Method(StrMatch::parse("GET"))],
        )
    }

    fn ports() -> Field {
        field("ports", false, vec![Matcher::Port(9001)])
    }

    fn namespaces() -> Field {
        field(
            "namespaces",
            false,
            vec![Matcher::Namespace(NamespaceMatch::new("default"))],
        )
    }

    fn policy(action: Action, rules: Vec<Rule>) -> Policy {
        Policy {
            name: Arc::from("default/p"),
            action,
            dry_run: false,
            provider: None,
            rules,
        }
    }

    fn facts_check(a: &Authorizer, peer: Option<&SpiffeId>) -> Verdict {
        a.check_connection(&Connection {
            peer,
            source: "127.0.0.1:1000".parse().unwrap(),
            destination: "127.0.0.1:9000".parse().unwrap(),
            sni: None,
        })
        .verdict
    }

    #[test]
    fn tcp_effect_table() {
        let l4 = Rule {
            from: vec![vec![namespaces()]],
            ..Rule::default()
        };
        let mixed = Rule {
            to: vec![vec![ports()], vec![methods()]],
            ..Rule::default()
        };
        let header = Rule {
            when: vec![field(
                "request.headers[x]",
                false,
                vec![Matcher::Header {
                    name: http::HeaderName::from_static("x"),
                    value: StrMatch::Present,
                }],
            )],
            ..Rule::default()
        };
        let m = || vec!["methods".to_string()];
        let table = [
            (&l4, Action::Allow, TcpEffect::Kept),
            (&l4, Action::Deny, TcpEffect::Kept),
            (&mixed, Action::Allow, TcpEffect::Dropped(m())),
            (&mixed, Action::Deny, TcpEffect::Widened(m())),
            (&mixed, Action::Audit, TcpEffect::Widened(m())),
            (&mixed, Action::Custom, TcpEffect::Widened(m())),
            (
                &header,
                Action::Allow,
                TcpEffect::Dropped(vec!["request.headers[x]".into()]),
            ),
        ];
        for (rule, action, want) in table {
            assert_eq!(tcp_effect(rule, action), want, "{rule:?} {action:?}");
        }
        // Widened: the HTTP-only operation becomes "any", so the whole `to` matches.
        let widened = for_tcp(&mixed, Action::Deny).unwrap();
        assert_eq!(widened.to.len(), 2);
        assert!(widened.to[1].is_empty());
        assert!(for_tcp(&mixed, Action::Allow).is_none());
    }

    #[test]
    fn a_tcp_port_specialises_the_rules() {
        let get_only = Rule {
            to: vec![vec![methods()]],
            ..Rule::default()
        };
        let tcp = PortFacts {
            port: 9001,
            tcp: true,
            num_trusted_proxies: 0,
        };
        let http = PortFacts { tcp: false, ..tcp };
        let id = SpiffeId::istio("cluster.local", "default", "a").unwrap();
        // ALLOW methods on TCP: the only rule is dropped, nothing is allowed.
        let allow = [policy(Action::Allow, vec![get_only.clone()])];
        assert!(matches!(
            facts_check(&Authorizer::new(&allow, tcp), Some(&id)),
            Verdict::Deny { .. }
        ));
        // DENY methods on TCP: widened to everything.
        let deny = [policy(Action::Deny, vec![get_only.clone()])];
        assert!(matches!(
            facts_check(&Authorizer::new(&deny, tcp), Some(&id)),
            Verdict::Deny { .. }
        ));
        // On an HTTP port a connection check has no request: methods match nothing.
        assert_eq!(
            facts_check(&Authorizer::new(&deny, http), Some(&id)),
            Verdict::Allow
        );
        assert!(Authorizer::allow_all().is_empty());
        assert!(!Authorizer::new(&deny, tcp).is_empty());
        assert_ne!(
            Authorizer::new(&deny, tcp).fingerprint(),
            Authorizer::new(&allow, tcp).fingerprint()
        );
        assert_eq!(
            Authorizer::new(&deny, tcp).fingerprint(),
            Authorizer::new(&deny, tcp).fingerprint()
        );
    }
}

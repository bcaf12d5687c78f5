//! AuthorizationPolicy (SEMANTICS §4): validation of the YAML, compilation into the pure
//! [`Policy`] of [`crate::policy::authz`], the scope rule (which policies apply to a
//! workload), and the per-port [`Authorizer`] with the warnings `outrider check` prints.
//!
//! Scope: policies of the root namespace (mesh-wide; their selectors match workloads of every
//! namespace) and of the workload's namespace whose `selector.matchLabels` ⊆ the workload's
//! labels. `targetRef`/`targetRefs` policies are for gateways and waypoints: a sidecar
//! ignores them (warned).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::ConfigError;
use super::plan::{MtlsMode, Protocol};
use super::resources::{
    AuthorizationPolicySpec, AuthzActionSpec, ConditionSpec, OperationSpec, Resource, SourceSpec,
};
use super::scope;
use super::source::Document;
use super::{Workload, WorkloadPort};
use crate::policy::authz::matcher::{
    Cidr, NamespaceMatch, PathMatch, ServiceAccountMatch, StrMatch,
};
use crate::policy::authz::{
    expand_principal, tcp_effect, Action, Authorizer, Clause, Field, Matcher, Policy, PortFacts,
    Rule, TcpEffect,
};

/// Istio's limit on `serviceAccounts` values per field.
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// The annotation that makes a policy shadow-only.
const DRY_RUN: &str = "istio.io/dry-run";

/// One validated AuthorizationPolicy.
#[derive(Debug, Clone)]
pub(crate) struct AuthzPolicy {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// `targetRef(s)` set: for gateways and waypoints, ignored by sidecars.
    pub targeted: bool,
    pub policy: Policy,
    /// `file:line` of `metadata.name`, for messages.
    pub origin: String,
}

/// Validates one document and compiles it. `trust_domains` is the mesh trust domain first,
/// then its aliases (none yet): principals in `cluster.local` or any of them mean all of them.
pub(crate) fn validate(
    doc: &Document,
    r: Resource<AuthorizationPolicySpec>,
    trust_domains: &[String],
    warnings: &mut Vec<String>,
) -> Result<AuthzPolicy, ConfigError> {
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
    let dry_run = match r.metadata.annotations.get(DRY_RUN) {
        None => false,
        Some(v) => {
            let text = v.as_str().unwrap_or_default();
            match text {
                "true" | "True" | "TRUE" | "t" | "T" | "1" => true,
                "false" | "False" | "FALSE" | "f" | "F" | "0" => false,
                _ => {
                    return Err(doc.error(
                        "metadata.annotations",
                        format!("{DRY_RUN} must be the string \"true\" or \"false\", not {v:?}"),
                    ))
                }
            }
        }
    };
    let spec = r.spec.unwrap_or_default();
    if spec.target_ref.is_some() && spec.target_refs.is_some() {
        return Err(doc.error("spec.targetRefs", "set targetRef or targetRefs, not both"));
    }
    let targeted = spec.target_ref.is_some() || spec.target_refs.is_some();
    let selector = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
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
        warn(warnings, field, format!("AuthorizationPolicy {full} targets a gateway or waypoint; sidecars ignore it (use spec.selector for a sidecar)"));
    }
    let action = match spec.action {
        AuthzActionSpec::Allow => Action::Allow,
        AuthzActionSpec::Deny => Action::Deny,
        AuthzActionSpec::Audit => Action::Audit,
        AuthzActionSpec::Custom => Action::Custom,
    };
    let provider = match (&spec.provider, action) {
        (Some(p), Action::Custom) if p.name.is_empty() => {
            return Err(doc.error("spec.provider.name", "must not be empty"))
        }
        (Some(p), Action::Custom) => Some(p.name.clone()),
        (None, Action::Custom) => {
            return Err(doc.error(
                "spec.provider",
                "a CUSTOM policy needs provider.name (an extension provider)",
            ))
        }
        (Some(_), _) => {
            return Err(doc.error(
                "spec.provider",
                format!(
                    "provider is only for action CUSTOM (this policy is {})",
                    action.as_str()
                ),
            ))
        }
        (None, _) => None,
    };
    let rules_spec = spec.rules.unwrap_or_default();
    if rules_spec.is_empty() && matches!(action, Action::Deny | Action::Custom) {
        return Err(doc.error(
            "spec.rules",
            format!(
                "a {} policy needs at least one rule (use `rules: [{{}}]` to match everything)",
                action.as_str()
            ),
        ));
    }
    if let Some(p) = &provider {
        warn(warnings, "spec.provider.name", format!("CUSTOM policy {full}: outrider has no external authorizer (provider {p:?} is not available); requests and connections it matches are denied"));
    }
    let ns = namespace.as_str();
    let mut rules = Vec::new();
    for (i, rule) in rules_spec.into_iter().enumerate() {
        let base = format!("spec.rules[{i}]");
        let mut compiled = Rule::default();
        if let Some(from) = rule.from {
            if from.is_empty() {
                return Err(doc.error(
                    &format!("{base}.from"),
                    "must not be empty (omit it to match every source)",
                ));
            }
            for (j, f) in from.into_iter().enumerate() {
                let field = format!("{base}.from[{j}].source");
                let Some(source) = f.source else {
                    return Err(doc.error(&field, "a from entry needs a non-empty source"));
                };
                compiled.from.push(source_clause(
                    doc,
                    &field,
                    source,
                    ns,
                    trust_domains,
                    warnings,
                )?);
            }
        }
        if let Some(to) = rule.to {
            if to.is_empty() {
                return Err(doc.error(
                    &format!("{base}.to"),
                    "must not be empty (omit it to match every operation)",
                ));
            }
            for (j, t) in to.into_iter().enumerate() {
                let field = format!("{base}.to[{j}].operation");
                let Some(operation) = t.operation else {
                    return Err(doc.error(&field, "a to entry needs a non-empty operation"));
                };
                compiled.to.push(operation_clause(doc, &field, operation)?);
            }
        }
        for (j, c) in rule.when.unwrap_or_default().into_iter().enumerate() {
            let field = format!("{base}.when[{j}]");
            compiled
                .when
                .extend(condition(doc, &field, c, ns, trust_domains)?);
        }
        rules.push(compiled);
    }
    Ok(AuthzPolicy {
        namespace,
        name,
        selector,
        targeted,
        policy: Policy {
            name: Arc::from(full),
            action,
            dry_run,
            provider,
            rules,
        },
        origin,
    })
}

fn field(name: &str, negated: bool, matchers: Vec<Matcher>) -> Option<Field> {
    (!matchers.is_empty()).then(|| Field {
        name: name.to_string(),
        negated,
        matchers,
    })
}

fn principals(values: &[String], trust_domains: &[String]) -> Vec<Matcher> {
    values
        .iter()
        .flat_map(|v| expand_principal(v, trust_domains))
        .map(|v| Matcher::Principal(StrMatch::parse(&v)))
        .collect()
}

fn cidrs(
    doc: &Document,
    field: &str,
    values: &[String],
    make: fn(Cidr) -> Matcher,
) -> Result<Vec<Matcher>, ConfigError> {
    values
        .iter()
        .map(|v| {
            Cidr::parse(v).map(make).ok_or_else(|| {
                doc.error(field, format!("{v:?} is not an IP address or CIDR block"))
            })
        })
        .collect()
}

fn service_accounts(
    doc: &Document,
    field: &str,
    values: &[String],
    namespace: &str,
) -> Result<Vec<Matcher>, ConfigError> {
    if values.len() > MAX_SERVICE_ACCOUNTS {
        return Err(doc.error(
            field,
            format!(
                "at most {MAX_SERVICE_ACCOUNTS} service accounts per field ({} given)",
                values.len()
            ),
        ));
    }
    values
        .iter()
        .map(|v| {
            let (ns, sa) = v.split_once('/').unwrap_or((namespace, v.as_str()));
            if v.contains('*') {
                return Err(doc.error(field, format!("{v:?}: service accounts take no wildcards")));
            }
            if ns.is_empty() || sa.is_empty() || sa.contains('/') {
                return Err(doc.error(
                    field,
                    format!("{v:?} is not `<namespace>/<serviceAccount>` or `<serviceAccount>`"),
                ));
            }
            Ok(Matcher::ServiceAccount(ServiceAccountMatch::new(ns, sa)))
        })
        .collect()
}

fn trust_domain(v: &str) -> Matcher {
    Matcher::TrustDomain((v != "*").then(|| v.to_string()))
}

fn source_clause(
    doc: &Document,
    at: &str,
    s: SourceSpec,
    namespace: &str,
    trust_domains: &[String],
    warnings: &mut Vec<String>,
) -> Result<Clause, ConfigError> {
    let f = |name: &str| format!("{at}.{name}");
    let with_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let with_identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if with_sa && with_identity {
        return Err(doc.error(
            &f("serviceAccounts"),
            "serviceAccounts cannot be combined with principals or namespaces in one source",
        ));
    }
    for (name, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        for v in values.iter().filter(|v| v.starts_with("spiffe://")) {
            let at = doc.locate(&f(name));
            warnings.push(format!(
                "{}:{}: {}: principal {v:?} starts with spiffe://, which Istio adds itself: it never matches (write {:?})",
                at.file.display(),
                at.line,
                f(name),
                v.trim_start_matches("spiffe://")
            ));
        }
    }
    let request_principals =
        |values: &[String]| values.iter().map(|v| request_principal(v)).collect();
    let namespaces = |values: &[String]| {
        values
            .iter()
            .map(|v| Matcher::Namespace(NamespaceMatch::new(v)))
            .collect()
    };
    let tds = |values: &[String]| values.iter().map(|v| trust_domain(v)).collect();
    let fields = [
        field(
            "principals",
            false,
            principals(&s.principals, trust_domains),
        ),
        field(
            "notPrincipals",
            true,
            principals(&s.not_principals, trust_domains),
        ),
        field(
            "requestPrincipals",
            false,
            request_principals(&s.request_principals),
        ),
        field(
            "notRequestPrincipals",
            true,
            request_principals(&s.not_request_principals),
        ),
        field("namespaces", false, namespaces(&s.namespaces)),
        field("notNamespaces", true, namespaces(&s.not_namespaces)),
        field(
            "serviceAccounts",
            false,
            service_accounts(doc, &f("serviceAccounts"), &s.service_accounts, namespace)?,
        ),
        field(
            "notServiceAccounts",
            true,
            service_accounts(
                doc,
                &f("notServiceAccounts"),
                &s.not_service_accounts,
                namespace,
            )?,
        ),
        field(
            "ipBlocks",
            false,
            cidrs(doc, &f("ipBlocks"), &s.ip_blocks, Matcher::SourceIp)?,
        ),
        field(
            "notIpBlocks",
            true,
            cidrs(doc, &f("notIpBlocks"), &s.not_ip_blocks, Matcher::SourceIp)?,
        ),
        field(
            "remoteIpBlocks",
            false,
            cidrs(
                doc,
                &f("remoteIpBlocks"),
                &s.remote_ip_blocks,
                Matcher::RemoteIp,
            )?,
        ),
        field(
            "notRemoteIpBlocks",
            true,
            cidrs(
                doc,
                &f("notRemoteIpBlocks"),
                &s.not_remote_ip_blocks,
                Matcher::RemoteIp,
            )?,
        ),
        field("trustDomains", false, tds(&s.trust_domains)),
        field("notTrustDomains", true, tds(&s.not_trust_domains)),
    ];
    let clause: Clause = fields.into_iter().flatten().collect();
    if clause.is_empty() {
        return Err(doc.error(at, "source must set at least one field"));
    }
    Ok(clause)
}

fn port_number(doc: &Document, field: &str, v: &str) -> Result<u16, ConfigError> {
    v.parse::<u16>()
        .map_err(|_| doc.error(field, format!("port {v:?} is not a number in 0-65535")))
}

fn operation_clause(doc: &Document, at: &str, o: OperationSpec) -> Result<Clause, ConfigError> {
    let f = |name: &str| format!("{at}.{name}");
    let hosts = |values: &[String]| {
        values
            .iter()
            .map(|v| Matcher::Host(StrMatch::parse(v).lowercase()))
            .collect()
    };
    let methods = |values: &[String]| {
        values
            .iter()
            .map(|v| Matcher::Method(StrMatch::parse(v)))
            .collect()
    };
    let ports = |name: &str, values: &[String]| -> Result<Vec<Matcher>, ConfigError> {
        values
            .iter()
            .map(|v| port_number(doc, &f(name), v).map(Matcher::Port))
            .collect()
    };
    let paths = |name: &str, values: &[String]| -> Result<Vec<Matcher>, ConfigError> {
        values
            .iter()
            .map(|v| {
                PathMatch::parse(v)
                    .map(Matcher::Path)
                    .map_err(|e| doc.error(&f(name), format!("{v:?}: {e}")))
            })
            .collect()
    };
    let fields = [
        field("hosts", false, hosts(&o.hosts)),
        field("notHosts", true, hosts(&o.not_hosts)),
        field("ports", false, ports("ports", &o.ports)?),
        field("notPorts", true, ports("notPorts", &o.not_ports)?),
        field("methods", false, methods(&o.methods)),
        field("notMethods", true, methods(&o.not_methods)),
        field("paths", false, paths("paths", &o.paths)?),
        field("notPaths", true, paths("notPaths", &o.not_paths)?),
    ];
    let clause: Clause = fields.into_iter().flatten().collect();
    if clause.is_empty() {
        return Err(doc.error(at, "operation must set at least one field"));
    }
    Ok(clause)
}

/// One `when` condition: a field for `values` and one for `notValues` (both must hold).
fn condition(
    doc: &Document,
    at: &str,
    c: ConditionSpec,
    namespace: &str,
    trust_domains: &[String],
) -> Result<Vec<Field>, ConfigError> {
    let key = c.key.as_str();
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(doc.error(at, format!("condition {key:?} needs values or notValues")));
    }
    let vfield = format!("{at}.values");
    let compile = |values: &[String], field_at: &str| -> Result<Vec<Matcher>, ConfigError> {
        let each = |f: &dyn Fn(&str) -> Result<Matcher, ConfigError>| {
            values.iter().map(|v| f(v)).collect::<Result<Vec<_>, _>>()
        };
        let cidr = |make: fn(Cidr) -> Matcher| cidrs(doc, field_at, values, make);
        if let Some(header) = key
            .strip_prefix("request.headers[")
            .and_then(|h| h.strip_suffix(']'))
        {
            let name = http::HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    doc.error(
                        &format!("{at}.key"),
                        format!("{header:?} is not a valid header name"),
                    )
                })?;
            return each(&|v| {
                Ok(Matcher::Header {
                    name: name.clone(),
                    value: StrMatch::parse(v),
                })
            });
        }
        match key {
            "source.ip" => cidr(Matcher::SourceIp),
            "remote.ip" => cidr(Matcher::RemoteIp),
            "destination.ip" => cidr(Matcher::DestinationIp),
            "source.namespace" => each(&|v| Ok(Matcher::Namespace(NamespaceMatch::new(v)))),
            "source.principal" => Ok(principals(values, trust_domains)),
            "source.serviceAccount" => service_accounts(doc, field_at, values, namespace),
            "source.trustDomain" => each(&|v| Ok(trust_domain(v))),
            "destination.port" => each(&|v| port_number(doc, field_at, v).map(Matcher::Port)),
            "connection.sni" => each(&|v| Ok(Matcher::Sni(StrMatch::parse(v)))),
            "request.auth.principal" => each(&|v| Ok(request_principal(v))),
            "request.auth.audiences" => each(&|v| Ok(Matcher::RequestAudience(StrMatch::parse(v)))),
            "request.auth.presenter" => {
                each(&|v| Ok(Matcher::RequestPresenter(StrMatch::parse(v))))
            }
            k if k.starts_with("request.auth.claims") => {
                let path = claim_path(&k["request.auth.claims".len()..]).ok_or_else(|| {
                    doc.error(
                        &format!("{at}.key"),
                        format!("{k:?} is not request.auth.claims[<name>] (nested: [<a>][<b>])"),
                    )
                })?;
                each(&|v| {
                    Ok(Matcher::RequestClaim {
                        path: path.clone(),
                        value: StrMatch::parse(v),
                    })
                })
            }
            k if k.starts_with("experimental.envoy.filters.") => each(&|_| Ok(Matcher::Absent)),
            _ => Err(doc.error(
                &format!("{at}.key"),
                format!("unknown condition key {key:?} (see istio.io/latest/docs/reference/config/security/conditions/)"),
            )),
        }
    };
    let mut out = Vec::new();
    out.extend(field(key, false, compile(&c.values, &vfield)?));
    let not_name = format!("{key} (notValues)");
    out.extend(field(
        &not_name,
        true,
        compile(&c.not_values, &format!("{at}.notValues"))?,
    ));
    Ok(out)
}

/// A `requestPrincipals` (or `request.auth.principal`) value as Istio's generator reads it:
/// split at the last `/` into `iss` and `sub`; `*` = both present; a leading `*` makes the
/// issuer a suffix (or, without `/`, the subject), a trailing `*` the subject a prefix (or,
/// without `/`, the issuer); `*` alone on either side = present.
fn request_principal(value: &str) -> Matcher {
    let split = value.rfind('/');
    let (iss, sub) = match split {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, ""),
    };
    let exact = |s: &str| StrMatch::Exact(s.to_string());
    let (iss, sub) = if value == "*" {
        (StrMatch::Present, StrMatch::Present)
    } else if let Some(rest) = value.strip_prefix('*') {
        match split {
            Some(_) if iss == "*" => (StrMatch::Present, exact(sub)),
            Some(_) => (StrMatch::Suffix(iss[1..].to_string()), exact(sub)),
            None => (StrMatch::Present, StrMatch::Suffix(rest.to_string())),
        }
    } else if let Some(rest) = value.strip_suffix('*') {
        match split {
            Some(_) if sub == "*" => (exact(iss), StrMatch::Present),
            Some(_) => (
                exact(iss),
                StrMatch::Prefix(sub[..sub.len() - 1].to_string()),
            ),
            None => (StrMatch::Prefix(rest.to_string()), StrMatch::Present),
        }
    } else {
        (exact(iss), exact(sub))
    };
    Matcher::RequestPrincipal { iss, sub }
}

/// `[a][b]` (after `request.auth.claims`) → `["a", "b"]`, as Istio's
/// `extractNameInNestedBrackets`; `None` when it is not a sequence of bracketed names.
fn claim_path(mut rest: &str) -> Option<Vec<String>> {
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name.to_string());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

impl super::scope::Scoped for AuthzPolicy {
    const KIND: &'static str = "AuthorizationPolicy";
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

/// The authorizer of port `p` of `w` (policies in load order), and the port's warnings.
pub(crate) fn authorizer(
    policies: &[AuthzPolicy],
    root_namespace: &str,
    w: &Workload,
    p: &WorkloadPort,
    mode: MtlsMode,
    warnings: &mut Vec<String>,
) -> Arc<Authorizer> {
    let applying: Vec<&AuthzPolicy> = policies
        .iter()
        .filter(|a| scope::applies_to(*a, root_namespace, w))
        .collect();
    if applying.is_empty() {
        return Authorizer::allow_all();
    }
    let tcp = matches!(p.protocol, Protocol::Tcp | Protocol::Tls);
    let port_text = format!(
        "workload {} port {} ({})",
        w.name,
        p.port,
        protocol_name(p.protocol)
    );
    for a in &applying {
        let policy = &a.policy;
        let all_dropped = policy.action == Action::Allow
            && !policy.rules.is_empty()
            && policy
                .rules
                .iter()
                .all(|r| matches!(tcp_effect(r, Action::Allow), TcpEffect::Dropped(_)));
        if tcp && all_dropped {
            warnings.push(format!(
                "{}: ALLOW policy {} has no rule left on TCP {port_text} (every rule uses HTTP-only fields): unless another ALLOW policy matches, every connection is denied",
                a.origin, policy.name
            ));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if tcp {
                match tcp_effect(rule, policy.action) {
                    TcpEffect::Kept => {}
                    TcpEffect::Dropped(fields) => warnings.push(format!(
                        "{}: AuthorizationPolicy {} rule {i} uses HTTP-only fields ({}) and is dropped on TCP {port_text}: ALLOW without a rule that matches TCP may deny every connection",
                        a.origin, policy.name, fields.join(", ")
                    )),
                    TcpEffect::Widened(fields) => warnings.push(format!(
                        "{}: AuthorizationPolicy {} ({}) rule {i}: HTTP-only fields ({}) are ignored on TCP {port_text}, so the rule matches more{}",
                        a.origin,
                        policy.name,
                        policy.action.as_str(),
                        fields.join(", "),
                        if policy.action == Action::Deny { " (it may deny every TCP connection; scope it with ports)" } else { "" }
                    )),
                }
            }
            if mode != MtlsMode::Strict {
                let identity: Vec<&str> = rule
                    .from
                    .iter()
                    .flatten()
                    .chain(&rule.when)
                    .filter(|f| f.matchers.iter().any(Matcher::needs_identity))
                    .map(|f| f.name.as_str())
                    .collect();
                if !identity.is_empty() {
                    warnings.push(format!(
                        "{}: AuthorizationPolicy {} rule {i} uses {} on {port_text}, whose mode {} accepts plaintext: a plaintext client has no identity, so these never match it (not* forms always do)",
                        a.origin, policy.name, identity.join(", "), mode_name(mode)
                    ));
                }
            }
        }
    }
    let list: Vec<Policy> = applying.iter().map(|a| a.policy.clone()).collect();
    Arc::new(Authorizer::new(
        &list,
        PortFacts {
            port: p.target_port,
            tcp,
            num_trusted_proxies: w.num_trusted_proxies,
        },
    ))
}

fn mode_name(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Strict => "STRICT",
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tls => "TLS",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::{load_str, MeshConfig};
    use crate::identity::SpiffeId;
    use crate::policy::authz::{Connection, Outcome, Request, Verdict};
    use crate::policy::jwt::RequestAuth;

    use super::*;

    const SENTENCES: &str = "spiffe://cluster.local/ns/default/sa/sentences";
    const OTHER_NS: &str = "spiffe://cluster.local/ns/other/sa/sentences";
    const FOREIGN_TD: &str = "spiffe://foo.bar/ns/default/sa/sentences";

    fn workload(td: &str, trusted: u32) -> String {
        format!(
            "apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: {td} }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: age, namespace: default, labels: {{ app: age }} }}
spec:
  serviceAccount: age
  address: 127.0.0.1
  numTrustedProxies: {trusted}
  ports:
    - {{ name: http, port: 8081, targetPort: 9081, protocol: HTTP }}
    - {{ name: tcp, port: 9000, targetPort: 9001, protocol: TCP }}
"
        )
    }

    /// An AuthorizationPolicy `name` in `default` with `action` and (flow-style) `rules`.
    fn ap(name: &str, action: &str, rules: &str) -> String {
        let rules = if rules.is_empty() {
            String::new()
        } else {
            format!("  rules: {rules}\n")
        };
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: default }}\nspec:\n  action: {action}\n{rules}")
    }

    fn mesh(td: &str, trusted: u32, policies: &str) -> MeshConfig {
        load_str("mesh.yaml", &format!("{}{policies}", workload(td, trusted)))
            .unwrap_or_else(|e| panic!("{e}\n{policies}"))
    }

    /// The authorizer of age's port `index` (0 HTTP, 1 TCP).
    fn authorizer(policies: &str, index: usize) -> Arc<Authorizer> {
        let plan = mesh("cluster.local", 0, policies).plan("age").unwrap();
        plan.inbound[index].authorization.clone()
    }

    struct Call<'a> {
        peer: Option<&'a str>,
        source: &'a str,
        sni: Option<&'a str>,
        method: &'a str,
        authority: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
        /// The request's JWT identity (`None`: no token).
        auth: Option<&'a RequestAuth>,
    }

    const CALL: Call<'static> = Call {
        peer: Some(SENTENCES),
        source: "127.0.0.5:40000",
        sni: None,
        method: "GET",
        authority: "age.default:8081",
        path: "/api/items?x=1",
        headers: &[],
        auth: None,
    };

    /// A validated token of alice at `https://issuer.example` (`principal: false`: several
    /// tokens, so no principal).
    fn jwt(principal: bool) -> RequestAuth {
        let claims = serde_json::json!({
            "iss": "https://issuer.example", "sub": "alice", "azp": "frontend",
            "aud": ["age", "name"], "scope": "openid profile", "groups": ["dev", "ops"],
            "org": { "team": "blue" }, "level": 3
        });
        RequestAuth {
            principal: principal.then(|| "https://issuer.example/alice".to_string()),
            audiences: vec!["age".into(), "name".into()],
            presenter: Some("frontend".into()),
            claims,
            space_delimited_claims: vec!["scope".to_string(), "permission".to_string()].into(),
        }
    }

    fn connection_of<'a>(call: &Call<'a>, id: Option<&'a SpiffeId>) -> Connection<'a> {
        Connection {
            peer: id,
            source: call.source.parse().unwrap(),
            destination: "127.0.0.1:8081".parse::<SocketAddr>().unwrap(),
            sni: call.sni,
        }
    }

    fn request(a: &Authorizer, call: &Call<'_>) -> Outcome {
        let id = call.peer.map(|p| SpiffeId::parse(p).unwrap());
        let mut headers = http::HeaderMap::new();
        for (k, v) in call.headers {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = Request {
            method: call.method,
            authority: call.authority,
            path: call.path,
            headers: &headers,
        };
        a.check_request_with_auth(&connection_of(call, id.as_ref()), &req, call.auth)
    }

    fn connection(a: &Authorizer, call: &Call<'_>) -> Outcome {
        let id = call.peer.map(|p| SpiffeId::parse(p).unwrap());
        a.check_connection(&connection_of(call, id.as_ref()))
    }

    fn allowed(o: &Outcome) -> bool {
        o.verdict == Verdict::Allow
    }

    /// Every matching rule of §4, as an ALLOW policy with one rule on the HTTP port: does the
    /// call get through?
    #[test]
    fn matching_rules() {
        let plain = Call { peer: None, ..CALL };
        let other_ns = Call {
            peer: Some(OTHER_NS),
            ..CALL
        };
        let foreign = Call {
            peer: Some(FOREIGN_TD),
            ..CALL
        };
        let alice = jwt(true);
        let two_tokens = jwt(false);
        let with_jwt = Call {
            auth: Some(&alice),
            ..CALL
        };
        let with_two = Call {
            auth: Some(&two_tokens),
            ..CALL
        };
        let src = |s: &str| format!("[{{ from: [{{ source: {{ {s} }} }}] }}]");
        let op = |s: &str| format!("[{{ to: [{{ operation: {{ {s} }} }}] }}]");
        let when = |s: &str| format!("[{{ when: [{{ {s} }}] }}]");
        #[rustfmt::skip]
        let table: Vec<(&str, String, &Call, bool)> = vec![
            ("principal exact", src("principals: [cluster.local/ns/default/sa/sentences]"), &CALL, true),
            ("principal exact, other ns", src("principals: [cluster.local/ns/default/sa/sentences]"), &other_ns, false),
            ("principal prefix", src("principals: [\"cluster.local/ns/default/*\"]"), &CALL, true),
            ("principal prefix, other ns", src("principals: [\"cluster.local/ns/default/*\"]"), &other_ns, false),
            ("principal suffix ignores the trust domain", src("principals: [\"*/ns/default/sa/sentences\"]"), &foreign, true),
            ("principal * needs an identity", src("principals: [\"*\"]"), &CALL, true),
            ("principal * on plaintext", src("principals: [\"*\"]"), &plain, false),
            ("plaintext never matches principals", src("principals: [cluster.local/ns/default/sa/sentences]"), &plain, false),
            ("notPrincipals matches plaintext", src("notPrincipals: [cluster.local/ns/default/sa/sentences]"), &plain, true),
            ("notPrincipals excludes", src("notPrincipals: [cluster.local/ns/default/sa/sentences]"), &CALL, false),
            ("spiffe:// prefix never matches", src("principals: [\"spiffe://cluster.local/ns/default/sa/sentences\"]"), &CALL, false),
            ("other trust domain exact", src("principals: [foo.bar/ns/default/sa/sentences]"), &foreign, true),
            ("local td does not match a foreign td", src("principals: [cluster.local/ns/default/sa/sentences]"), &foreign, false),
            ("namespaces", src("namespaces: [default]"), &CALL, true),
            ("namespaces, other", src("namespaces: [default]"), &other_ns, false),
            ("namespaces prefix", src("namespaces: [\"def*\"]"), &CALL, true),
            ("namespaces on plaintext", src("namespaces: [default]"), &plain, false),
            ("notNamespaces on plaintext", src("notNamespaces: [default]"), &plain, true),
            ("serviceAccounts short form = policy namespace", src("serviceAccounts: [sentences]"), &CALL, true),
            ("serviceAccounts short form, other ns", src("serviceAccounts: [sentences]"), &other_ns, false),
            ("serviceAccounts ns/sa", src("serviceAccounts: [other/sentences]"), &other_ns, true),
            ("serviceAccounts any trust domain", src("serviceAccounts: [default/sentences]"), &foreign, true),
            ("serviceAccounts on plaintext", src("serviceAccounts: [sentences]"), &plain, false),
            ("trustDomains", src("trustDomains: [cluster.local]"), &CALL, true),
            ("trustDomains other", src("trustDomains: [cluster.local]"), &foreign, false),
            ("trustDomains *", src("trustDomains: [\"*\"]"), &foreign, true),
            ("trustDomains * on plaintext", src("trustDomains: [\"*\"]"), &plain, false),
            ("ipBlocks CIDR", src("ipBlocks: [127.0.0.0/8]"), &plain, true),
            ("ipBlocks address", src("ipBlocks: [127.0.0.5]"), &plain, true),
            ("ipBlocks miss", src("ipBlocks: [10.0.0.0/8]"), &CALL, false),
            ("notIpBlocks", src("notIpBlocks: [10.0.0.0/8]"), &CALL, true),
            ("remoteIpBlocks = source without trusted proxies", src("remoteIpBlocks: [127.0.0.5]"), &CALL, true),
            ("requestPrincipals without a JWT", src("requestPrincipals: [\"*\"]"), &CALL, false),
            ("notRequestPrincipals without a JWT", src("notRequestPrincipals: [\"*\"]"), &CALL, true),
            ("requestPrincipals * with a JWT", src("requestPrincipals: [\"*\"]"), &with_jwt, true),
            ("requestPrincipals exact", src("requestPrincipals: [https://issuer.example/alice]"), &with_jwt, true),
            ("requestPrincipals other subject", src("requestPrincipals: [https://issuer.example/bob]"), &with_jwt, false),
            ("requestPrincipals split at the last /", src("requestPrincipals: [\"https://issuer.example/*\"]"), &with_jwt, true),
            ("requestPrincipals subject prefix", src("requestPrincipals: [\"https://issuer.example/al*\"]"), &with_jwt, true),
            ("requestPrincipals any issuer", src("requestPrincipals: [\"*/alice\"]"), &with_jwt, true),
            ("requestPrincipals issuer suffix", src("requestPrincipals: [\"*.example/alice\"]"), &with_jwt, true),
            ("requestPrincipals issuer suffix, other subject", src("requestPrincipals: [\"*.example/bob\"]"), &with_jwt, false),
            ("requestPrincipals: the last / splits, even in https://", src("requestPrincipals: [\"https://issuer*\"]"), &with_jwt, false),
            ("requestPrincipals other issuer", src("requestPrincipals: [\"https://other.example/*\"]"), &with_jwt, false),
            ("requestPrincipals * with several tokens (no principal)", src("requestPrincipals: [\"*\"]"), &with_two, false),
            ("notRequestPrincipals * with a JWT", src("notRequestPrincipals: [\"*\"]"), &with_jwt, false),
            ("notRequestPrincipals other", src("notRequestPrincipals: [https://issuer.example/bob]"), &with_jwt, true),
            ("fields of a source AND", src("principals: [cluster.local/ns/default/sa/sentences], ipBlocks: [10.0.0.0/8]"), &CALL, false),
            ("ports = the app port", op("ports: [\"9081\"]"), &CALL, true),
            ("ports: the sidecar port is not it", op("ports: [\"8081\"]"), &CALL, false),
            ("notPorts", op("notPorts: [\"9081\"]"), &CALL, false),
            ("hosts exact keeps the port", op("hosts: [age.default]"), &CALL, false),
            ("hosts with port", op("hosts: [\"age.default:8081\"]"), &CALL, true),
            ("hosts case-insensitive, port wildcard", op("hosts: [\"AGE.Default:*\"]"), &CALL, true),
            ("hosts suffix", op("hosts: [\"*:8081\"]"), &CALL, true),
            ("methods", op("methods: [GET]"), &CALL, true),
            ("methods miss", op("methods: [POST]"), &CALL, false),
            ("notMethods", op("notMethods: [POST]"), &CALL, true),
            ("paths ignore the query", op("paths: [/api/items]"), &CALL, true),
            ("paths prefix", op("paths: [\"/api/*\"]"), &CALL, true),
            ("paths suffix", op("paths: [\"*/items\"]"), &CALL, true),
            ("paths {*}", op("paths: [\"/{*}/items\"]"), &CALL, true),
            ("paths {**}", op("paths: [\"/api/{**}\"]"), &CALL, true),
            ("paths {*} is one segment", op("paths: [\"/{*}\"]"), &CALL, false),
            ("notPaths", op("notPaths: [\"/api/*\"]"), &CALL, false),
            ("fields of an operation AND", op("methods: [GET], paths: [/other]"), &CALL, false),
            ("when header", when("key: \"request.headers[X-User]\", values: [alice]"), &Call { headers: &[("x-user", "alice")], ..CALL }, true),
            ("when header absent", when("key: \"request.headers[x-user]\", values: [\"*\"]"), &CALL, false),
            ("when header notValues absent", when("key: \"request.headers[x-user]\", notValues: [alice]"), &CALL, true),
            ("when header duplicates joined", when("key: \"request.headers[x-user]\", values: [\"a,b\"]"), &Call { headers: &[("x-user", "a"), ("x-user", "b")], ..CALL }, true),
            ("when source.ip", when("key: source.ip, values: [127.0.0.0/8]"), &CALL, true),
            ("when remote.ip", when("key: remote.ip, values: [10.0.0.0/8]"), &CALL, false),
            ("when source.namespace", when("key: source.namespace, values: [default]"), &CALL, true),
            ("when source.principal", when("key: source.principal, values: [cluster.local/ns/default/sa/sentences]"), &CALL, true),
            ("when source.principal plaintext", when("key: source.principal, notValues: [cluster.local/ns/default/sa/sentences]"), &plain, true),
            ("when source.serviceAccount", when("key: source.serviceAccount, values: [default/sentences]"), &CALL, true),
            ("when source.trustDomain", when("key: source.trustDomain, values: [foo.bar]"), &foreign, true),
            ("when destination.port", when("key: destination.port, values: [\"9081\"]"), &CALL, true),
            ("when destination.ip", when("key: destination.ip, values: [127.0.0.1]"), &CALL, true),
            ("when connection.sni", when("key: connection.sni, values: [\"outbound_.*\"]"), &Call { sni: Some("outbound_.8081_._.age"), ..CALL }, true),
            ("when connection.sni absent", when("key: connection.sni, values: [\"*\"]"), &CALL, false),
            ("when request.auth.principal without a JWT", when("key: request.auth.principal, values: [\"*\"]"), &CALL, false),
            ("when request.auth.claims notValues", when("key: \"request.auth.claims[groups]\", notValues: [admin]"), &CALL, true),
            ("when request.auth.principal", when("key: request.auth.principal, values: [https://issuer.example/alice]"), &with_jwt, true),
            ("when request.auth.principal prefix", when("key: request.auth.principal, values: [\"https://issuer.example/*\"]"), &with_jwt, true),
            ("when request.auth.audiences", when("key: request.auth.audiences, values: [name]"), &with_jwt, true),
            ("when request.auth.audiences miss", when("key: request.auth.audiences, values: [other]"), &with_jwt, false),
            ("when request.auth.presenter", when("key: request.auth.presenter, values: [\"front*\"]"), &with_jwt, true),
            ("when request.auth.presenter without a JWT", when("key: request.auth.presenter, notValues: [frontend]"), &CALL, true),
            ("when request.auth.claims list element", when("key: \"request.auth.claims[groups]\", values: [ops]"), &with_jwt, true),
            ("when request.auth.claims notValues list element", when("key: \"request.auth.claims[groups]\", notValues: [dev]"), &with_jwt, false),
            ("when request.auth.claims nested", when("key: \"request.auth.claims[org][team]\", values: [blue]"), &with_jwt, true),
            ("when request.auth.claims scope is split", when("key: \"request.auth.claims[scope]\", values: [profile]"), &with_jwt, true),
            ("when request.auth.claims a number never matches", when("key: \"request.auth.claims[level]\", values: [\"3\"]"), &with_jwt, false),
            ("when request.auth.claims with several tokens", when("key: \"request.auth.claims[groups]\", values: [dev]"), &with_two, true),
            ("when values and notValues both hold", when("key: source.namespace, values: [default], notValues: [default]"), &CALL, false),
            ("from OR", "[{ from: [{ source: { namespaces: [x] } }, { source: { namespaces: [default] } }] }]".into(), &CALL, true),
            ("from AND to", "[{ from: [{ source: { namespaces: [default] } }], to: [{ operation: { methods: [POST] } }] }]".into(), &CALL, false),
            ("separate rules OR", "[{ from: [{ source: { namespaces: [x] } }] }, { to: [{ operation: { methods: [GET] } }] }]".into(), &CALL, true),
        ];
        for (case, rules, call, want) in table {
            let a = authorizer(&ap("p", "ALLOW", &rules), 0);
            let got = request(&a, call);
            assert_eq!(allowed(&got), want, "{case}: {rules} -> {got:?}");
        }
    }

    /// Istio's `requestPrincipalGenerator`, value by value.
    #[test]
    fn request_principal_values() {
        let m = |iss: StrMatch, sub: StrMatch| Matcher::RequestPrincipal { iss, sub };
        let ex = |s: &str| StrMatch::Exact(s.into());
        let table = [
            ("*", m(StrMatch::Present, StrMatch::Present)),
            ("iss/sub", m(ex("iss"), ex("sub"))),
            ("https://a.b/c/sub", m(ex("https://a.b/c"), ex("sub"))),
            ("iss/*", m(ex("iss"), StrMatch::Present)),
            ("iss/su*", m(ex("iss"), StrMatch::Prefix("su".into()))),
            ("*/sub", m(StrMatch::Present, ex("sub"))),
            ("*ss/sub", m(StrMatch::Suffix("ss".into()), ex("sub"))),
            ("iss*", m(StrMatch::Prefix("iss".into()), StrMatch::Present)),
            ("*sub", m(StrMatch::Present, StrMatch::Suffix("sub".into()))),
            ("iss", m(ex("iss"), ex(""))),
        ];
        for (value, want) in table {
            assert_eq!(request_principal(value), want, "{value}");
        }
        assert_eq!(
            claim_path("[a][b.c]"),
            Some(vec!["a".to_string(), "b.c".to_string()])
        );
        for bad in ["", "[a", "a]", "[]", "[a]x", "[[a]]"] {
            assert_eq!(claim_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn cluster_local_means_our_trust_domain() {
        let policy = ap(
            "p",
            "ALLOW",
            "[{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }] }]",
        );
        let plan = mesh("example.org", 0, &policy).plan("age").unwrap();
        let a = &plan.inbound[0].authorization;
        let ours = Call {
            peer: Some("spiffe://example.org/ns/default/sa/sentences"),
            ..CALL
        };
        assert!(allowed(&request(a, &ours)));
        // the literal cluster.local is not our trust domain any more
        assert!(!allowed(&request(a, &CALL)));
        // an explicit example.org principal means the same
        let policy = ap(
            "p",
            "ALLOW",
            "[{ from: [{ source: { principals: [example.org/ns/default/sa/sentences] } }] }]",
        );
        let plan = mesh("example.org", 0, &policy).plan("age").unwrap();
        assert!(allowed(&request(&plan.inbound[0].authorization, &ours)));
        assert_eq!(
            expand_principal(
                "cluster.local/ns/a/sa/b",
                &["td1".to_string(), "alias".to_string()]
            ),
            ["td1/ns/a/sa/b", "alias/ns/a/sa/b"]
        );
        assert_eq!(
            expand_principal("*/ns/a/sa/b", &["td1".to_string()]),
            ["*/ns/a/sa/b"]
        );
        assert_eq!(
            expand_principal("other/ns/a/sa/b", &["td1".to_string()]),
            ["other/ns/a/sa/b"]
        );
    }

    #[test]
    fn remote_ip_follows_num_trusted_proxies() {
        let policy = ap(
            "p",
            "ALLOW",
            "[{ from: [{ source: { remoteIpBlocks: [203.0.113.0/24] } }] }]",
        );
        let xff: &[(&str, &str)] = &[("x-forwarded-for", "203.0.113.7, 10.0.0.1")];
        let call = Call {
            headers: xff,
            ..CALL
        };
        // (numTrustedProxies, allowed)
        for (n, want) in [(0, false), (1, false), (2, true), (3, false)] {
            let plan = mesh("cluster.local", n, &policy).plan("age").unwrap();
            let got = request(&plan.inbound[0].authorization, &call);
            assert_eq!(allowed(&got), want, "numTrustedProxies {n}");
        }
    }

    /// CUSTOM → DENY → ALLOW → default, AUDIT beside, dry-run apart.
    #[test]
    fn order_of_actions() {
        let all = "[{}]";
        let get = "[{ to: [{ operation: { methods: [GET] } }] }]";
        let post = "[{ to: [{ operation: { methods: [POST] } }] }]";
        let custom = |name: &str, rules: &str| {
            ap(name, "CUSTOM", rules) + "  provider: { name: ext-authz }\n"
        };
        let dry = |doc: String| {
            doc.replace(
                "namespace: default }",
                "namespace: default, annotations: { istio.io/dry-run: \"true\" } }",
            )
        };
        let deny = |p: &str| Verdict::Deny {
            policy: Arc::from(p),
        };
        let none = deny("no ALLOW policy matched");
        #[rustfmt::skip]
        let table: Vec<(&str, String, Verdict, bool, Option<Verdict>)> = vec![
            ("no policy", String::new(), Verdict::Allow, false, None),
            ("ALLOW without rules allows nothing", ap("a", "ALLOW", ""), none.clone(), false, None),
            ("spec {} allows nothing", "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: a, namespace: default }\nspec: {}\n".into(), none.clone(), false, None),
            ("rules [{}] allows all", ap("a", "ALLOW", all), Verdict::Allow, false, None),
            ("DENY rules [{}] denies all", ap("d", "DENY", all), deny("default/d"), false, None),
            ("DENY beats ALLOW", ap("a", "ALLOW", all) + &ap("d", "DENY", get), deny("default/d"), false, None),
            ("DENY not matching", ap("d", "DENY", post), Verdict::Allow, false, None),
            ("ALLOW not matching", ap("a", "ALLOW", post), none.clone(), false, None),
            ("one ALLOW of two matches", ap("a", "ALLOW", post) + &ap("b", "ALLOW", get), Verdict::Allow, false, None),
            ("CUSTOM matching denies (no provider)", custom("c", get) + &ap("a", "ALLOW", all), deny("default/c"), false, None),
            ("CUSTOM first", custom("c", get) + &ap("d", "DENY", all), deny("default/c"), false, None),
            ("CUSTOM not matching", custom("c", post), Verdict::Allow, false, None),
            ("AUDIT marks", ap("au", "AUDIT", get), Verdict::Allow, true, None),
            ("AUDIT does not change a deny", ap("au", "AUDIT", get) + &ap("d", "DENY", all), deny("default/d"), true, None),
            ("AUDIT not matching", ap("au", "AUDIT", post), Verdict::Allow, false, None),
            ("dry-run DENY is not enforced", dry(ap("d", "DENY", get)), Verdict::Allow, false, Some(deny("default/d"))),
            ("dry-run DENY not matching", dry(ap("d", "DENY", post)), Verdict::Allow, false, Some(Verdict::Allow)),
            ("dry-run ALLOW not matching", dry(ap("a", "ALLOW", post)), Verdict::Allow, false, Some(none.clone())),
            ("dry-run beside enforced", dry(ap("a", "ALLOW", get)) + &ap("d", "DENY", all), deny("default/d"), false, Some(Verdict::Allow)),
        ];
        for (case, policies, verdict, audit, shadow) in table {
            let a = authorizer(&policies, 0);
            assert_eq!(a.is_empty(), policies.is_empty(), "{case}");
            let got = request(&a, &CALL);
            assert_eq!(
                got,
                Outcome {
                    verdict,
                    audit,
                    shadow
                },
                "{case}"
            );
        }
    }

    /// Istio's HTTP vs TCP table: on the TCP port, an ALLOW rule with an HTTP-only field is
    /// dropped whole; a DENY rule loses only the field.
    #[test]
    fn http_only_fields_on_tcp_ports() {
        let deny = |p: &str| Verdict::Deny {
            policy: Arc::from(p),
        };
        let none = deny("no ALLOW policy matched");
        let sentences_only =
            "{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }] }";
        #[rustfmt::skip]
        let table: Vec<(&str, String, Verdict, Verdict)> = vec![
            // (case, policies, on HTTP, on TCP)
            ("ALLOW methods: dropped on TCP, denies all",
             ap("a", "ALLOW", "[{ to: [{ operation: { methods: [GET] } }] }]"), Verdict::Allow, none.clone()),
            ("ALLOW principals + methods: dropped whole",
             ap("a", "ALLOW", "[{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }], to: [{ operation: { methods: [GET] } }] }]"), Verdict::Allow, none.clone()),
            ("istio/istio#37920: ports-only operation beside a methods one is lost",
             ap("a", "ALLOW", "[{ to: [{ operation: { ports: [\"9001\"] } }, { operation: { methods: [GET] } }] }]"), Verdict::Allow, none.clone()),
            ("ALLOW ports alone applies on TCP",
             ap("a", "ALLOW", "[{ to: [{ operation: { ports: [\"9001\"] } }] }]"), none.clone(), Verdict::Allow),
            ("ALLOW with an L4 rule beside the dropped one",
             ap("a", "ALLOW", &format!("[{{ to: [{{ operation: {{ paths: [/x] }} }}] }}, {sentences_only}]")), Verdict::Allow, Verdict::Allow),
            ("ALLOW requestPrincipals: dropped",
             ap("a", "ALLOW", "[{ from: [{ source: { requestPrincipals: [\"*\"] } }] }]"), none.clone(), none.clone()),
            ("ALLOW when request.headers: dropped",
             ap("a", "ALLOW", "[{ when: [{ key: \"request.headers[x]\", values: [\"*\"] }] }]"), none.clone(), none.clone()),
            ("DENY methods: POST without ports denies all TCP",
             ap("d", "DENY", "[{ to: [{ operation: { methods: [POST] } }] }]"), Verdict::Allow, deny("default/d")),
            ("DENY methods scoped by ports",
             ap("d", "DENY", "[{ to: [{ operation: { methods: [POST], ports: [\"1234\"] } }] }]"), Verdict::Allow, Verdict::Allow),
            ("DENY when header: the condition is dropped",
             ap("d", "DENY", "[{ from: [{ source: { namespaces: [default] } }], when: [{ key: \"request.headers[x]\", values: [y] }] }]"), Verdict::Allow, deny("default/d")),
            ("DENY notPaths: dropped too",
             ap("d", "DENY", "[{ to: [{ operation: { notPaths: [\"/api/*\"] } }] }]"), Verdict::Allow, deny("default/d")),
            ("DENY L4 only applies as written",
             ap("d", "DENY", "[{ from: [{ source: { namespaces: [other] } }] }]"), Verdict::Allow, Verdict::Allow),
        ];
        for (case, policies, http, tcp) in table {
            let on_http = request(&authorizer(&policies, 0), &CALL);
            assert_eq!(on_http.verdict, http, "{case} on HTTP");
            let on_tcp = connection(&authorizer(&policies, 1), &CALL);
            assert_eq!(on_tcp.verdict, tcp, "{case} on TCP");
        }
    }

    #[test]
    fn tcp_connection_facts() {
        let a = authorizer(
            &ap(
                "a",
                "ALLOW",
                "[{ from: [{ source: { principals: [cluster.local/ns/default/sa/sentences] } }] }]",
            ),
            1,
        );
        assert!(allowed(&connection(&a, &CALL)));
        assert!(!allowed(&connection(&a, &Call { peer: None, ..CALL })));
        assert!(!allowed(&connection(
            &a,
            &Call {
                peer: Some(OTHER_NS),
                ..CALL
            }
        )));
        // DENY notPrincipals denies plaintext (§11.4)
        let a = authorizer(
            &ap(
                "d",
                "DENY",
                "[{ from: [{ source: { notPrincipals: [\"*\"] } }] }]",
            ),
            1,
        );
        assert!(!allowed(&connection(&a, &Call { peer: None, ..CALL })));
        assert!(allowed(&connection(&a, &CALL)));
    }

    #[test]
    fn bad_requests() {
        let a = authorizer(&ap("a", "ALLOW", "[{}]"), 0);
        let table = [
            (
                Call {
                    path: "/a%00b",
                    ..CALL
                },
                "the path contains %00",
            ),
            (
                Call {
                    method: "get",
                    ..CALL
                },
                "lower-case method",
            ),
        ];
        for (call, reason) in table {
            assert_eq!(request(&a, &call).verdict, Verdict::BadRequest { reason });
        }
        // normalization happens before matching: /api/%2e%2e/admin is /admin
        let a = authorizer(
            &ap(
                "d",
                "DENY",
                "[{ to: [{ operation: { paths: [/admin] } }] }]",
            ),
            0,
        );
        for path in [
            "/api/%2e%2e/admin",
            "/api/../admin",
            "\\admin",
            "/admin?x",
            "/%61dmin",
        ] {
            let got = request(&a, &Call { path, ..CALL });
            assert!(!allowed(&got), "{path}: {got:?}");
        }
        assert!(allowed(&request(
            &a,
            &Call {
                path: "/admin%2f",
                ..CALL
            }
        )));
    }

    #[test]
    fn scope() {
        let root = |name: &str, selector: &str| {
            format!("---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: istio-system }}\nspec:\n  {selector}\n  action: DENY\n  rules: [{{}}]\n")
        };
        let in_ns = |ns: &str, selector: &str| {
            format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: p, namespace: {ns} }}\nspec:\n  {selector}\n  action: DENY\n  rules: [{{}}]\n")
        };
        #[rustfmt::skip]
        let table = [
            ("mesh-wide", root("m", ""), true),
            ("root-ns selector matches in every namespace", root("m", "selector: { matchLabels: { app: age } }"), true),
            ("root-ns selector not matching", root("m", "selector: { matchLabels: { app: other } }"), false),
            ("namespace-wide", in_ns("default", ""), true),
            ("other namespace", in_ns("other", ""), false),
            ("workload selector", in_ns("default", "selector: { matchLabels: { app: age } }"), true),
            ("selector not matching", in_ns("default", "selector: { matchLabels: { app: age, version: v2 } }"), false),
            ("targetRefs: ignored by sidecars", in_ns("default", "targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: gw }]"), false),
        ];
        for (case, policy, applies) in table {
            let c = mesh("cluster.local", 0, &policy);
            let a = &c.plan("age").unwrap().inbound[0].authorization;
            assert_eq!(!a.is_empty(), applies, "{case}");
            let w = c.warnings().join("\n");
            assert_eq!(
                w.contains("selects no workload"),
                !applies && !case.contains("target"),
                "{case}: {w}"
            );
            if case.contains("target") {
                assert!(w.contains("sidecars ignore it"), "{w}");
            }
        }
    }

    #[test]
    fn validation_errors_name_file_line_and_field() {
        let bad = |spec: &str| {
            format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: p, namespace: default }}\nspec:\n{spec}")
        };
        let base_lines = workload("cluster.local", 0).lines().count();
        #[rustfmt::skip]
        let table: Vec<(&str, String, usize, &str, &str)> = vec![
            // (case, document, line within the policy document (1 = ---), field, message)
            ("DENY without rules", bad("  action: DENY\n"), 5, "spec.rules", "a DENY policy needs at least one rule"),
            ("CUSTOM without rules", bad("  action: CUSTOM\n  provider: { name: x }\n"), 5, "spec.rules", "a CUSTOM policy needs at least one rule"),
            ("CUSTOM without provider", bad("  action: CUSTOM\n  rules: [{}]\n"), 5, "spec.provider", "needs provider.name"),
            ("provider on ALLOW", bad("  provider: { name: x }\n"), 6, "spec.provider", "only for action CUSTOM"),
            ("from: []", bad("  rules:\n    - from: []\n"), 7, "spec.rules[0].from", "must not be empty"),
            ("to: []", bad("  rules:\n    - to: []\n"), 7, "spec.rules[0].to", "must not be empty"),
            ("empty source", bad("  rules:\n    - from:\n        - source: {}\n"), 8, "spec.rules[0].from[0].source", "source must set at least one field"),
            ("missing source", bad("  rules:\n    - from:\n        - {}\n"), 8, "spec.rules[0].from[0].source", "needs a non-empty source"),
            ("empty operation", bad("  rules:\n    - to:\n        - operation: {}\n"), 8, "spec.rules[0].to[0].operation", "operation must set at least one field"),
            ("serviceAccounts with principals", bad("  rules:\n    - from:\n        - source:\n            principals: [a]\n            serviceAccounts: [b]\n"), 10, "spec.rules[0].from[0].source.serviceAccounts", "cannot be combined"),
            ("serviceAccounts with namespaces", bad("  rules:\n    - from:\n        - source:\n            serviceAccounts: [b]\n            namespaces: [a]\n"), 9, "spec.rules[0].from[0].source.serviceAccounts", "cannot be combined"),
            ("17 serviceAccounts", bad(&format!("  rules:\n    - from:\n        - source:\n            serviceAccounts: [{}]\n", (0..17).map(|i| format!("sa{i}")).collect::<Vec<_>>().join(", "))), 9, "spec.rules[0].from[0].source.serviceAccounts", "at most 16"),
            ("serviceAccounts wildcard", bad("  rules:\n    - from:\n        - source:\n            serviceAccounts: [\"ns/*\"]\n"), 9, "spec.rules[0].from[0].source.serviceAccounts", "no wildcards"),
            ("bad CIDR", bad("  rules:\n    - from:\n        - source:\n            ipBlocks: [10.0.0.0/33]\n"), 9, "spec.rules[0].from[0].source.ipBlocks", "\"10.0.0.0/33\" is not an IP address or CIDR block"),
            ("bad remote CIDR", bad("  rules:\n    - from:\n        - source:\n            notRemoteIpBlocks: [x]\n"), 9, "spec.rules[0].from[0].source.notRemoteIpBlocks", "not an IP address"),
            ("bad port", bad("  rules:\n    - to:\n        - operation:\n            ports: [\"70000\"]\n"), 9, "spec.rules[0].to[0].operation.ports", "port \"70000\" is not a number in 0-65535"),
            ("{**} not last", bad("  rules:\n    - to:\n        - operation:\n            paths: [\"/a/{**}/b\"]\n"), 9, "spec.rules[0].to[0].operation.paths", "{**} operator must be the last"),
            ("unknown when key", bad("  rules:\n    - when:\n        - key: request.header[x]\n          values: [a]\n"), 8, "spec.rules[0].when[0].key", "unknown condition key \"request.header[x]\""),
            ("when without values", bad("  rules:\n    - when:\n        - key: source.ip\n"), 8, "spec.rules[0].when[0]", "needs values or notValues"),
            ("bad when port", bad("  rules:\n    - when:\n        - key: destination.port\n          values: [http]\n"), 9, "spec.rules[0].when[0].values", "port \"http\""),
            ("bad claim key", bad("  rules:\n    - when:\n        - key: \"request.auth.claims[groups\"\n          values: [a]\n"), 8, "spec.rules[0].when[0].key", "is not request.auth.claims[<name>]"),
            ("selector with targetRefs", bad("  selector: { matchLabels: { app: age } }\n  targetRefs: [{ kind: Service, name: age }]\n"), 6, "spec.selector", "mutually exclusive"),
            ("unknown field", bad("  rules:\n    - from:\n        - source:\n            principal: [a]\n"), 9, "spec.rules[0].from[0].source.principal", "unknown field \"principal\""),
            ("unknown action", bad("  action: ALOW\n"), 6, "spec.action", "unknown variant \"ALOW\""),
            ("bad dry-run annotation", "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: { istio.io/dry-run: \"yes\" }\nspec: {}\n".into(), 6, "metadata.annotations", "istio.io/dry-run must be"),
            ("wrong apiVersion", "---\napiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: p }\n".into(), 2, "apiVersion", "expected security.istio.io/v1"),
        ];
        for (case, doc, line, field, message) in table {
            let text = format!("{}{doc}", workload("cluster.local", 0));
            let err = match load_str("mesh.yaml", &text) {
                Ok(_) => panic!("{case}: loaded"),
                Err(e) => e,
            };
            let at = err.location().unwrap_or_else(|| panic!("{case}: {err}"));
            assert_eq!(
                (at.line, at.field.as_str()),
                (base_lines + line, field),
                "{case}: {err}"
            );
            assert!(err.to_string().contains(message), "{case}: {err}");
            assert!(err.to_string().starts_with("mesh.yaml:"), "{case}: {err}");
        }
    }

    #[test]
    fn warnings_for_check() {
        let c = mesh(
            "cluster.local",
            0,
            &(ap(
                "a",
                "ALLOW",
                "[{ from: [{ source: { principals: [\"spiffe://cluster.local/ns/default/sa/x\"] } }], to: [{ operation: { methods: [GET] } }] }]",
            ) + &ap("d", "DENY", "[{ to: [{ operation: { methods: [POST] } }] }]")
                + &ap("c", "CUSTOM", "[{}]")
                + "  provider: { name: opa }\n"),
        );
        let w = c.warnings().join("\n");
        for expected in [
            "AuthorizationPolicy default/a rule 0 uses HTTP-only fields (methods) and is dropped on TCP workload age port 9000 (TCP)",
            "AuthorizationPolicy default/d (DENY) rule 0: HTTP-only fields (methods) are ignored on TCP workload age port 9000 (TCP), so the rule matches more (it may deny every TCP connection",
            "AuthorizationPolicy default/a rule 0 uses principals on workload age port 8081 (HTTP), whose mode PERMISSIVE accepts plaintext",
            "CUSTOM policy default/c: outrider has no external authorizer (provider \"opa\" is not available)",
            "ALLOW policy default/a has no rule left on TCP workload age port 9000 (TCP) (every rule uses HTTP-only fields): unless another ALLOW policy matches, every connection is denied",
            "starts with spiffe://, which Istio adds itself: it never matches",
        ] {
            assert!(w.contains(expected), "missing {expected:?} in\n{w}");
        }
        let applied: Vec<String> = c.plan("age").unwrap().inbound[0]
            .authorization
            .applied()
            .iter()
            .map(|a| format!("{} {} {}", a.name, a.action.as_str(), a.dry_run))
            .collect();
        assert_eq!(
            applied,
            [
                "default/a ALLOW false",
                "default/d DENY false",
                "default/c CUSTOM false"
            ]
        );
    }
}

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
    let absent = |values: &[String]| values.iter().map(|_| Matcher::Absent).collect();
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
        field("requestPrincipals", false, absent(&s.request_principals)),
        field(
            "notRequestPrincipals",
            true,
            absent(&s.not_request_principals),
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
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
                each(&|_| Ok(Matcher::Absent))
            }
            k if (k.starts_with("request.auth.claims[") && k.ends_with(']'))
                || k.starts_with("experimental.envoy.filters.") =>
            {
                each(&|_| Ok(Matcher::Absent))
            }
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

/// Whether `p` applies to `w`: root namespace (any workload namespace) or `w`'s namespace,
/// selector ⊆ labels; targeted policies never apply to a sidecar.
pub(crate) fn applies_to(p: &AuthzPolicy, root_namespace: &str, w: &Workload) -> bool {
    !p.targeted
        && (p.namespace == root_namespace || p.namespace == w.namespace)
        && w.has_labels(&p.selector)
}

/// Warnings about selectors that match no workload (load time).
pub(crate) fn warn_unselected(
    policies: &[AuthzPolicy],
    workloads: &[Workload],
    root_namespace: &str,
    warnings: &mut Vec<String>,
) {
    for p in policies.iter().filter(|p| !p.targeted) {
        let any = workloads
            .iter()
            .filter(|w| w.sidecar)
            .any(|w| applies_to(p, root_namespace, w));
        if !any {
            let scope = if p.selector.is_empty() {
                format!("namespace {}", p.namespace)
            } else if p.namespace == root_namespace {
                format!(
                    "selector {} (any namespace)",
                    super::load::labels_text(&p.selector)
                )
            } else {
                format!(
                    "selector {} in namespace {}",
                    super::load::labels_text(&p.selector),
                    p.namespace
                )
            };
            warnings.push(format!(
                "{}: AuthorizationPolicy {}/{} selects no workload with a sidecar ({scope}); it applies to none until one matches",
                p.origin, p.namespace, p.name
            ));
        }
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
        .filter(|a| applies_to(a, root_namespace, w))
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
                        "{}: AuthorizationPolicy {} rule {i} uses {} on {port_text}, whose mode {mode:?} accepts plaintext: a plaintext client has no identity, so these never match it (not* forms always do)",
                        a.origin, policy.name, identity.join(", ")
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

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tls => "TLS",
    }
}

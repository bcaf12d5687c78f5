//! Outbound resolution (SEMANTICS.md §3): where an `outbound` entry goes, which VirtualService
//! splits it into weighted routes, which DestinationRule (and subset, and port) decides each
//! endpoint's TLS, and auto mTLS when none does.
//!
//! Host names follow Istio: a short name is relative to the resource's namespace, `name.ns`
//! and `name.ns.svc` are completed to `name.ns.svc.cluster.local` (the trust domain is also
//! accepted in place of `cluster.local`), `*.ns.svc.cluster.local` and `*` are wildcards.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::error::ConfigError;
use super::plan::{Destination, Endpoint, MtlsMode, OutboundPlan, Protocol, Route, TlsOrigination};
use super::resources::{
    ClientTls, ClientTlsMode, HttpRoute, RouteDestination, Subset, TcpRoute, TrafficPolicy,
};
use super::source::Document;
use super::{MeshConfig, Workload, WorkloadPort};
use crate::identity::SpiffeId;

/// The DNS domain of mesh services (Istio's cluster domain, not the trust domain).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A `DestinationRule` document after validation.
#[derive(Debug, Clone)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub(crate) doc: Document,
}

/// A `VirtualService` document after validation.
#[derive(Debug, Clone)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub export_to: Vec<String>,
    pub(crate) doc: Document,
}

impl DestinationRule {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `name.ns.svc.cluster.local`.
pub fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// `(service, namespace)` of a mesh FQDN.
fn split_fqdn(host: &str) -> Option<(&str, &str)> {
    let rest = host.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (service, namespace) = rest.split_once('.')?;
    (!namespace.contains('.') && !service.is_empty()).then_some((service, namespace))
}

/// How specifically a (normalised) rule host matches a host: `None` = no match; exact beats
/// a longer wildcard suffix beats a shorter one beats `*`.
pub fn host_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len());
    }
    (pattern == host).then_some(usize::MAX)
}

/// Whether a resource with `exportTo` in `owner` namespace is visible from `client`.
fn visible(export_to: &[String], owner: &str, client: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == client || (e == "." && owner == client))
}

/// The TLS a DestinationRule sets for a subset and port, before auto mTLS: `portLevelSettings`
/// for `port` replaces the rule-level policy wholesale (an entry without `tls` means "no
/// setting"); a subset's `tls` overrides, a subset's port entry replaces. `None` ⇒ auto mTLS.
pub fn dr_tls(
    rule: &str,
    top: Option<&TrafficPolicy>,
    subset: Option<(&str, &Subset)>,
    port: u16,
) -> (Option<ClientTls>, String) {
    let mut tls = None;
    let mut by = format!("DestinationRule {rule}");
    if let Some(tp) = top {
        match tp
            .port_level_settings
            .iter()
            .find(|p| p.port.number == u32::from(port))
        {
            Some(pl) => {
                tls = pl.tls.clone();
                by = format!("DestinationRule {rule} portLevelSettings[{port}]");
            }
            None => tls = tp.tls.clone(),
        }
    }
    if let Some((owner, s)) = subset {
        if let Some(tp) = &s.traffic_policy {
            if let Some(pl) = tp
                .port_level_settings
                .iter()
                .find(|p| p.port.number == u32::from(port))
            {
                tls = pl.tls.clone();
                by = format!(
                    "DestinationRule {owner} subset {} portLevelSettings[{port}]",
                    s.name
                );
            } else if let Some(t) = &tp.tls {
                tls = Some(t.clone());
                by = format!("DestinationRule {owner} subset {}", s.name);
            }
        }
    }
    (tls, by)
}

/// Istio's auto mTLS for one endpoint, when no DestinationRule sets `tls`: mTLS iff the
/// endpoint has a sidecar, its namespace is not DISABLE, and its own mode on the port is not
/// DISABLE. Returns (mTLS?, why).
pub fn auto_mtls(
    enabled: bool,
    sidecar: bool,
    namespace_mode: MtlsMode,
    endpoint_mode: MtlsMode,
) -> (bool, &'static str) {
    if !enabled {
        (false, "no DestinationRule tls, auto mTLS off (plaintext)")
    } else if !sidecar {
        (false, "auto mTLS: endpoint has no sidecar (plaintext)")
    } else if namespace_mode == MtlsMode::Disable {
        (
            false,
            "auto mTLS: destination namespace is DISABLE (plaintext)",
        )
    } else if endpoint_mode == MtlsMode::Disable {
        (false, "auto mTLS: endpoint port is DISABLE (plaintext)")
    } else {
        (true, "auto mTLS: endpoint has a sidecar")
    }
}

/// Istio's default SNI for ISTIO_MUTUAL: `outbound_.<port>_.<subset>_.<fqdn>`.
pub fn default_sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRef {
    Name(String),
    Number(u16),
}

impl PortRef {
    fn matches(&self, p: &WorkloadPort) -> bool {
        match self {
            PortRef::Name(n) => &p.name == n,
            PortRef::Number(n) => p.port == *n,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Mesh {
        service: String,
        namespace: String,
        port: PortRef,
    },
    External {
        host: String,
        port: u16,
    },
}

/// The DestinationRule(s) for a host as a client sees them: the first of one namespace
/// decides the top-level policy, subsets of same-host rules are concatenated.
struct MergedRule<'a> {
    primary: &'a DestinationRule,
    subsets: Vec<(&'a DestinationRule, &'a Subset)>,
}

impl<'a> MergedRule<'a> {
    fn subset(&self, name: &str) -> Option<(&'a DestinationRule, &'a Subset)> {
        self.subsets.iter().find(|(_, s)| s.name == name).copied()
    }
}

impl MeshConfig {
    fn is_namespace(&self, ns: &str) -> bool {
        ns == self.root_namespace || self.workloads.iter().any(|w| w.namespace == ns)
    }

    /// A host as written in a resource of namespace `ns`, in FQDN form (wildcards kept).
    pub(crate) fn normalize_host(&self, host: &str, ns: &str) -> String {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h == "*" {
            return h;
        }
        let td_suffix = format!(".svc.{}", self.trust_domain);
        let h = match h.strip_suffix(&td_suffix) {
            Some(p) => format!("{p}.svc.{CLUSTER_DOMAIN}"),
            None => h,
        };
        if let Some(p) = h.strip_suffix(".svc") {
            return format!("{p}.svc.{CLUSTER_DOMAIN}");
        }
        let parts: Vec<&str> = h.split('.').collect();
        match parts.as_slice() {
            [name] => fqdn(name, ns),
            [name, namespace] if self.is_namespace(namespace) => fqdn(name, namespace),
            _ => h,
        }
    }

    fn service_workloads(&self, service: &str, namespace: &str) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| w.service == service && w.namespace == namespace)
            .collect()
    }

    fn parse_to(&self, client: &Workload, to: &str) -> Result<Target, String> {
        let shape = || {
            format!(
                "{to:?} is neither <service>.<namespace>:<port name or number> nor <host>:<port>"
            )
        };
        let (host, port) = to.rsplit_once(':').ok_or_else(shape)?;
        if host.is_empty() || port.is_empty() {
            return Err(shape());
        }
        let port_ref = if port.bytes().all(|b| b.is_ascii_digit()) {
            match port.parse::<u16>() {
                Ok(n) if n > 0 => PortRef::Number(n),
                _ => return Err(format!("port {port} is out of range 1-65535")),
            }
        } else {
            PortRef::Name(port.to_string())
        };
        let normalized = self.normalize_host(host, &client.namespace);
        if let Some((service, namespace)) = split_fqdn(&normalized) {
            let members = self.service_workloads(service, namespace);
            if !members.is_empty() {
                if !members
                    .iter()
                    .any(|w| w.ports.iter().any(|p| port_ref.matches(p)))
                {
                    let known: BTreeSet<String> = members
                        .iter()
                        .flat_map(|w| w.ports.iter().map(|p| format!("{} ({})", p.name, p.port)))
                        .collect();
                    return Err(format!(
                        "service {service}.{namespace} has no port {port} (ports: {})",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                return Ok(Target::Mesh {
                    service: service.to_string(),
                    namespace: namespace.to_string(),
                    port: port_ref,
                });
            }
            if self.is_namespace(namespace)
                || !host.contains('.')
                || matches!(port_ref, PortRef::Name(_))
            {
                let known: BTreeSet<String> = self
                    .workloads
                    .iter()
                    .map(|w| format!("{}.{}", w.service, w.namespace))
                    .collect();
                return Err(format!(
                    "unknown service {service}.{namespace} (services: {})",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        match port_ref {
            PortRef::Number(port) => Ok(Target::External {
                host: host.to_ascii_lowercase(),
                port,
            }),
            PortRef::Name(_) => Err(format!(
                "{host:?} is not a service of the mesh, and a host outside the mesh needs a port number"
            )),
        }
    }

    fn find_rule(
        &self,
        host: &str,
        client_ns: &str,
        service_ns: Option<&str>,
    ) -> Option<MergedRule<'_>> {
        let mut order = vec![client_ns];
        for ns in [service_ns, Some(self.root_namespace.as_str())]
            .into_iter()
            .flatten()
        {
            if !order.contains(&ns) {
                order.push(ns);
            }
        }
        for ns in order {
            let candidates: Vec<(&DestinationRule, String, usize)> = self
                .destination_rules
                .iter()
                .filter(|d| d.namespace == ns && visible(&d.export_to, &d.namespace, client_ns))
                .filter_map(|d| {
                    let pattern = self.normalize_host(&d.host, &d.namespace);
                    host_match(&pattern, host).map(|s| (d, pattern, s))
                })
                .collect();
            let Some(best) = candidates.iter().map(|(_, _, s)| *s).max() else {
                continue;
            };
            let same: Vec<&(&DestinationRule, String, usize)> =
                candidates.iter().filter(|(_, _, s)| *s == best).collect();
            let primary = same[0].0;
            let mut subsets: Vec<(&DestinationRule, &Subset)> = Vec::new();
            for (d, pattern, _) in &same {
                if *pattern != same[0].1 {
                    continue;
                }
                for s in &d.subsets {
                    if !subsets.iter().any(|(_, o)| o.name == s.name) {
                        subsets.push((d, s));
                    }
                }
            }
            return Some(MergedRule { primary, subsets });
        }
        None
    }

    fn find_virtual_service(&self, host: &str, client_ns: &str) -> Option<&VirtualService> {
        let mut best: Option<(&VirtualService, usize)> = None;
        for vs in &self.virtual_services {
            if !visible(&vs.export_to, &vs.namespace, client_ns)
                || !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
            {
                continue;
            }
            let score = vs
                .hosts
                .iter()
                .filter_map(|h| host_match(&self.normalize_host(h, &vs.namespace), host))
                .max();
            if let Some(s) = score {
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((vs, s));
                }
            }
        }
        best.map(|(vs, _)| vs)
    }

    #[allow(clippy::too_many_arguments)]
    fn originate(
        &self,
        tls: &ClientTls,
        owner: &DestinationRule,
        port: u16,
        subset: Option<&str>,
        host: &str,
        service_ids: &[SpiffeId],
    ) -> Result<TlsOrigination, ConfigError> {
        let dir = owner
            .doc
            .file
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let path = |p: &Option<String>| {
            p.as_ref().map(|p| {
                let p = PathBuf::from(p);
                if p.is_relative() {
                    dir.join(p)
                } else {
                    p
                }
            })
        };
        Ok(match tls.mode {
            ClientTlsMode::Disable => TlsOrigination::Disable,
            ClientTlsMode::IstioMutual => {
                let allowed_ids = if tls.subject_alt_names.is_empty() {
                    service_ids.to_vec()
                } else {
                    tls.subject_alt_names
                        .iter()
                        .filter_map(|s| SpiffeId::parse(s).ok()) // validated at load
                        .collect()
                };
                if allowed_ids.is_empty() {
                    return Err(owner.doc.error(
                        "spec.host",
                        format!("ISTIO_MUTUAL to {host}, a host outside the mesh, needs subjectAltNames (the SPIFFE IDs allowed to serve it)"),
                    ));
                }
                TlsOrigination::IstioMutual {
                    allowed_ids,
                    sni: tls
                        .sni
                        .clone()
                        .unwrap_or_else(|| default_sni(port, subset, host)),
                }
            }
            ClientTlsMode::Simple => TlsOrigination::Simple {
                ca_certificates: path(&tls.ca_certificates),
                subject_alt_names: tls.subject_alt_names.clone(),
                sni: tls.sni.clone(),
                insecure_skip_verify: tls.insecure_skip_verify,
            },
            ClientTlsMode::Mutual => TlsOrigination::Mutual {
                client_certificate: path(&tls.client_certificate).unwrap_or_default(),
                private_key: path(&tls.private_key).unwrap_or_default(),
                ca_certificates: path(&tls.ca_certificates),
                subject_alt_names: tls.subject_alt_names.clone(),
                sni: tls.sni.clone(),
                insecure_skip_verify: tls.insecure_skip_verify,
            },
        })
    }

    /// One weighted route to `dest` (optionally a subset of it).
    fn route(
        &self,
        client: &Workload,
        context: &str,
        dest: &Target,
        subset: Option<&str>,
        weight: u32,
        warnings: &mut Vec<String>,
    ) -> Result<Route, ConfigError> {
        let mut endpoints = Vec::new();
        match dest {
            Target::External { host, port } => {
                let rule = self.find_rule(host, &client.namespace, None);
                let subset_obj = subset.and_then(|s| rule.as_ref().and_then(|r| r.subset(s)));
                let (tls, by) = match &rule {
                    Some(r) => dr_tls(
                        &r.primary.id(),
                        r.primary.traffic_policy.as_ref(),
                        subset_obj
                            .map(|(o, s)| (o.id(), s))
                            .as_ref()
                            .map(|(o, s)| (o.as_str(), *s)),
                        *port,
                    ),
                    None => (None, String::new()),
                };
                let (tls, decided_by) = match (tls, &rule) {
                    (Some(t), Some(r)) => {
                        (self.originate(&t, r.primary, *port, subset, host, &[])?, by)
                    }
                    _ => (
                        TlsOrigination::Disable,
                        "no DestinationRule tls: host outside the mesh (plaintext)".to_string(),
                    ),
                };
                endpoints.push(Endpoint {
                    workload: None,
                    host: host.clone(),
                    port: *port,
                    tls,
                    decided_by,
                });
            }
            Target::Mesh {
                service,
                namespace,
                port,
            } => {
                let host = fqdn(service, namespace);
                let members: Vec<(&Workload, &WorkloadPort)> = self
                    .service_workloads(service, namespace)
                    .into_iter()
                    .filter_map(|w| w.ports.iter().find(|p| port.matches(p)).map(|p| (w, p)))
                    .collect();
                let mut service_ids: Vec<SpiffeId> =
                    members.iter().map(|(w, _)| w.spiffe_id.clone()).collect();
                service_ids.sort();
                service_ids.dedup();
                let rule = self.find_rule(&host, &client.namespace, Some(namespace));
                let subset_obj = match subset {
                    None => None,
                    Some(name) => match rule.as_ref().and_then(|r| r.subset(name)) {
                        Some(s) => Some(s),
                        None => {
                            warnings.push(format!(
                                "{context}: routes to subset {name} of {host}, which no DestinationRule defines; that route has no endpoints"
                            ));
                            return Ok(Route {
                                subset: Some(name.to_string()),
                                weight,
                                endpoints,
                            });
                        }
                    },
                };
                let ns_mode = self.namespace_mode(namespace);
                for (w, p) in members {
                    if let Some((_, s)) = subset_obj {
                        if !s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)) {
                            continue;
                        }
                    }
                    let (tls, by) = match &rule {
                        Some(r) => {
                            let owner = subset_obj.map(|(o, s)| (o.id(), s));
                            dr_tls(
                                &r.primary.id(),
                                r.primary.traffic_policy.as_ref(),
                                owner.as_ref().map(|(o, s)| (o.as_str(), *s)),
                                p.port,
                            )
                        }
                        None => (None, String::new()),
                    };
                    let own = self.inbound_mode(w, p);
                    let (origination, decided_by) = match (tls, &rule) {
                        (Some(t), Some(r)) => {
                            let o =
                                self.originate(&t, r.primary, p.port, subset, &host, &service_ids)?;
                            let target = format!("{}:{} (workload {})", w.address, p.port, w.name);
                            if o == TlsOrigination::Disable
                                && w.sidecar
                                && own.mode == MtlsMode::Strict
                            {
                                warnings.push(format!(
                                    "{context}: {by} sends plaintext to {target}, whose mode is STRICT ({}); its connections will be reset",
                                    own.decided_by
                                ));
                            }
                            if matches!(o, TlsOrigination::IstioMutual { .. })
                                && (!w.sidecar || own.mode == MtlsMode::Disable)
                            {
                                warnings.push(format!(
                                    "{context}: {by} sends ISTIO_MUTUAL to {target}, which {}; handshakes will fail",
                                    if w.sidecar { "is DISABLE" } else { "has no sidecar" }
                                ));
                            }
                            (o, by)
                        }
                        _ => {
                            let (mtls, why) =
                                auto_mtls(self.enable_auto_mtls, w.sidecar, ns_mode, own.mode);
                            let o = if mtls {
                                TlsOrigination::IstioMutual {
                                    allowed_ids: service_ids.clone(),
                                    sni: default_sni(p.port, subset, &host),
                                }
                            } else {
                                TlsOrigination::Disable
                            };
                            (o, why.to_string())
                        }
                    };
                    endpoints.push(Endpoint {
                        workload: Some(w.name.clone()),
                        host: w.address.clone(),
                        port: p.port,
                        tls: origination,
                        decided_by,
                    });
                }
            }
        }
        Ok(Route {
            subset: subset.map(str::to_string),
            weight,
            endpoints,
        })
    }
}

/// The plan of `client`'s `outbound[index]` entry.
pub(crate) fn plan_outbound(
    config: &MeshConfig,
    client: &Workload,
    index: usize,
    bind: SocketAddr,
    to: &str,
    warnings: &mut Vec<String>,
) -> Result<OutboundPlan, ConfigError> {
    let field = format!("spec.outbound[{index}].to");
    let target = config
        .parse_to(client, to)
        .map_err(|m| client.doc.error(&field, m))?;
    let at = client.doc.locate(&field);
    let context = format!(
        "{}:{}: workload {} -> {to}",
        at.file.display(),
        at.line,
        client.name
    );
    let (destination, protocol) = match &target {
        Target::External { host, port } => (
            Destination {
                host: host.clone(),
                service: None,
                namespace: None,
                port: *port,
                in_mesh: false,
            },
            Protocol::Tcp,
        ),
        Target::Mesh {
            service,
            namespace,
            port,
        } => {
            let first = config
                .service_workloads(service, namespace)
                .into_iter()
                .find_map(|w| w.ports.iter().find(|p| port.matches(p)))
                .expect("parse_to checked the port exists");
            (
                Destination {
                    host: fqdn(service, namespace),
                    service: Some(service.clone()),
                    namespace: Some(namespace.clone()),
                    port: first.port,
                    in_mesh: true,
                },
                first.protocol,
            )
        }
    };
    let vs = config.find_virtual_service(&destination.host, &client.namespace);
    let http_first = matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc);
    let chosen = vs.and_then(|vs| pick_rule(vs, http_first).map(|r| (vs, r)));
    let Some((vs, (kind, i, destinations))) = chosen else {
        let route = config.route(client, &context, &target, None, 100, warnings)?;
        return Ok(OutboundPlan {
            bind,
            to: to.to_string(),
            destination,
            routes: vec![route],
            decided_by: "default route (no VirtualService)".to_string(),
        });
    };
    let vs_at = vs.doc.locate(&format!("spec.{kind}[{i}]"));
    let vs_context = format!(
        "{context} (VirtualService {}/{} at {}:{})",
        vs.namespace,
        vs.name,
        vs_at.file.display(),
        vs_at.line
    );
    let mut routes = Vec::new();
    for d in destinations {
        let host = config.normalize_host(&d.destination.host, &vs.namespace);
        let dest = match split_fqdn(&host) {
            Some((service, namespace))
                if !config.service_workloads(service, namespace).is_empty() =>
            {
                let port = match (&d.destination.port, &target) {
                    (Some(p), _) => PortRef::Number(u16::try_from(p.number).unwrap_or(0)),
                    (None, Target::Mesh { port, .. }) => port.clone(),
                    (None, Target::External { port, .. }) => PortRef::Number(*port),
                };
                Target::Mesh {
                    service: service.to_string(),
                    namespace: namespace.to_string(),
                    port,
                }
            }
            _ => Target::External {
                host: host.clone(),
                port: d
                    .destination
                    .port
                    .as_ref()
                    .and_then(|p| u16::try_from(p.number).ok())
                    .unwrap_or(destination.port),
            },
        };
        let weight = d
            .weight
            .unwrap_or(if destinations.len() == 1 { 100 } else { 0 });
        routes.push(config.route(
            client,
            &vs_context,
            &dest,
            d.destination.subset.as_deref(),
            weight,
            warnings,
        )?);
    }
    Ok(OutboundPlan {
        bind,
        to: to.to_string(),
        destination,
        routes,
        decided_by: format!("VirtualService {}/{} {kind}[{i}]", vs.namespace, vs.name),
    })
}

/// The rule a VirtualService applies: from `http` (for HTTP ports) or `tcp`, falling back to
/// the other list; the first rule without `match`, else the first rule (match conditions are
/// not evaluated yet).
fn pick_rule(
    vs: &VirtualService,
    http_first: bool,
) -> Option<(&'static str, usize, &[RouteDestination])> {
    fn pick(rules: Vec<(bool, &[RouteDestination])>) -> Option<(usize, &[RouteDestination])> {
        rules
            .iter()
            .position(|(m, _)| !m)
            .or((!rules.is_empty()).then_some(0))
            .map(|i| (i, rules[i].1))
    }
    let http = || {
        pick(
            vs.http
                .iter()
                .map(|r| (r.matches.is_some(), r.route.as_slice()))
                .collect(),
        )
        .map(|(i, r)| ("http", i, r))
    };
    let tcp = || {
        pick(
            vs.tcp
                .iter()
                .map(|r| (r.matches.is_some(), r.route.as_slice()))
                .collect(),
        )
        .map(|(i, r)| ("tcp", i, r))
    };
    if http_first {
        http().or_else(tcp)
    } else {
        tcp().or_else(http)
    }
}

/// Warns about DestinationRule subsets that select no workload of their service, and rules
/// whose mesh host names no service.
pub(crate) fn warn_empty_subsets(config: &MeshConfig, warnings: &mut Vec<String>) {
    for d in &config.destination_rules {
        let host = config.normalize_host(&d.host, &d.namespace);
        let Some((service, namespace)) = split_fqdn(&host) else {
            continue;
        };
        let members = config.service_workloads(service, namespace);
        if members.is_empty() {
            let at = d.doc.locate("spec.host");
            warnings.push(format!(
                "{}:{}: spec.host: DestinationRule {} host {host} names no service of the mesh",
                at.file.display(),
                at.line,
                d.id()
            ));
            continue;
        }
        for (i, s) in d.subsets.iter().enumerate() {
            let any = members
                .iter()
                .any(|w| s.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)));
            if !any {
                let at = d.doc.locate(&format!("spec.subsets[{i}]"));
                warnings.push(format!(
                    "{}:{}: spec.subsets[{i}]: subset {} of DestinationRule {} matches no workload of {host}",
                    at.file.display(),
                    at.line,
                    s.name,
                    d.id()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::resources::PortSelector;
    use super::super::resources::PortTrafficPolicy;
    use super::*;

    fn tls(mode: ClientTlsMode) -> Option<ClientTls> {
        Some(ClientTls {
            mode,
            ..ClientTls::default()
        })
    }

    fn policy(top: Option<ClientTlsMode>, ports: &[(u32, Option<ClientTlsMode>)]) -> TrafficPolicy {
        TrafficPolicy {
            tls: top.and_then(tls),
            port_level_settings: ports
                .iter()
                .map(|(n, m)| PortTrafficPolicy {
                    port: PortSelector { number: *n },
                    tls: m.and_then(tls),
                    load_balancer: None,
                    connection_pool: None,
                    outlier_detection: None,
                })
                .collect(),
            ..TrafficPolicy::default()
        }
    }

    fn subset(name: &str, tp: Option<TrafficPolicy>) -> Subset {
        Subset {
            name: name.into(),
            labels: [("version".to_string(), name.to_string())].into(),
            traffic_policy: tp,
        }
    }

    #[test]
    fn destination_rule_tls_table() {
        use ClientTlsMode::*;
        let top_mutual = policy(Some(IstioMutual), &[]);
        let port_replaces = policy(Some(IstioMutual), &[(8080, Some(Disable))]);
        let port_without_tls = policy(Some(IstioMutual), &[(8080, None)]);
        let v1 = subset("v1", Some(policy(Some(Disable), &[])));
        let v2_no_policy = subset("v2", None);
        let v3_port = subset("v3", Some(policy(Some(Simple), &[(8080, Some(Disable))])));
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Option<&TrafficPolicy>,
            Option<&Subset>,
            u16,
            Option<ClientTlsMode>,
            &str,
        )> = vec![
            (
                "no policy: auto mTLS",
                None,
                None,
                8080,
                None,
                "DestinationRule d/r",
            ),
            (
                "top-level tls",
                Some(&top_mutual),
                None,
                8080,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "portLevelSettings replace",
                Some(&port_replaces),
                None,
                8080,
                Some(Disable),
                "DestinationRule d/r portLevelSettings[8080]",
            ),
            (
                "other port keeps top-level",
                Some(&port_replaces),
                None,
                9090,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "port entry without tls discards top-level tls",
                Some(&port_without_tls),
                None,
                8080,
                None,
                "DestinationRule d/r portLevelSettings[8080]",
            ),
            (
                "subset tls overrides",
                Some(&top_mutual),
                Some(&v1),
                8080,
                Some(Disable),
                "DestinationRule d/r subset v1",
            ),
            (
                "subset without policy inherits",
                Some(&top_mutual),
                Some(&v2_no_policy),
                8080,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "subset port entry replaces",
                Some(&top_mutual),
                Some(&v3_port),
                8080,
                Some(Disable),
                "DestinationRule d/r subset v3 portLevelSettings[8080]",
            ),
            (
                "subset tls on another port",
                Some(&top_mutual),
                Some(&v3_port),
                9090,
                Some(Simple),
                "DestinationRule d/r subset v3",
            ),
        ];
        for (case, top, sub, port, want, by) in cases {
            let (got, got_by) = dr_tls("d/r", top, sub.map(|s| ("d/r", s)), port);
            assert_eq!(got.map(|t| t.mode), want, "{case}");
            assert_eq!(got_by, by, "{case}");
        }
    }

    #[test]
    fn auto_mtls_table() {
        use MtlsMode::*;
        let cases = [
            ("sidecar, STRICT", true, true, Permissive, Strict, true),
            (
                "sidecar, PERMISSIVE",
                true,
                true,
                Permissive,
                Permissive,
                true,
            ),
            ("no sidecar", true, false, Permissive, Permissive, false),
            ("endpoint DISABLE", true, true, Permissive, Disable, false),
            ("namespace DISABLE", true, true, Disable, Strict, false),
            ("auto mTLS off", false, true, Permissive, Strict, false),
        ];
        for (case, enabled, sidecar, ns, own, want) in cases {
            assert_eq!(auto_mtls(enabled, sidecar, ns, own).0, want, "{case}");
        }
    }

    #[test]
    fn host_matching() {
        let h = "name.default.svc.cluster.local";
        assert_eq!(host_match(h, h), Some(usize::MAX));
        assert!(host_match("*.default.svc.cluster.local", h).is_some());
        assert!(host_match("*.other.svc.cluster.local", h).is_none());
        assert_eq!(host_match("*", h), Some(0));
        assert!(host_match("age.default.svc.cluster.local", h).is_none());
        assert_eq!(
            default_sni(8000, None, "httpbin.foo.svc.cluster.local"),
            "outbound_.8000_._.httpbin.foo.svc.cluster.local"
        );
    }
}

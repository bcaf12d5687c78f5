//! The outbound plan (Istio's DestinationRule TLS and auto mTLS rules): where one `outbound` entry of a workload goes, split
//! into weighted routes by its VirtualService, each endpoint's TLS decided by a DestinationRule
//! (see [`super::destination_rule`]) or, when none sets `tls`, by auto mTLS.
//!
//! Planning an entry is a sequence of named steps: parse `to` into a `Target`, describe its
//! [`Destination`], pick the VirtualService rule (or the default route), and build each route's
//! endpoints: the service members on the port, narrowed to the subset, each with its TLS.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::destination_rule::{originate, DestinationRule, MergedRule, OwnedSubset};
use super::error::ConfigError;
use super::hosts::{default_sni, fqdn, split_fqdn};
use super::peer_authn::PeerDecision;
use super::plan::{Destination, Endpoint, MtlsMode, OutboundPlan, Protocol, Route, TlsOrigination};
use super::resources::ClientTls;
use super::virtual_service::{destination_weight, pick_rule};
use super::{MeshConfig, Workload, WorkloadPort};
use crate::identity::SpiffeId;

/// A port of a mesh service, as `to` or a route destination names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortRef {
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

/// Where traffic goes: a service of the mesh, or a host outside it.
#[derive(Debug, Clone)]
pub(crate) enum Target {
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
    plan_target(config, client, &target, to, &context, bind, warnings)
}

/// What a captured connection from `client` to `service.namespace` on port number `port`
/// gets: the plan an `outbound` entry `to: <service>.<namespace>:<port>` would have (routes,
/// subsets, TLS), with an unspecified `bind` (no listener of its own).
pub(crate) fn plan_service_port(
    config: &MeshConfig,
    client: &Workload,
    service: &str,
    namespace: &str,
    port: u16,
    warnings: &mut Vec<String>,
) -> Result<OutboundPlan, ConfigError> {
    let to = format!("{service}.{namespace}:{port}");
    let target = Target::Mesh {
        service: service.to_string(),
        namespace: namespace.to_string(),
        port: PortRef::Number(port),
    };
    let context = format!("workload {} -> {to} (captured)", client.name);
    let bind = SocketAddr::from(([0, 0, 0, 0], 0));
    plan_target(config, client, &target, &to, &context, bind, warnings)
}

/// The plan of traffic from `client` to a parsed target: the VirtualService rule that
/// matches (or the default route) and each route's endpoints.
fn plan_target(
    config: &MeshConfig,
    client: &Workload,
    target: &Target,
    to: &str,
    context: &str,
    bind: SocketAddr,
    warnings: &mut Vec<String>,
) -> Result<OutboundPlan, ConfigError> {
    let (destination, protocol) = config.describe(target);
    let http_first = matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc);
    let vs = config.find_virtual_service(&destination.host, &client.namespace);
    let Some((vs, rule)) = vs.and_then(|vs| pick_rule(vs, http_first).map(|r| (vs, r))) else {
        let route = config.route(client, context, target, None, 100, warnings)?;
        return Ok(OutboundPlan {
            bind,
            to: to.to_string(),
            destination,
            routes: vec![route],
            decided_by: "default route (no VirtualService)".to_string(),
        });
    };
    let vs_at = vs
        .doc
        .locate(&format!("spec.{}[{}]", rule.kind, rule.index));
    let vs_context = format!(
        "{context} (VirtualService {}/{} at {}:{})",
        vs.namespace,
        vs.name,
        vs_at.file.display(),
        vs_at.line
    );
    let routes = rule
        .destinations
        .iter()
        .map(|d| {
            let dest = config.destination_target(vs, d, target, destination.port);
            let weight = destination_weight(d, rule.destinations.len());
            let subset = d.destination.subset.as_deref();
            config.route(client, &vs_context, &dest, subset, weight, warnings)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OutboundPlan {
        bind,
        to: to.to_string(),
        destination,
        routes,
        decided_by: format!(
            "VirtualService {}/{} {}[{}]",
            vs.namespace, vs.name, rule.kind, rule.index
        ),
    })
}

/// One weighted route to a mesh service: everything its endpoints have in common.
struct ServiceRoute<'a> {
    /// `file:line: workload -> to` (and the VirtualService), to prefix warnings.
    context: &'a str,
    /// The service FQDN.
    host: String,
    rule: Option<MergedRule<'a>>,
    subset: Option<OwnedSubset<'a>>,
    /// The service's workloads that have the port, each with that port.
    members: Vec<(&'a Workload, &'a WorkloadPort)>,
    /// Secure naming: every service account of the service, sorted.
    service_ids: Vec<SpiffeId>,
    namespace_mode: MtlsMode,
}

impl ServiceRoute<'_> {
    /// Whether a member belongs to the route's subset (every member without one).
    fn in_subset(&self, w: &Workload) -> bool {
        self.subset.is_none_or(|(_, s)| w.has_labels(&s.labels))
    }
}

impl MeshConfig {
    /// `to` as a client wrote it: `<service>.<namespace>:<port name or number>` (a service of
    /// the mesh, which must have that port) or `<host>:<port number>` (outside the mesh).
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

    /// The [`Destination`] of a parsed `to`, and the protocol that picks a VirtualService's
    /// `http` or `tcp` rules (a mesh service's port protocol; TCP outside the mesh).
    pub(crate) fn describe(&self, target: &Target) -> (Destination, Protocol) {
        match target {
            Target::External { host, port } => (
                Destination {
                    host: host.clone(),
                    service: None,
                    namespace: None,
                    port: *port,
                    in_mesh: false,
                    protocol: Protocol::Tcp,
                },
                Protocol::Tcp,
            ),
            Target::Mesh {
                service,
                namespace,
                port,
            } => {
                let first = self
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
                        protocol: first.protocol,
                    },
                    first.protocol,
                )
            }
        }
    }

    /// One weighted route to `dest` (optionally a subset of it).
    pub(crate) fn route(
        &self,
        client: &Workload,
        context: &str,
        dest: &Target,
        subset: Option<&str>,
        weight: u32,
        warnings: &mut Vec<String>,
    ) -> Result<Route, ConfigError> {
        let endpoints = match dest {
            Target::External { host, port } => {
                vec![self.external_endpoint(client, host, *port, subset)?]
            }
            Target::Mesh {
                service,
                namespace,
                port,
            } => match self.service_route(client, context, service, namespace, port, subset) {
                Ok(route) => self.service_endpoints(&route, warnings)?,
                Err(undefined_subset) => {
                    warnings.push(undefined_subset);
                    Vec::new()
                }
            },
        };
        Ok(Route {
            subset: subset.map(str::to_string),
            weight,
            endpoints,
        })
    }

    /// What every endpoint of a route to a mesh service shares: its members on the port, the
    /// DestinationRule and subset the client sees. `Err` (a warning) when the route names a
    /// subset no DestinationRule defines: that route has no endpoints.
    fn service_route<'a>(
        &'a self,
        client: &Workload,
        context: &'a str,
        service: &str,
        namespace: &str,
        port: &PortRef,
        subset: Option<&str>,
    ) -> Result<ServiceRoute<'a>, String> {
        let host = fqdn(service, namespace);
        let rule = self.find_rule(&host, &client.namespace, Some(namespace));
        let subset = match subset {
            None => None,
            Some(name) => Some(rule.as_ref().and_then(|r| r.subset(name)).ok_or_else(|| {
                format!("{context}: routes to subset {name} of {host}, which no DestinationRule defines; that route has no endpoints")
            })?),
        };
        let members = self.members_on_port(service, namespace, port);
        Ok(ServiceRoute {
            context,
            service_ids: secure_naming_ids(&members),
            namespace_mode: self.namespace_mode(namespace),
            members,
            host,
            rule,
            subset,
        })
    }

    /// The endpoints of a route to a mesh service: its members in the subset, each with its TLS.
    fn service_endpoints(
        &self,
        route: &ServiceRoute<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<Endpoint>, ConfigError> {
        route
            .members
            .iter()
            .filter(|(w, _)| route.in_subset(w))
            .map(|(w, p)| self.mesh_endpoint(route, w, p, warnings))
            .collect()
    }

    /// The one endpoint of a host outside the mesh: its DestinationRule's TLS, else plaintext.
    fn external_endpoint(
        &self,
        client: &Workload,
        host: &str,
        port: u16,
        subset: Option<&str>,
    ) -> Result<Endpoint, ConfigError> {
        let rule = self.find_rule(host, &client.namespace, None);
        let subset_def = subset.and_then(|s| rule.as_ref().and_then(|r| r.subset(s)));
        let (tls, decided_by) = match tls_set_by_rule(rule.as_ref(), subset_def, port) {
            Some((owner, t, by)) => (originate(&t, owner, port, subset, host, &[])?, by),
            None => (
                TlsOrigination::Disable,
                "no DestinationRule tls: host outside the mesh (plaintext)".to_string(),
            ),
        };
        Ok(Endpoint {
            workload: None,
            host: host.to_string(),
            port,
            tls,
            decided_by,
        })
    }

    /// The workloads of `service.namespace` that have `port`, each with that port.
    fn members_on_port(
        &self,
        service: &str,
        namespace: &str,
        port: &PortRef,
    ) -> Vec<(&Workload, &WorkloadPort)> {
        self.service_workloads(service, namespace)
            .into_iter()
            .filter_map(|w| w.ports.iter().find(|p| port.matches(p)).map(|p| (w, p)))
            .collect()
    }

    /// One endpoint of a mesh service: the TLS its DestinationRule sets (with a warning when
    /// that contradicts the endpoint's own mode), else auto mTLS.
    fn mesh_endpoint(
        &self,
        route: &ServiceRoute<'_>,
        w: &Workload,
        p: &WorkloadPort,
        warnings: &mut Vec<String>,
    ) -> Result<Endpoint, ConfigError> {
        let own = self.inbound_mode(w, p);
        let subset_name = route.subset.map(|(_, s)| s.name.as_str());
        let (tls, decided_by) = match tls_set_by_rule(route.rule.as_ref(), route.subset, p.port) {
            Some((owner, t, by)) => {
                let o = originate(
                    &t,
                    owner,
                    p.port,
                    subset_name,
                    &route.host,
                    &route.service_ids,
                )?;
                warn_if_rule_contradicts_endpoint(route.context, &by, &o, w, p, &own, warnings);
                (o, by)
            }
            None => {
                let (mtls, why) = auto_mtls(
                    self.enable_auto_mtls,
                    w.sidecar,
                    route.namespace_mode,
                    own.mode,
                );
                let o = if mtls {
                    TlsOrigination::IstioMutual {
                        allowed_ids: route.service_ids.clone(),
                        sni: default_sni(p.port, subset_name, &route.host),
                    }
                } else {
                    TlsOrigination::Disable
                };
                (o, why.to_string())
            }
        };
        Ok(Endpoint {
            workload: Some(w.name.clone()),
            host: w.address.clone(),
            port: p.port,
            tls,
            decided_by,
        })
    }
}

/// Secure naming: the SPIFFE IDs allowed to serve a service, every member's, sorted.
fn secure_naming_ids(members: &[(&Workload, &WorkloadPort)]) -> Vec<SpiffeId> {
    let mut ids: Vec<SpiffeId> = members.iter().map(|(w, _)| w.spiffe_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The `tls` a DestinationRule sets for an endpoint (with the rule that owns the primary
/// policy and where it was set), or `None` when no rule sets one (auto mTLS decides).
fn tls_set_by_rule<'a>(
    rule: Option<&MergedRule<'a>>,
    subset: Option<OwnedSubset<'_>>,
    port: u16,
) -> Option<(&'a DestinationRule, ClientTls, String)> {
    let rule = rule?;
    let (tls, by) = rule.tls_for(subset, port);
    tls.map(|t| (rule.primary, t, by))
}

/// Warns when a rule's TLS cannot work with the endpoint: plaintext to a STRICT sidecar, or
/// ISTIO_MUTUAL to an endpoint without a sidecar or with DISABLE.
fn warn_if_rule_contradicts_endpoint(
    context: &str,
    by: &str,
    origination: &TlsOrigination,
    w: &Workload,
    p: &WorkloadPort,
    own: &PeerDecision,
    warnings: &mut Vec<String>,
) {
    let target = format!("{}:{} (workload {})", w.address, p.port, w.name);
    if *origination == TlsOrigination::Disable && w.sidecar && own.mode == MtlsMode::Strict {
        warnings.push(format!(
            "{context}: {by} sends plaintext to {target}, whose mode is STRICT ({}); its connections will be reset",
            own.decided_by
        ));
    }
    if matches!(origination, TlsOrigination::IstioMutual { .. })
        && (!w.sidecar || own.mode == MtlsMode::Disable)
    {
        warnings.push(format!(
            "{context}: {by} sends ISTIO_MUTUAL to {target}, which {}; handshakes will fail",
            if w.sidecar {
                "is DISABLE"
            } else {
                "has no sidecar"
            }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

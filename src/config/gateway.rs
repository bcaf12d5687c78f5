//! Istio's `Gateway` (istio.io/latest/docs/reference/config/networking/gateway/) and the plan of
//! a gateway workload (`spec.role: gateway`, run by `outrider gateway`).
//!
//! - [`server`] checks one `servers[]` entry (port, hosts, TLS of SEMANTICS §6);
//! - [`routes`] compiles the VirtualServices bound to gateways and attaches their rules to
//!   servers;
//! - this module validates Gateway documents and builds a [`GatewayPlan`]: every server of every
//!   Gateway whose `selector` the workload's labels satisfy (in any namespace, Istio's default),
//!   grouped by port, with the rules of the VirtualServices bound to it and the
//!   AuthorizationPolicies and RequestAuthentications selecting the workload.
//!
//! Rules across servers of one port: all terminate or pass TLS (chosen by SNI) or all are
//! plaintext; plaintext ones are all HTTP (chosen by authority) or a single TCP one. A host
//! already served on the port by an earlier server (load order) is dropped from the later one
//! with a warning, as Istio rejects the conflicting server.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ConfigError;
use super::gateway_plan::{GatewayPlan, GatewayPortPlan, GatewayServer, ServerTlsMode};
use super::hosts::visible;
use super::load::labels_text;
use super::plan::{MtlsMode, Protocol};
use super::resources::{GatewaySpec, Resource};
use super::source::Document;
use super::virtual_service::intersect;
use super::{authorization_policy, request_authentication, MeshConfig, Workload, WorkloadPort};

pub(crate) mod routes;
mod server;

pub use server::CIPHER_SUITES;
use server::{ServerDef, ServerHost};

/// A `Gateway` document after validation.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<ServerDef>,
    pub doc: Document,
}

impl Gateway {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `file:line` of `spec.servers[i]<suffix>`.
    fn at(&self, server: &ServerDef, suffix: &str) -> String {
        let l = self
            .doc
            .locate(&format!("spec.servers[{}]{suffix}", server.index));
        format!("{}:{}", l.file.display(), l.line)
    }
}

/// Each Gateway on its own: a spec with at least one server, each server valid, port names
/// unique within the Gateway, the servers of each port compatible.
pub(crate) fn validate(
    raw: Vec<(Document, Resource<GatewaySpec>)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Gateway>, ConfigError> {
    let mut gateways: Vec<Gateway> = Vec::new();
    for (doc, r) in raw {
        let namespace = super::load::namespace_of(r.metadata.namespace);
        let name = r.metadata.name;
        let spec = r
            .spec
            .ok_or_else(|| doc.error("spec", "missing field \"spec\""))?;
        if let Some(first) = gateways
            .iter()
            .find(|g| g.namespace == namespace && g.name == name)
        {
            let at = first.doc.locate("metadata.name");
            return Err(doc.error(
                "metadata.name",
                format!(
                    "duplicate Gateway {namespace}/{name} (first declared at {}:{})",
                    at.file.display(),
                    at.line
                ),
            ));
        }
        if spec.servers.is_empty() {
            return Err(doc.error("spec.servers", "needs at least one server"));
        }
        let mut servers: Vec<ServerDef> = Vec::new();
        for (i, s) in spec.servers.into_iter().enumerate() {
            let def = server::check(&doc, &namespace, &name, i, s, warnings)?;
            if let Some(n) = &def.port_name {
                if let Some(o) = servers.iter().find(|o| o.port_name.as_ref() == Some(n)) {
                    return Err(doc.error(
                        &format!("spec.servers[{i}].port.name"),
                        format!(
                            "duplicate port name {n:?} (servers[{}]): server port names must be unique in a Gateway",
                            o.index
                        ),
                    ));
                }
            }
            servers.push(def);
        }
        let gateway = Gateway {
            namespace,
            name,
            selector: spec.selector,
            servers,
            doc,
        };
        let mut by_port: BTreeMap<u16, Vec<(&Gateway, &ServerDef)>> = BTreeMap::new();
        for s in &gateway.servers {
            by_port.entry(s.port).or_default().push((&gateway, s));
        }
        for (port, servers) in &by_port {
            resolve_port(*port, servers, warnings)?;
        }
        gateways.push(gateway);
    }
    Ok(gateways)
}

/// A server kept on its port, with the hosts it serves there.
struct Kept<'a> {
    gateway: &'a Gateway,
    server: &'a ServerDef,
    hosts: Vec<ServerHost>,
}

/// The servers of one port after the conflict rules: the classes must agree (an error,
/// located at the later server), a host served by an earlier server is dropped from a later
/// one and a server left without hosts, or a second TCP server, is dropped (warnings).
fn resolve_port<'a>(
    port: u16,
    servers: &[(&'a Gateway, &'a ServerDef)],
    warnings: &mut Vec<String>,
) -> Result<Vec<Kept<'a>>, ConfigError> {
    let describe = |g: &Gateway, s: &ServerDef| {
        format!(
            "servers[{}] of Gateway {} ({})",
            s.index,
            g.id(),
            g.at(s, ".port.number")
        )
    };
    let (first_g, first) = servers[0];
    for (g, s) in &servers[1..] {
        let field = format!("spec.servers[{}].port.number", s.index);
        if s.is_tls() != first.is_tls() {
            let class = |s: &ServerDef| {
                if s.is_tls() {
                    "terminates or passes TLS"
                } else {
                    "is plaintext"
                }
            };
            return Err(g.doc.error(
                &field,
                format!(
                    "port {port}: this server {} but {} {}: servers on one port must all use TLS or all be plaintext",
                    class(s),
                    describe(first_g, first),
                    class(first)
                ),
            ));
        }
        if !s.is_tls() && s.protocol.is_http() != first.protocol.is_http() {
            return Err(g.doc.error(
                &field,
                format!(
                    "port {port}: plaintext HTTP and TCP servers cannot share a port ({} is {})",
                    describe(first_g, first),
                    server::protocol_name(first.protocol)
                ),
            ));
        }
    }
    let mut kept: Vec<Kept<'a>> = Vec::new();
    // host -> the server that serves it on this port
    let mut served: BTreeMap<String, String> = BTreeMap::new();
    for (g, s) in servers {
        let here = format!("{}: spec.servers[{}]", g.at(s, ".hosts"), s.index);
        if !s.is_tls() && !s.protocol.is_http() {
            if let Some(k) = kept.first() {
                warnings.push(format!(
                    "{here}: Gateway {}: TCP server on port {port} is ignored: {} comes first in load order (a plaintext TCP port has no host to choose by)",
                    g.id(),
                    describe(k.gateway, k.server)
                ));
                continue;
            }
        }
        let mut hosts = Vec::new();
        for h in &s.hosts {
            match served.get(&h.host) {
                Some(by) => warnings.push(format!(
                    "{here}: Gateway {}: host {} on port {port} is already served by {by}; the first in load order wins",
                    g.id(),
                    h.host
                )),
                None => hosts.push(h.clone()),
            }
        }
        for h in &hosts {
            served.insert(h.host.clone(), describe(g, s));
        }
        if hosts.is_empty() {
            warnings.push(format!(
                "{here}: Gateway {}: server on port {port} is ignored: every one of its hosts is served by an earlier server",
                g.id()
            ));
            continue;
        }
        kept.push(Kept {
            gateway: g,
            server: s,
            hosts,
        });
    }
    Ok(kept)
}

impl MeshConfig {
    /// The plan of gateway workload `w`.
    pub(crate) fn plan_gateway(
        &self,
        w: &Workload,
        warnings: &mut Vec<String>,
    ) -> Result<GatewayPlan, ConfigError> {
        let mut by_port: BTreeMap<u16, Vec<(&Gateway, &ServerDef)>> = BTreeMap::new();
        for g in self.gateways.iter().filter(|g| w.has_labels(&g.selector)) {
            for s in &g.servers {
                by_port.entry(s.port).or_default().push((g, s));
            }
        }
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut ports = Vec::new();
        for (port, servers) in &by_port {
            let mut planned = Vec::new();
            for k in resolve_port(*port, servers, warnings)? {
                let (g, s) = (k.gateway, k.server);
                let name = server_name(g, s, &mut names);
                let mut server = GatewayServer {
                    gateway: g.id(),
                    name,
                    protocol: s.protocol,
                    hosts: k.hosts.iter().map(|h| h.host.clone()).collect(),
                    tls: s.tls.clone(),
                    https_redirect: s.https_redirect,
                    http: Vec::new(),
                    tls_routes: Vec::new(),
                    tcp: Vec::new(),
                };
                self.bind_virtual_services(w, g, s, &k.hosts, &mut server, warnings)?;
                planned.push(server);
            }
            if planned.is_empty() {
                continue;
            }
            ports.push(self.gateway_port(w, *port, planned, warnings));
        }
        Ok(GatewayPlan { ports })
    }

    /// A port with its servers, and the policies that select the gateway there: HTTP when
    /// every server routes requests, TCP otherwise.
    fn gateway_port(
        &self,
        w: &Workload,
        port: u16,
        servers: Vec<GatewayServer>,
        warnings: &mut Vec<String>,
    ) -> GatewayPortPlan {
        let http = servers
            .iter()
            .all(|s| s.protocol.is_http() && !is_passthrough(s));
        let wp = WorkloadPort {
            name: servers[0].name.clone(),
            port,
            target_port: port,
            protocol: if http { Protocol::Http } else { Protocol::Tcp },
        };
        // Every client of a MUTUAL or ISTIO_MUTUAL port presents a certificate; any other
        // port accepts clients without one (an identity-based rule never matches them).
        let verified = servers.iter().all(|s| {
            s.tls.as_ref().is_some_and(|t| {
                matches!(t.mode, ServerTlsMode::Mutual | ServerTlsMode::IstioMutual)
            })
        });
        let mode = if verified {
            MtlsMode::Strict
        } else {
            MtlsMode::Permissive
        };
        let authorization = authorization_policy::authorizer(
            &self.authorization_policies,
            &self.root_namespace,
            w,
            &wp,
            mode,
            warnings,
        );
        let authentication = request_authentication::authenticator(
            &self.request_authentications,
            &self.root_namespace,
            w,
            &wp,
            warnings,
        );
        request_authentication::warn_unauthenticated(
            &self.authorization_policies,
            &self.root_namespace,
            w,
            &wp,
            &authentication,
            warnings,
        );
        GatewayPortPlan {
            port,
            servers,
            authorization,
            authentication,
        }
    }

    /// Attaches the rules of every VirtualService bound to `g` whose hosts meet the server's
    /// (and whose namespace the server's hosts admit), in load order.
    fn bind_virtual_services(
        &self,
        w: &Workload,
        g: &Gateway,
        s: &ServerDef,
        hosts: &[ServerHost],
        server: &mut GatewayServer,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let kind = if s.is_passthrough() {
            routes::RuleKind::Tls
        } else if s.routes_http() {
            routes::RuleKind::Http
        } else {
            routes::RuleKind::Tcp
        };
        let id = (g.namespace.clone(), g.name.clone());
        for vs in &self.virtual_services {
            let Some(compiled) = &vs.gateway_routes else {
                continue;
            };
            if !vs.bound_gateways().contains(&id)
                || !visible(&vs.export_to, &vs.namespace, &g.namespace)
            {
                continue;
            }
            let admitted: Vec<String> = hosts
                .iter()
                .filter(|h| h.admits(&vs.namespace))
                .map(|h| h.host.clone())
                .collect();
            let common = self.common_hosts(&admitted, vs);
            if common.is_empty() {
                continue;
            }
            let on = routes::Server {
                gateway: (&g.namespace, &g.name),
                port: s.port,
                hosts: common,
                server_hosts: &admitted,
            };
            let a = routes::attach(self, w, vs, compiled, &on, kind, warnings)?;
            server.http.extend(a.http);
            server.tls_routes.extend(a.tls);
            server.tcp.extend(a.tcp);
        }
        Ok(())
    }

    /// The VirtualService's hosts (short names completed, as Istio does) that meet one of
    /// `server_hosts` (wildcards on either side), in order: Envoy's virtual host domains.
    fn common_hosts(
        &self,
        server_hosts: &[String],
        vs: &super::virtual_service::VirtualService,
    ) -> Vec<String> {
        let mut common: Vec<String> = Vec::new();
        for vh in &vs.hosts {
            let vh = self.normalize_host(vh, &vs.namespace);
            if server_hosts.iter().any(|sh| intersect(sh, &vh).is_some()) && !common.contains(&vh) {
                common.push(vh);
            }
        }
        common
    }

    /// The names of the gateway workloads (`spec.role: gateway`), in load order.
    pub fn gateway_names(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| w.gateway)
            .map(|w| w.name.clone())
            .collect()
    }
}

fn is_passthrough(s: &GatewayServer) -> bool {
    s.tls
        .as_ref()
        .is_some_and(|t| t.mode == ServerTlsMode::Passthrough)
}

/// `port.name`, unless an earlier server of the plan has it (then qualified by the Gateway);
/// `<namespace>/<name>/servers[<i>]` without one.
fn server_name(g: &Gateway, s: &ServerDef, taken: &mut BTreeSet<String>) -> String {
    let indexed = format!("{}/servers[{}]", g.id(), s.index);
    let candidates = match &s.port_name {
        Some(n) => vec![n.clone(), format!("{}/{n}", g.id()), indexed],
        None => vec![indexed],
    };
    let name = candidates
        .iter()
        .find(|c| !taken.contains(*c))
        .unwrap_or(&candidates[candidates.len() - 1])
        .clone();
    taken.insert(name.clone());
    name
}

/// Load-time checks that need the whole configuration: every destination of a gateway-bound
/// VirtualService resolves (even when no gateway workload runs it yet).
pub(crate) fn check_destinations(config: &MeshConfig) -> Result<(), ConfigError> {
    for vs in &config.virtual_services {
        let Some(r) = &vs.gateway_routes else {
            continue;
        };
        let http = r.http.iter().flat_map(|h| match &h.action {
            routes::CompiledAction::Route { destinations, .. } => destinations.as_slice(),
            routes::CompiledAction::Fixed(_) => &[],
        });
        let l4 = r
            .tls
            .iter()
            .chain(&r.tcp)
            .flat_map(|l| l.destinations.as_slice());
        for d in http.chain(l4) {
            config.gateway_target(vs, d)?;
        }
    }
    Ok(())
}

/// The warnings of `outrider check` about gateways: a Gateway that selects no gateway
/// workload, a VirtualService naming a Gateway that does not exist, or bound to one with no
/// host in common with any of its servers.
pub(crate) fn warn_bindings(config: &MeshConfig, warnings: &mut Vec<String>) {
    for g in &config.gateways {
        if config
            .workloads
            .iter()
            .any(|w| w.gateway && w.has_labels(&g.selector))
        {
            continue;
        }
        let at = g.doc.locate("spec.selector");
        let sidecars: Vec<&str> = config
            .workloads
            .iter()
            .filter(|w| !w.gateway && w.has_labels(&g.selector))
            .map(|w| w.name.as_str())
            .collect();
        let hint = if sidecars.is_empty() {
            String::new()
        } else {
            format!(
                " (workloads {} carry these labels, but their spec.role is not gateway)",
                sidecars.join(", ")
            )
        };
        warnings.push(format!(
            "{}:{}: spec.selector: Gateway {} selects no gateway workload (selector {}){hint}; its servers listen nowhere",
            at.file.display(),
            at.line,
            g.id(),
            labels_text(&g.selector)
        ));
    }
    for vs in &config.virtual_services {
        let at = vs.doc.locate("spec.gateways");
        for (ns, name) in vs.bound_gateways() {
            let Some(g) = config
                .gateways
                .iter()
                .find(|g| g.namespace == ns && g.name == name)
            else {
                warnings.push(format!(
                    "{}:{}: spec.gateways: VirtualService {}/{} is bound to Gateway {ns}/{name}, which does not exist",
                    at.file.display(),
                    at.line,
                    vs.namespace,
                    vs.name
                ));
                continue;
            };
            let meets = g.servers.iter().any(|s| {
                let admitted: Vec<String> = s
                    .hosts
                    .iter()
                    .filter(|h| h.admits(&vs.namespace))
                    .map(|h| h.host.clone())
                    .collect();
                !config.common_hosts(&admitted, vs).is_empty()
            });
            if !meets {
                warnings.push(format!(
                    "{}:{}: spec.gateways: VirtualService {}/{} is bound to Gateway {ns}/{name}, but none of its hosts ({}) is served by a server of that Gateway to namespace {}; it applies nowhere there",
                    at.file.display(),
                    at.line,
                    vs.namespace,
                    vs.name,
                    vs.hosts.join(", "),
                    vs.namespace
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;

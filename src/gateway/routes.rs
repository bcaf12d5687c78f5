//! The gateway's destinations, built for the data path: every `route[]` destination of every
//! rule bound to every server, as an [`OutboundRuntime`] (endpoints, TLS connectors, metric
//! series), indexed exactly like the plan's rules so a request that matched rule `r` of server
//! `s` on port `p` finds its destinations without a lookup by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{GatewayPlan, Plan, WeightedDestination};
use crate::proxy::outbound::OutboundRuntime;
use crate::proxy::resolve::Resolver;
use crate::proxy::runtime::{outbound_runtime, ConnectorKey, MeshConnectors};

/// One destination's runtime; `None` when it could not be built (logged at build time; its
/// requests get 503 "no healthy upstream").
pub type Built = Option<Arc<OutboundRuntime>>;

/// Every destination of the gateway's plan.
#[derive(Default)]
pub struct GatewayRoutes {
    ports: HashMap<u16, Vec<ServerRoutes>>,
}

/// The destinations of one server, per rule and per `route[]` entry.
#[derive(Default)]
pub struct ServerRoutes {
    pub http: Vec<Vec<Built>>,
    pub tls_routes: Vec<Vec<Built>>,
    pub tcp: Vec<Vec<Built>>,
}

impl GatewayRoutes {
    /// Builds every destination of `gateway` (part of `plan`), recording the mesh connectors
    /// used in `used`.
    pub(crate) fn build(
        gateway: &GatewayPlan,
        plan: &Plan,
        connectors: &MeshConnectors,
        resolver: &Resolver,
        used: &mut Vec<ConnectorKey>,
    ) -> GatewayRoutes {
        let mut build_all = |dests: &[WeightedDestination]| -> Vec<Built> {
            dests
                .iter()
                .map(|d| {
                    match outbound_runtime(&d.plan, plan, connectors, resolver, used) {
                        Ok(rt) => Some(Arc::new(rt)),
                        Err(e) => {
                            tracing::error!(destination = %d.plan.to, error = %format!("{e:#}"), "gateway destination cannot be built; its requests get 503");
                            None
                        }
                    }
                })
                .collect()
        };
        let mut ports = HashMap::new();
        for port in &gateway.ports {
            let servers = port
                .servers
                .iter()
                .map(|s| ServerRoutes {
                    http: s
                        .http
                        .iter()
                        .map(|r| match &r.action {
                            crate::config::HttpAction::Route(route) => {
                                build_all(&route.destinations)
                            }
                            _ => Vec::new(),
                        })
                        .collect(),
                    tls_routes: s
                        .tls_routes
                        .iter()
                        .map(|r| build_all(&r.destinations))
                        .collect(),
                    tcp: s.tcp.iter().map(|r| build_all(&r.destinations)).collect(),
                })
                .collect();
            ports.insert(port.port, servers);
        }
        GatewayRoutes { ports }
    }

    /// The destinations of the servers on `port`.
    pub fn server(&self, port: u16, server: usize) -> Option<&ServerRoutes> {
        self.ports.get(&port)?.get(server)
    }
}

/// Entry `dest` of rule `rule` in one of a server's rule lists.
pub fn destination(
    rules: &[Vec<Built>],
    rule: usize,
    dest: usize,
) -> Option<&Arc<OutboundRuntime>> {
    rules.get(rule)?.get(dest)?.as_ref()
}

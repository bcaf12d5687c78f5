//! The capture plan of a workload (SEMANTICS §10): what `outrider run --capture` needs besides
//! the explicit listeners. Outbound, every port of every service of the mesh, routed exactly
//! as an `outbound` entry to it would be, and the member addresses that reach it; inbound,
//! the rule for a port the workload does not declare (the workload-level mode, TCP).

use std::collections::{BTreeMap, BTreeSet};

use super::peer_authn::{self, Applicable};
use super::plan::{CapturePlan, CapturedService, InboundPlan, Protocol};
use super::{authorization_policy, outbound, MeshConfig, Workload, WorkloadPort};
use crate::policy::jwt::Authenticator;

/// The `(address, port)` of a service port's members.
type Members = BTreeSet<(String, u16)>;

/// The capture plan of `w` (planned for every workload, used by captured sidecars).
///
/// A service port whose routes cannot be planned (a VirtualService naming a host the mesh
/// does not have, say) is left out with a warning: captured connections to it get the
/// outbound traffic policy, and explicit `outbound` entries still report the error.
pub(crate) fn plan(
    config: &MeshConfig,
    w: &Workload,
    applicable: &Applicable<'_>,
    warnings: &mut Vec<String>,
) -> CapturePlan {
    // Only a workload that says it is captured warns about what capture would do.
    let mut unused = Vec::new();
    let warnings = if w.capture { warnings } else { &mut unused };
    // (namespace, service) → port → member addresses, in a stable order.
    let mut services: BTreeMap<(&str, &str), BTreeMap<u16, Members>> = BTreeMap::new();
    for member in &config.workloads {
        let ports = services
            .entry((member.namespace.as_str(), member.service.as_str()))
            .or_default();
        for p in &member.ports {
            ports
                .entry(p.port)
                .or_default()
                .insert((member.address.to_ascii_lowercase(), p.port));
        }
    }
    let mut captured = Vec::new();
    for ((namespace, service), ports) in services {
        for (port, addresses) in ports {
            match outbound::plan_service_port(config, w, service, namespace, port, warnings) {
                Ok(route) => captured.push(CapturedService {
                    addresses: addresses.into_iter().collect(),
                    route,
                }),
                Err(e) => warnings.push(format!(
                    "workload {}: captured connections to {service}.{namespace}:{port} cannot be routed ({e}); they get the outbound traffic policy",
                    w.name
                )),
            }
        }
    }
    let decision = peer_authn::resolve(applicable, 0);
    let port = WorkloadPort {
        name: "undeclared".into(),
        port: 0,
        target_port: 0,
        protocol: Protocol::Tcp,
    };
    let authorization = authorization_policy::authorizer(
        &config.authorization_policies,
        &config.root_namespace,
        w,
        &port,
        decision.mode,
        warnings,
    );
    CapturePlan {
        declared: w.capture,
        outbound_traffic_policy: config.outbound_traffic_policy,
        services: captured,
        undeclared: InboundPlan {
            name: port.name,
            port: 0,
            target_port: 0,
            protocol: Protocol::Tcp,
            mode: decision.mode,
            decided_by: decision.decided_by,
            authorization,
            // TCP: no request to authenticate.
            authentication: Authenticator::none(),
        },
    }
}

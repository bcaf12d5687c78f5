//! Connections the gateway carries as bytes: TLS passed through by SNI (PASSTHROUGH servers,
//! VirtualService `tls[]`), and TCP or terminated-TLS servers (`tcp[]`). The destination is
//! reached like any mesh destination — with the gateway's identity over mesh mTLS when the
//! endpoint has a sidecar — so passed-through TLS travels inside mesh mTLS, as Istio's gateway
//! sends it. AuthorizationPolicies selecting the gateway are checked once per connection
//! (their L4 fields; the client has no mesh identity at the edge).

use crate::config::{GatewayPortPlan, L4Rule};
use crate::policy::authz::{self, Verdict};
use crate::proxy::copy::CopyStream;
use crate::proxy::http::route;
use crate::proxy::outbound::carry;
use crate::proxy::{Runtime, Shared};

use super::listener::Admitted;
use super::routes::{destination, Built};

/// Carries a connection to a PASSTHROUGH server by its SNI.
pub(super) async fn passthrough<S: CopyStream>(
    io: S,
    a: &Admitted,
    plan: &GatewayPortPlan,
    rt: &Runtime,
    shared: &Shared,
) {
    forward(io, a, plan, rt, shared, Rules::Tls).await;
}

/// Carries a connection to a TCP server, or a TLS server after termination.
pub(super) async fn tcp<S: CopyStream>(
    io: S,
    a: &Admitted,
    plan: &GatewayPortPlan,
    rt: &Runtime,
    shared: &Shared,
) {
    forward(io, a, plan, rt, shared, Rules::Tcp).await;
}

#[derive(Clone, Copy)]
enum Rules {
    Tls,
    Tcp,
}

async fn forward<S: CopyStream>(
    io: S,
    a: &Admitted,
    plan: &GatewayPortPlan,
    rt: &Runtime,
    shared: &Shared,
    which: Rules,
) {
    let Some(index) = a.server else { return };
    let Some(server) = plan.servers.get(index) else {
        return;
    };
    let (rules, built): (&[L4Rule], Option<&[Vec<Built>]>) = {
        let routes = rt.gateway.as_ref().and_then(|g| g.server(a.port, index));
        match which {
            Rules::Tls => (&server.tls_routes, routes.map(|r| r.tls_routes.as_slice())),
            Rules::Tcp => (&server.tcp, routes.map(|r| r.tcp.as_slice())),
        }
    };
    if !plan.authorization.is_empty() {
        let facts = authz::Connection {
            peer: None,
            source: a.peer,
            destination: a.local,
            sni: a.sni.as_deref(),
        };
        if let Verdict::Deny { policy } = plan.authorization.check_connection(&facts).verdict {
            shared.metrics.authz_denied(a.port, &policy);
            tracing::info!(peer = %a.peer, port = a.port, %policy, "gateway: connection denied by authorization");
            return;
        }
    }
    let Some(rule) = route::select_l4(rules, a.sni.as_deref(), a.port) else {
        shared.metrics.inbound_rejected(a.port, "no_route");
        tracing::info!(peer = %a.peer, port = a.port, server = %server.name, sni = a.sni.as_deref().unwrap_or(""), "gateway: no route for this connection; closed");
        return;
    };
    let rule_index = rules
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or_default();
    let out = route::pick_weighted(&rule.destinations)
        .and_then(|d| built.and_then(|b| destination(b, rule_index, d)));
    let Some(out) = out else {
        shared.metrics.upstream_failed(&rule.origin, "no_endpoint");
        tracing::warn!(peer = %a.peer, port = a.port, rule = %rule.origin, "gateway: the route's destination is unavailable; closed");
        return;
    };
    if carry(io, a.peer, out, rt, shared).await.is_some() {
        tracing::info!(peer = %a.peer, port = a.port, rule = %rule.origin, "gateway: no endpoint of the destination could be reached; closed");
    }
}

//! VirtualService (istio.io/latest/docs/reference/config/networking/virtual-service/): checking a service's fields at load, finding the
//! VirtualService a client sees for a host, the rule it applies, and where each weighted
//! destination of that rule goes.
//!
//! Match conditions are not evaluated yet: the first rule without `match`, else the first
//! rule, decides every connection (a warning at load says so).

use super::error::ConfigError;
use super::hosts::{host_match, split_fqdn, visible};
use super::outbound::{PortRef, Target};
use super::resources::{HttpRoute, RouteDestination, TcpRoute, VirtualServiceSpec};
use super::source::Document;
use super::MeshConfig;

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

/// The rule a VirtualService applies to one outbound entry: its list (`http` or `tcp`), its
/// index there, and its weighted destinations.
pub(crate) struct ChosenRule<'a> {
    pub kind: &'static str,
    pub index: usize,
    pub destinations: &'a [RouteDestination],
}

impl MeshConfig {
    /// The VirtualService a client in `client_ns` sees for `host`: visible to the client,
    /// bound to the mesh (no gateways, or `mesh`), the most specific host match; the first in
    /// load order among equals.
    pub(crate) fn find_virtual_service(
        &self,
        host: &str,
        client_ns: &str,
    ) -> Option<&VirtualService> {
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

    /// Where one weighted destination of `vs` goes: a mesh service (its port as the
    /// destination names it, else the port of the original `target`) or a host outside the
    /// mesh (its port, else `default_port`).
    pub(crate) fn destination_target(
        &self,
        vs: &VirtualService,
        d: &RouteDestination,
        target: &Target,
        default_port: u16,
    ) -> Target {
        let host = self.normalize_host(&d.destination.host, &vs.namespace);
        match split_fqdn(&host) {
            Some((service, namespace))
                if !self.service_workloads(service, namespace).is_empty() =>
            {
                let port = match (&d.destination.port, target) {
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
                    .unwrap_or(default_port),
            },
        }
    }
}

/// The weight of one of `count` destinations: as written, else 100 for a lone destination
/// and 0 for one of several (Istio's defaults).
pub(crate) fn destination_weight(d: &RouteDestination, count: usize) -> u32 {
    d.weight.unwrap_or(if count == 1 { 100 } else { 0 })
}

/// The rule a VirtualService applies: from `http` (for HTTP ports) or `tcp`, falling back to
/// the other list; the first rule without `match`, else the first rule (match conditions are
/// not evaluated yet).
pub(crate) fn pick_rule(vs: &VirtualService, http_first: bool) -> Option<ChosenRule<'_>> {
    fn pick(rules: Vec<(bool, &[RouteDestination])>) -> Option<(usize, &[RouteDestination])> {
        rules
            .iter()
            .position(|(m, _)| !m)
            .or((!rules.is_empty()).then_some(0))
            .map(|i| (i, rules[i].1))
    }
    let chosen = |kind, (index, destinations)| ChosenRule {
        kind,
        index,
        destinations,
    };
    let http = || {
        pick(
            vs.http
                .iter()
                .map(|r| (r.matches.is_some(), r.route.as_slice()))
                .collect(),
        )
        .map(|r| chosen("http", r))
    };
    let tcp = || {
        pick(
            vs.tcp
                .iter()
                .map(|r| (r.matches.is_some(), r.route.as_slice()))
                .collect(),
        )
        .map(|r| chosen("tcp", r))
    };
    if http_first {
        http().or_else(tcp)
    } else {
        tcp().or_else(http)
    }
}

/// The checks of one VirtualService's own fields: at least one host, at least one destination
/// per rule; what outrider does not act on (tls routes, match conditions, http features other
/// than routing) becomes warnings.
pub(crate) fn check_spec(
    doc: &Document,
    namespace: &str,
    name: &str,
    spec: &VirtualServiceSpec,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let at = doc.locate("spec");
    let warn = |what: &str, warnings: &mut Vec<String>| {
        warnings.push(format!(
            "{}:{}: VirtualService {namespace}/{name}: {what} not acted on by outrider yet; ignored",
            at.file.display(),
            at.line
        ))
    };
    if spec.hosts.is_empty() {
        return Err(doc.error("spec.hosts", "needs at least one host"));
    }
    if spec.tls.is_some() {
        warn("tls routes are", warnings);
    }
    if spec.http.iter().any(|r| r.matches.is_some()) || spec.tcp.iter().any(|r| r.matches.is_some())
    {
        warn(
            "match conditions are (the first rule without a match, else the first rule, is used)",
            warnings,
        );
    }
    if spec.http.iter().any(|r| {
        r.redirect.is_some()
            || r.direct_response.is_some()
            || r.delegate.is_some()
            || r.rewrite.is_some()
            || r.timeout.is_some()
            || r.retries.is_some()
            || r.fault.is_some()
            || r.mirror.is_some()
            || r.mirrors.is_some()
            || r.mirror_percentage.is_some()
            || r.cors_policy.is_some()
            || r.headers.is_some()
    }) {
        warn(
            "http features other than match and route (redirect, rewrite, retries, ...) are",
            warnings,
        );
    }
    for (kind, rules) in [
        (
            "http",
            spec.http.iter().map(|r| &r.route).collect::<Vec<_>>(),
        ),
        ("tcp", spec.tcp.iter().map(|r| &r.route).collect()),
    ] {
        for (i, route) in rules.iter().enumerate() {
            if route.is_empty() {
                return Err(doc.error(
                    &format!("spec.{kind}[{i}].route"),
                    "needs at least one destination",
                ));
            }
        }
    }
    Ok(())
}

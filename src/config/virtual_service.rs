//! VirtualService (istio.io/latest/docs/reference/config/networking/virtual-service/): checking a service's fields at load, finding the
//! VirtualService a client sees for a host, the rule it applies, and where each weighted
//! destination of that rule goes.
//!
//! For sidecars (a VirtualService bound to `mesh`), match conditions are not evaluated yet: the
//! first rule with destinations and without `match`, else the first rule with destinations,
//! decides every connection (a warning at load says so). At a gateway every rule is compiled
//! (see [`super::gateway`]).

use super::error::ConfigError;
use super::gateway::routes::GatewayRoutes;
use super::hosts::{host_match, split_fqdn, visible};
use super::outbound::{PortRef, Target};
use super::resources::{HttpRoute, RouteDestination, TcpRoute, TlsRoute, VirtualServiceSpec};
use super::source::Document;
use super::MeshConfig;

/// The `gateways` entry that binds a VirtualService to the sidecars.
pub(crate) const MESH_GATEWAY: &str = "mesh";

/// A `VirtualService` document after validation.
#[derive(Debug, Clone)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
    pub export_to: Vec<String>,
    /// The rules compiled for gateways, when `gateways` names at least one Gateway.
    pub(crate) gateway_routes: Option<GatewayRoutes>,
    pub(crate) doc: Document,
}

impl VirtualService {
    /// Whether the sidecars apply it: no `gateways`, or `mesh` among them.
    pub(crate) fn binds_mesh(&self) -> bool {
        binds_mesh(&self.gateways)
    }

    /// The Gateways it names, as `(namespace, name)` (a bare name is in the VirtualService's
    /// namespace), `mesh` left out.
    pub(crate) fn bound_gateways(&self) -> Vec<(String, String)> {
        self.gateways
            .iter()
            .filter(|g| *g != MESH_GATEWAY)
            .map(|g| gateway_ref(g, &self.namespace))
            .collect()
    }
}

/// Whether a `gateways` list binds the sidecars.
pub(crate) fn binds_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// `(namespace, name)` of a `gateways` entry (`name` or `namespace/name`) written in a
/// resource of namespace `ns`.
pub(crate) fn gateway_ref(entry: &str, ns: &str) -> (String, String) {
    match entry.split_once('/') {
        Some((g_ns, name)) => (g_ns.to_string(), name.to_string()),
        None => (ns.to_string(), entry.to_string()),
    }
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
            if !visible(&vs.export_to, &vs.namespace, client_ns) || !vs.binds_mesh() {
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
/// the other list; among the rules with destinations (a `redirect` or `directResponse` rule is
/// a gateway's business), the first without `match`, else the first (match conditions are not
/// evaluated yet).
pub(crate) fn pick_rule(vs: &VirtualService, http_first: bool) -> Option<ChosenRule<'_>> {
    fn pick(rules: Vec<(bool, &[RouteDestination])>) -> Option<(usize, &[RouteDestination])> {
        let routed = || rules.iter().enumerate().filter(|(_, (_, d))| !d.is_empty());
        routed()
            .find(|(_, (m, _))| !m)
            .or_else(|| routed().next())
            .map(|(i, (_, d))| (i, *d))
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

/// The checks of one VirtualService's own fields: at least one host, well-formed `gateways`,
/// an action per rule, `tls` rules that match SNI within the hosts. For the sidecars, what
/// they do not act on (tls routes, match conditions, http features other than routing)
/// becomes warnings; a gateway's compilation ([`super::gateway::routes::compile`]) checks the
/// rest.
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
    for (i, g) in spec.gateways.iter().enumerate() {
        let well_formed = match g.split_once('/') {
            Some((ns, n)) => !ns.is_empty() && !n.is_empty() && !n.contains('/'),
            None => !g.is_empty(),
        };
        if !well_formed {
            return Err(doc.error(
                &format!("spec.gateways[{i}]"),
                format!("{g:?} is neither `mesh`, <gateway name> nor <namespace>/<gateway name>"),
            ));
        }
    }
    for (i, r) in spec.http.iter().enumerate() {
        let actions: Vec<&str> = [
            (!r.route.is_empty(), "route"),
            (r.redirect.is_some(), "redirect"),
            (r.direct_response.is_some(), "directResponse"),
            (r.delegate.is_some(), "delegate"),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect();
        match actions.as_slice() {
            [] => return Err(doc.error(
                &format!("spec.http[{i}].route"),
                "needs at least one destination (or a redirect, a directResponse or a delegate)",
            )),
            [_] => {}
            several => {
                return Err(doc.error(
                    &format!("spec.http[{i}].{}", several[1]),
                    format!("{} exclude each other in one rule", several.join(" and ")),
                ))
            }
        }
    }
    for (i, r) in spec.tcp.iter().enumerate() {
        if r.route.is_empty() {
            return Err(doc.error(
                &format!("spec.tcp[{i}].route"),
                "needs at least one destination",
            ));
        }
    }
    check_tls_routes(doc, spec)?;
    if !binds_mesh(&spec.gateways) {
        return Ok(());
    }
    if !spec.tls.is_empty() {
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
    Ok(())
}

/// `tls` rules: destinations, at least one match, each with `sniHosts` that the
/// VirtualService's hosts cover (Istio's rule).
fn check_tls_routes(doc: &Document, spec: &VirtualServiceSpec) -> Result<(), ConfigError> {
    let hosts: Vec<String> = spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (i, r) in spec.tls.iter().enumerate() {
        if r.route.is_empty() {
            return Err(doc.error(
                &format!("spec.tls[{i}].route"),
                "needs at least one destination",
            ));
        }
        if r.matches.is_empty() {
            return Err(doc.error(
                &format!("spec.tls[{i}].match"),
                "a tls rule needs at least one match with sniHosts",
            ));
        }
        for (j, m) in r.matches.iter().enumerate() {
            let field = format!("spec.tls[{i}].match[{j}].sniHosts");
            if m.sni_hosts.is_empty() {
                return Err(doc.error(&field, "needs at least one SNI host"));
            }
            for sni in &m.sni_hosts {
                let sni = sni.to_ascii_lowercase();
                if !hosts.iter().any(|h| covers(h, &sni)) {
                    return Err(doc.error(
                        &field,
                        format!(
                            "SNI host {sni:?} is not within the VirtualService's hosts ({})",
                            spec.hosts.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether host pattern `pattern` covers every name `host` (itself possibly a wildcard)
/// stands for.
pub(crate) fn covers(pattern: &str, host: &str) -> bool {
    intersect(pattern, host).as_deref() == Some(host)
}

/// The names two host patterns have in common, as the more specific of the two (`*` and
/// `*.example.com` wildcards on either side); `None` when they share none.
pub(crate) fn intersect(a: &str, b: &str) -> Option<String> {
    if a == "*" {
        return Some(b.to_string());
    }
    if b == "*" {
        return Some(a.to_string());
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) if sa.ends_with(sb) => Some(a.to_string()),
        (Some(sa), Some(sb)) if sb.ends_with(sa) => Some(b.to_string()),
        (Some(_), Some(_)) => None,
        (Some(sa), None) => (b.len() > sa.len() && b.ends_with(sa)).then(|| b.to_string()),
        (None, Some(sb)) => (a.len() > sb.len() && a.ends_with(sb)).then(|| a.to_string()),
        (None, None) => (a == b).then(|| a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_intersections() {
        let cases = [
            ("*", "a.example.com", Some("a.example.com")),
            ("a.example.com", "*", Some("a.example.com")),
            ("*.example.com", "a.example.com", Some("a.example.com")),
            ("a.example.com", "*.example.com", Some("a.example.com")),
            ("*.example.com", "example.com", None),
            ("*.example.com", "*.a.example.com", Some("*.a.example.com")),
            ("*.a.example.com", "*.example.com", Some("*.a.example.com")),
            ("*.example.com", "*.example.org", None),
            ("a.example.com", "b.example.com", None),
            ("a.example.com", "a.example.com", Some("a.example.com")),
            ("*", "*", Some("*")),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersect(a, b).as_deref(), want, "{a} ∩ {b}");
        }
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*", "*.example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }
}

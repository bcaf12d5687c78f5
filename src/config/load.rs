//! From documents to a validated [`MeshConfig`]: dispatch on `apiVersion`/`kind`, typed
//! parsing, then the checks that need more than one document (duplicates, selectors,
//! references), then a trial plan of every workload.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_yaml_ng::Value;

use super::authorization_policy::{self, AuthzPolicy};
use super::destination_rule::{self, DestinationRule};
use super::error::ConfigError;
use super::gateway::{self, routes};
use super::peer_authn::PeerPolicy;
use super::plan::{ForwardClientCert, OutboundTrafficPolicy, Protocol};
use super::request_authentication::{self, AuthnPolicy};
use super::resources::{
    AuthorizationPolicySpec, DestinationRuleSpec, ForwardClientCertSpec, GatewaySpec, MeshSpec,
    OutboundTrafficModeSpec, PeerAuthenticationSpec, ProtocolSpec, RequestAuthenticationSpec,
    Resource, RoleSpec, VirtualServiceSpec, WorkloadSpec,
};
use super::scope;
use super::source::{self, Document};
use super::virtual_service::{self, VirtualService};
use super::{MeshConfig, Workload, WorkloadPort};
use crate::identity::spiffe::validate_trust_domain;
use crate::identity::SpiffeId;

const OUTRIDER_API: &str = "outrider.dev/v1alpha1";
const DEFAULT_NAMESPACE: &str = "default";

/// Istio kinds accepted and ignored (with a warning), by API group.
const IGNORED_KINDS: &[(&str, &str)] = &[
    ("networking.istio.io", "ServiceEntry"),
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "WorkloadEntry"),
    ("networking.istio.io", "WorkloadGroup"),
    ("networking.istio.io", "EnvoyFilter"),
    ("networking.istio.io", "ProxyConfig"),
    ("telemetry.istio.io", "Telemetry"),
    ("extensions.istio.io", "WasmPlugin"),
];

#[derive(Default)]
struct Parsed {
    mesh: Option<(Document, MeshSpec)>,
    workloads: Vec<(Document, Resource<WorkloadSpec>)>,
    peer: Vec<(Document, Resource<PeerAuthenticationSpec>)>,
    authz: Vec<(Document, Resource<AuthorizationPolicySpec>)>,
    authn: Vec<(Document, Resource<RequestAuthenticationSpec>)>,
    rules: Vec<(Document, Resource<DestinationRuleSpec>)>,
    services: Vec<(Document, Resource<VirtualServiceSpec>)>,
    gateways: Vec<(Document, Resource<GatewaySpec>)>,
    warnings: Vec<String>,
}

pub fn load(paths: &[PathBuf]) -> Result<MeshConfig, ConfigError> {
    let mut texts = Vec::new();
    let mut all = Vec::new();
    for path in paths {
        all.extend(source::files(path)?);
    }
    for file in all {
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            source,
        })?;
        texts.push((file, text));
    }
    load_texts(texts)
}

pub fn load_texts(texts: Vec<(PathBuf, String)>) -> Result<MeshConfig, ConfigError> {
    let mut parsed = Parsed::default();
    let files: Vec<PathBuf> = texts.iter().map(|(f, _)| f.clone()).collect();
    for (file, text) in texts {
        for doc in source::split_documents(Arc::new(file), &text) {
            parse_document(doc, &mut parsed)?;
        }
    }
    build(parsed, files)
}

fn parse_document(doc: Document, parsed: &mut Parsed) -> Result<(), ConfigError> {
    let value = doc.value()?;
    let map = match &value {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => return Err(doc.error("", "a document must be a mapping with apiVersion and kind")),
    };
    let field = |name: &str| -> Result<String, ConfigError> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(doc.error(name, "must be a string")),
            None => Err(doc.error(name, format!("missing field \"{name}\""))),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let bad_version = |expected: &str| {
        doc.error(
            "apiVersion",
            format!("{kind} has apiVersion {api_version:?}, expected {expected}"),
        )
    };
    match kind.as_str() {
        "Mesh" | "Workload" if api_version != OUTRIDER_API => {
            return Err(bad_version(OUTRIDER_API))
        }
        "Mesh" => {
            let r: Resource<MeshSpec> = doc.typed()?;
            if let Some((first, _)) = &parsed.mesh {
                return Err(doc.error(
                    "kind",
                    format!(
                        "a second Mesh document (the first is at {}:{})",
                        first.file.display(),
                        first.line_offset + 1
                    ),
                ));
            }
            parsed.mesh = Some((doc, r.spec.unwrap_or_default()));
        }
        "Workload" => {
            let r: Resource<WorkloadSpec> = doc.typed()?;
            if r.spec.is_none() {
                return Err(doc.error("spec", "missing field \"spec\""));
            }
            parsed.workloads.push((doc, r));
        }
        "PeerAuthentication" => {
            if group != "security.istio.io" || !matches!(version, "v1beta1" | "v1") {
                return Err(bad_version(
                    "security.istio.io/v1 or security.istio.io/v1beta1",
                ));
            }
            parsed.peer.push((doc.clone(), doc.typed()?));
        }
        "AuthorizationPolicy" => {
            if group != "security.istio.io" || !matches!(version, "v1beta1" | "v1") {
                return Err(bad_version(
                    "security.istio.io/v1 or security.istio.io/v1beta1",
                ));
            }
            parsed.authz.push((doc.clone(), doc.typed()?));
        }
        "RequestAuthentication" => {
            if group != "security.istio.io" || !matches!(version, "v1beta1" | "v1") {
                return Err(bad_version(
                    "security.istio.io/v1 or security.istio.io/v1beta1",
                ));
            }
            parsed.authn.push((doc.clone(), doc.typed()?));
        }
        "DestinationRule" | "VirtualService" | "Gateway" => {
            if group != "networking.istio.io" || !matches!(version, "v1alpha3" | "v1beta1" | "v1") {
                return Err(bad_version(
                    "networking.istio.io/v1, networking.istio.io/v1beta1 or networking.istio.io/v1alpha3",
                ));
            }
            if kind == "Gateway" {
                parsed.gateways.push((doc.clone(), doc.typed()?));
            } else if kind == "DestinationRule" {
                let r: Resource<DestinationRuleSpec> = doc.typed()?;
                if r.spec.is_none() {
                    return Err(doc.error("spec", "missing field \"spec\""));
                }
                parsed.rules.push((doc, r));
            } else {
                let r: Resource<VirtualServiceSpec> = doc.typed()?;
                if r.spec.is_none() {
                    return Err(doc.error("spec", "missing field \"spec\""));
                }
                parsed.services.push((doc, r));
            }
        }
        _ if IGNORED_KINDS.contains(&(group, kind.as_str())) => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let at = doc.locate("kind");
            parsed.warnings.push(format!(
                "{}:{}: {kind} {name} is not acted on by outrider yet; ignored",
                at.file.display(),
                at.line
            ));
        }
        _ => {
            return Err(doc.error(
                "kind",
                format!("unknown kind {kind:?} (apiVersion {api_version:?})"),
            ))
        }
    }
    Ok(())
}

/// Validates each kind in turn (every later kind may refer to the earlier ones), then plans
/// every workload once so that a configuration that loads is one every sidecar can run with.
fn build(parsed: Parsed, files: Vec<PathBuf>) -> Result<MeshConfig, ConfigError> {
    let Parsed {
        mesh,
        workloads,
        peer,
        authz,
        authn,
        rules,
        services,
        gateways,
        mut warnings,
    } = parsed;
    let mesh = validate_mesh(mesh)?;
    let workloads = validate_workloads(workloads, &mesh.trust_domain, &mut warnings)?;
    let peer_policies =
        validate_peer_authentications(peer, &workloads, &mesh.root_namespace, &mut warnings)?;
    let authorization_policies =
        validate_authorization_policies(authz, &workloads, &mesh, &mut warnings)?;
    let request_authentications =
        validate_request_authentications(authn, &workloads, &mesh, &mut warnings)?;
    let destination_rules = validate_destination_rules(rules, &mut warnings)?;
    let virtual_services = validate_virtual_services(services, &mut warnings)?;
    let gateways = gateway::validate(gateways, &mut warnings)?;
    let mut config = MeshConfig {
        trust_domain: mesh.trust_domain,
        root_namespace: mesh.root_namespace,
        enable_auto_mtls: mesh.enable_auto_mtls,
        outbound_traffic_policy: mesh.outbound_traffic_policy,
        workloads,
        peer_policies,
        authorization_policies,
        request_authentications,
        destination_rules,
        virtual_services,
        gateways,
        warnings: Vec::new(),
        files,
    };
    config.warnings = plan_every_workload(&config, warnings)?;
    Ok(config)
}

/// The mesh-wide settings of the `Mesh` document, or Istio's defaults without one.
struct MeshSettings {
    trust_domain: String,
    root_namespace: String,
    enable_auto_mtls: bool,
    outbound_traffic_policy: OutboundTrafficPolicy,
}

fn validate_mesh(mesh: Option<(Document, MeshSpec)>) -> Result<MeshSettings, ConfigError> {
    let Some((doc, spec)) = mesh else {
        return Ok(MeshSettings {
            trust_domain: "cluster.local".to_string(),
            root_namespace: "istio-system".to_string(),
            enable_auto_mtls: true,
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
        });
    };
    let td = spec.trust_domain.as_deref().unwrap_or("cluster.local");
    let trust_domain =
        validate_trust_domain(td).map_err(|e| doc.error("spec.trustDomain", e.to_string()))?;
    let root_namespace = spec
        .root_namespace
        .clone()
        .unwrap_or_else(|| "istio-system".into());
    if root_namespace.is_empty() {
        return Err(doc.error("spec.rootNamespace", "must not be empty"));
    }
    Ok(MeshSettings {
        trust_domain,
        root_namespace,
        enable_auto_mtls: spec.enable_auto_mtls.unwrap_or(true),
        outbound_traffic_policy: match spec.outbound_traffic_policy.map(|p| p.mode) {
            None | Some(OutboundTrafficModeSpec::AllowAny) => OutboundTrafficPolicy::AllowAny,
            Some(OutboundTrafficModeSpec::RegistryOnly) => OutboundTrafficPolicy::RegistryOnly,
        },
    })
}

/// Each Workload on its own ([`build_workload`]), then across workloads: unique names and
/// listener addresses.
fn validate_workloads(
    raw: Vec<(Document, Resource<WorkloadSpec>)>,
    trust_domain: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Workload>, ConfigError> {
    let mut workloads: Vec<Workload> = Vec::new();
    let mut listeners: BTreeMap<String, String> = BTreeMap::new();
    for (doc, r) in raw {
        let w = build_workload(&doc, r, trust_domain)?;
        if let Some(first) = workloads.iter().find(|o| o.name == w.name) {
            let at = first.doc.locate("metadata.name");
            return Err(doc.error(
                "metadata.name",
                format!(
                    "duplicate workload {:?} (first declared at {}:{})",
                    w.name,
                    at.file.display(),
                    at.line
                ),
            ));
        }
        for (i, p) in w.ports.iter().enumerate() {
            let addr = format!("{}:{}", w.address, p.port);
            if let Some(other) = listeners.insert(addr.clone(), w.name.clone()) {
                return Err(doc.error(
                    &format!("spec.ports[{i}].port"),
                    format!("{addr} is already the address of workload {other:?}"),
                ));
            }
        }
        if !w.sidecar && !w.outbound.is_empty() {
            let at = doc.locate("spec.outbound");
            warnings.push(format!(
                "{}:{}: spec.outbound: workload {} has no sidecar (`sidecar: false`); its outbound entries are ignored",
                at.file.display(),
                at.line,
                w.name
            ));
        }
        workloads.push(w);
    }
    Ok(workloads)
}

/// Each PeerAuthentication against the workloads: port-level modes need a selector, a
/// selector in the root namespace is ignored, a selector that matches no workload and a
/// second namespace-wide policy are warnings.
fn validate_peer_authentications(
    peer: Vec<(Document, Resource<PeerAuthenticationSpec>)>,
    workloads: &[Workload],
    root_namespace: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<PeerPolicy>, ConfigError> {
    let mut peer_policies = Vec::new();
    // namespace -> (name, file:line) of its first selector-less policy
    let mut namespace_wide: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (doc, r) in peer {
        let spec = r.spec.unwrap_or_default();
        let namespace = namespace_of(r.metadata.namespace);
        let name = r.metadata.name;
        let selector = spec.selector.map(|s| s.match_labels).unwrap_or_default();
        let mut port_level = BTreeMap::new();
        for (port, mtls) in spec.port_level_mtls {
            let field = format!("spec.portLevelMtls.{port}");
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| doc.error(&field, format!("port {port} is out of range 1-65535")))?;
            port_level.insert(port, mtls.mode);
        }
        if !port_level.is_empty() && selector.is_empty() {
            return Err(doc.error(
                "spec.portLevelMtls",
                "portLevelMtls needs a selector (a namespace- or mesh-wide policy cannot set port-level modes)",
            ));
        }
        let at = doc.locate("metadata.name");
        if !selector.is_empty() && namespace == root_namespace {
            warnings.push(format!(
                "{}:{}: PeerAuthentication {namespace}/{name} has a selector in the root namespace {root_namespace}; ignored (as Istio does)",
                at.file.display(),
                at.line
            ));
        } else if !selector.is_empty() {
            let matches = workloads
                .iter()
                .any(|w| w.namespace == namespace && w.has_labels(&selector));
            // A warning, as Istio accepts it: one stale policy must not block every reload
            // (a STRICT rollout among them) and leave the previous, weaker plan in force.
            if !matches {
                let at = doc.locate("spec.selector.matchLabels");
                warnings.push(format!(
                    "{}:{}: spec.selector.matchLabels: PeerAuthentication {namespace}/{name}: selector {} matches no workload in namespace {namespace}; it applies to none until one matches",
                    at.file.display(),
                    at.line,
                    labels_text(&selector)
                ));
            }
        } else if let Some((first, first_at)) = namespace_wide.get(&namespace) {
            let scope = if namespace == root_namespace {
                "mesh-wide"
            } else {
                "namespace-wide"
            };
            warnings.push(format!(
                "{}:{}: PeerAuthentication {namespace}/{name} is ignored: {namespace}/{first} at {first_at} is the {scope} policy (first in load order)",
                at.file.display(),
                at.line
            ));
        } else {
            namespace_wide.insert(
                namespace.clone(),
                (name.clone(), format!("{}:{}", at.file.display(), at.line)),
            );
        }
        peer_policies.push(PeerPolicy {
            namespace,
            name,
            selector,
            mode: spec.mtls.map(|m| m.mode).unwrap_or_default(),
            port_level,
            origin: format!("{}:{}", at.file.display(), at.line),
        });
    }
    Ok(peer_policies)
}

/// Each AuthorizationPolicy on its own, then the selectors that match no workload.
fn validate_authorization_policies(
    raw: Vec<(Document, Resource<AuthorizationPolicySpec>)>,
    workloads: &[Workload],
    mesh: &MeshSettings,
    warnings: &mut Vec<String>,
) -> Result<Vec<AuthzPolicy>, ConfigError> {
    // The mesh trust domain, then its aliases (none can be configured yet).
    let trust_domains = vec![mesh.trust_domain.clone()];
    let mut policies = Vec::new();
    for (doc, r) in raw {
        policies.push(authorization_policy::validate(
            &doc,
            r,
            &trust_domains,
            warnings,
        )?);
    }
    scope::warn_unselected(&policies, workloads, &mesh.root_namespace, warnings);
    Ok(policies)
}

/// Each RequestAuthentication on its own (remote sources share one key slot per source),
/// then the selectors that match no workload.
fn validate_request_authentications(
    raw: Vec<(Document, Resource<RequestAuthenticationSpec>)>,
    workloads: &[Workload],
    mesh: &MeshSettings,
    warnings: &mut Vec<String>,
) -> Result<Vec<AuthnPolicy>, ConfigError> {
    let mut slots = request_authentication::Slots::new();
    let mut policies = Vec::new();
    for (doc, r) in raw {
        policies.push(request_authentication::validate(
            &doc, r, &mut slots, warnings,
        )?);
    }
    scope::warn_unselected(&policies, workloads, &mesh.root_namespace, warnings);
    Ok(policies)
}

fn validate_destination_rules(
    rules: Vec<(Document, Resource<DestinationRuleSpec>)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<DestinationRule>, ConfigError> {
    let mut destination_rules = Vec::new();
    for (doc, r) in rules {
        let spec = r.spec.expect("checked at parse");
        let namespace = namespace_of(r.metadata.namespace);
        let name = r.metadata.name;
        destination_rule::check_spec(&doc, &namespace, &name, &spec, warnings)?;
        destination_rules.push(DestinationRule {
            namespace,
            name,
            host: spec.host,
            traffic_policy: spec.traffic_policy,
            subsets: spec.subsets,
            export_to: spec.export_to,
            doc,
        });
    }
    Ok(destination_rules)
}

fn validate_virtual_services(
    services: Vec<(Document, Resource<VirtualServiceSpec>)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<VirtualService>, ConfigError> {
    let mut virtual_services = Vec::new();
    for (doc, r) in services {
        let spec = r.spec.expect("checked at parse");
        let namespace = namespace_of(r.metadata.namespace);
        let name = r.metadata.name;
        virtual_service::check_spec(&doc, &namespace, &name, &spec, warnings)?;
        let to_gateways = spec
            .gateways
            .iter()
            .any(|g| g != virtual_service::MESH_GATEWAY);
        let gateway_routes = if to_gateways {
            Some(routes::compile(&doc, &namespace, &name, &spec, warnings)?)
        } else {
            None
        };
        virtual_services.push(VirtualService {
            namespace,
            name,
            hosts: spec.hosts,
            gateways: spec.gateways,
            http: spec.http,
            tcp: spec.tcp,
            tls: spec.tls,
            export_to: spec.export_to,
            gateway_routes,
            doc,
        });
    }
    Ok(virtual_services)
}

/// Plans every sidecar and gateway once (its errors are the load's errors) and returns every
/// warning, each once, in the order found.
fn plan_every_workload(
    config: &MeshConfig,
    mut warnings: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    destination_rule::warn_empty_subsets(config, &mut warnings);
    gateway::check_destinations(config)?;
    gateway::warn_bindings(config, &mut warnings);
    for w in config.workloads.iter().filter(|w| w.sidecar) {
        config.plan_workload(w, &mut warnings)?;
    }
    let mut seen = BTreeSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    Ok(warnings)
}

/// The namespace of a resource: as written, else `default` (as `kubectl apply` does).
pub(super) fn namespace_of(namespace: Option<String>) -> String {
    namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

fn build_workload(
    doc: &Document,
    r: Resource<WorkloadSpec>,
    trust_domain: &str,
) -> Result<Workload, ConfigError> {
    let spec = r.spec.expect("checked at parse");
    let name = r.metadata.name;
    if name.is_empty() {
        return Err(doc.error("metadata.name", "must not be empty"));
    }
    let namespace = namespace_of(r.metadata.namespace);
    let labels = r.metadata.labels;
    let spiffe_id = SpiffeId::istio(trust_domain, &namespace, &spec.service_account)
        .map_err(|e| doc.error("spec.serviceAccount", e.to_string()))?;
    if spec.address.trim().is_empty() {
        return Err(doc.error("spec.address", "must not be empty"));
    }
    let mut ports: Vec<WorkloadPort> = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let port_number = |n: u32, field: &str| {
            u16::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| doc.error(field, format!("port {n} is out of range 1-65535")))
        };
        let port = port_number(p.port, &format!("spec.ports[{i}].port"))?;
        let target_port = port_number(
            p.target_port.unwrap_or(p.port),
            &format!("spec.ports[{i}].targetPort"),
        )?;
        if p.name.is_empty() {
            return Err(doc.error(&format!("spec.ports[{i}].name"), "must not be empty"));
        }
        if ports.iter().any(|o| o.name == p.name) {
            return Err(doc.error(
                &format!("spec.ports[{i}].name"),
                format!("duplicate port name {:?}", p.name),
            ));
        }
        if ports.iter().any(|o| o.port == port) {
            return Err(doc.error(
                &format!("spec.ports[{i}].port"),
                format!("duplicate port {port}"),
            ));
        }
        ports.push(WorkloadPort {
            name: p.name.clone(),
            port,
            target_port,
            protocol: match p.protocol {
                ProtocolSpec::Tcp => Protocol::Tcp,
                ProtocolSpec::Http => Protocol::Http,
                ProtocolSpec::Http2 => Protocol::Http2,
                ProtocolSpec::Grpc => Protocol::Grpc,
                ProtocolSpec::Tls => Protocol::Tls,
            },
        });
    }
    let gateway = spec.role == RoleSpec::Gateway;
    if gateway {
        check_gateway_workload(doc, &spec)?;
    }
    let mut outbound: Vec<(SocketAddr, String)> = Vec::new();
    for (i, o) in spec.outbound.iter().enumerate() {
        let field = format!("spec.outbound[{i}].bind");
        let bind: SocketAddr = o.bind.parse().map_err(|_| {
            doc.error(
                &field,
                format!("{:?} is not an IP:port socket address", o.bind),
            )
        })?;
        // `to_canonical`: `[::ffff:127.0.0.1]` is loopback too.
        if !bind.ip().to_canonical().is_loopback() && !spec.allow_non_local_bind {
            return Err(doc.error(
                &field,
                format!(
                    "{bind} is not a loopback address: anyone who can reach it would connect into the mesh as workload {name:?}; bind to 127.0.0.1 or [::1] (the app shares the sidecar's network namespace), or set spec.allowNonLocalBind: true"
                ),
            ));
        }
        if outbound.iter().any(|(b, _)| *b == bind) {
            return Err(doc.error(&field, format!("duplicate bind address {bind}")));
        }
        outbound.push((bind, o.to.clone()));
    }
    Ok(Workload {
        service: labels.get("app").cloned().unwrap_or_else(|| name.clone()),
        version: labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "latest".into()),
        name,
        namespace,
        labels,
        service_account: spec.service_account,
        spiffe_id,
        address: spec.address,
        ports,
        outbound,
        sidecar: spec.sidecar,
        gateway,
        capture: spec.capture,
        num_trusted_proxies: spec.num_trusted_proxies.unwrap_or(0),
        forward_client_cert: match spec.forward_client_cert_details {
            // SEMANTICS §8: Istio's gateways default to SANITIZE_SET, sidecars to APPEND_FORWARD.
            None if gateway => ForwardClientCert::SanitizeSet,
            None | Some(ForwardClientCertSpec::AppendForward) => ForwardClientCert::AppendForward,
            Some(ForwardClientCertSpec::Sanitize) => ForwardClientCert::Sanitize,
            Some(ForwardClientCertSpec::ForwardOnly) => ForwardClientCert::ForwardOnly,
            Some(ForwardClientCertSpec::SanitizeSet) => ForwardClientCert::SanitizeSet,
            Some(ForwardClientCertSpec::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        },
        doc: doc.clone(),
    })
}

/// A gateway workload listens on its Gateway servers' ports and has no app beside it: no
/// `ports` (a gateway is never an endpoint of a mesh service, so auto mTLS never considers
/// it), no `outbound` entries, no capture, and it runs an outrider proxy.
fn check_gateway_workload(doc: &Document, spec: &WorkloadSpec) -> Result<(), ConfigError> {
    let refused = [
        (
            "spec.ports",
            !spec.ports.is_empty(),
            "a gateway workload declares no ports: it listens on the port.number of every Gateway server that selects it",
        ),
        (
            "spec.outbound",
            !spec.outbound.is_empty(),
            "a gateway workload has no outbound entries: its VirtualServices route into the mesh",
        ),
        (
            "spec.capture",
            spec.capture,
            "a gateway workload is not captured",
        ),
        (
            "spec.sidecar",
            !spec.sidecar,
            "a gateway workload runs outrider (`outrider gateway`); `sidecar: false` contradicts `role: gateway`",
        ),
    ];
    match refused.into_iter().find(|(_, bad, _)| *bad) {
        Some((field, _, message)) => Err(doc.error(field, message)),
        None => Ok(()),
    }
}

pub(super) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::super::{load_str, MtlsMode};

    /// A workload `sentences` with one outbound entry bound at `bind`, and `extra` spec lines.
    fn sentences(bind: &str, extra: &str) -> String {
        format!(
            "apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, labels: {{ app: sentences }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: [{{ name: http, port: 8080 }}]
{extra}  outbound:
    - {{ bind: \"{bind}\", to: \"api.example.com:443\" }}
"
        )
    }

    #[test]
    fn forward_client_cert_details_is_read_per_workload() {
        use super::super::ForwardClientCert;
        let plan = |extra: &str| {
            load_str("mesh.yaml", &sentences("127.0.0.1:9181", extra))
                .and_then(|c| c.plan("sentences"))
                .map(|p| p.forward_client_cert)
        };
        assert_eq!(plan("").unwrap(), ForwardClientCert::AppendForward);
        assert_eq!(
            plan("  forwardClientCertDetails: SANITIZE_SET\n").unwrap(),
            ForwardClientCert::SanitizeSet
        );
        assert_eq!(
            plan("  forwardClientCertDetails: ALWAYS_FORWARD_ONLY\n").unwrap(),
            ForwardClientCert::AlwaysForwardOnly
        );
        let err = plan("  forwardClientCertDetails: SOMETIMES\n").unwrap_err();
        assert!(
            err.to_string().contains("forwardClientCertDetails"),
            "{err}"
        );
    }

    #[test]
    fn outbound_bind_off_loopback_needs_allow_non_local_bind() {
        const ALLOW: &str = "  allowNonLocalBind: true\n";
        // (case, bind, extra spec lines, Ok or the error's line and message fragment)
        #[allow(clippy::type_complexity)]
        let cases: [(&str, &str, &str, Result<(), (usize, &str)>); 11] = [
            ("IPv4 loopback", "127.0.0.1:9181", "", Ok(())),
            ("anywhere in 127/8", "127.0.0.2:9181", "", Ok(())),
            ("IPv6 loopback", "[::1]:9181", "", Ok(())),
            (
                "IPv4-mapped loopback",
                "[::ffff:127.0.0.1]:9181",
                "",
                Ok(()),
            ),
            (
                "IPv4-mapped LAN address",
                "[::ffff:10.1.2.3]:9181",
                "",
                Err((9, "[::ffff:10.1.2.3]:9181 is not a loopback address")),
            ),
            (
                "every interface",
                "0.0.0.0:9181",
                "",
                Err((9, "0.0.0.0:9181 is not a loopback address")),
            ),
            (
                "a LAN address",
                "10.1.2.3:9181",
                "",
                Err((9, "10.1.2.3:9181 is not a loopback address")),
            ),
            (
                "IPv6 every interface",
                "[::]:9181",
                "",
                Err((9, "[::]:9181 is not a loopback address")),
            ),
            (
                "explicitly false",
                "0.0.0.0:9181",
                "  allowNonLocalBind: false\n",
                Err((10, "set spec.allowNonLocalBind: true")),
            ),
            ("allowed", "0.0.0.0:9181", ALLOW, Ok(())),
            ("allowed on a LAN address", "10.1.2.3:9181", ALLOW, Ok(())),
        ];
        for (case, bind, extra, want) in cases {
            let got = load_str("mesh.yaml", &sentences(bind, extra));
            match (got, want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err((line, text))) => {
                    let at = e.location().unwrap_or_else(|| panic!("{case}: {e}"));
                    assert_eq!(
                        (at.file.to_str(), at.line, at.field.as_str()),
                        (Some("mesh.yaml"), line, "spec.outbound[0].bind"),
                        "{case}: {e}"
                    );
                    assert!(e.to_string().contains(text), "{case}: {e}");
                }
                (got, want) => panic!("{case}: got {:?}, want {want:?}", got.map(|_| ())),
            }
        }
    }

    #[test]
    fn peer_authentication_selector_matching_nothing_is_a_warning() {
        let text = format!(
            "{}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: stale, namespace: default }}
spec:
  selector:
    matchLabels: {{ app: gone, version: v1 }}
  mtls: {{ mode: DISABLE }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: default }}
spec: {{ mtls: {{ mode: STRICT }} }}
",
            sentences("127.0.0.1:9181", "")
        );
        let config = load_str("mesh.yaml", &text).expect("a stale selector must not block a load");
        let warnings = config.warnings().join("\n");
        assert!(
            warnings.contains(
                "mesh.yaml:16: spec.selector.matchLabels: PeerAuthentication default/stale: selector {app=gone, version=v1} matches no workload in namespace default"
            ),
            "{warnings}"
        );
        // the rest of the configuration (here a STRICT rollout) takes effect
        let plan = config.plan("sentences").unwrap();
        assert_eq!(plan.inbound[0].mode, MtlsMode::Strict);
        assert_eq!(
            config
                .peer_policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["stale", "default"]
        );
    }
}

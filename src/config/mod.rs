//! Mesh configuration: outrider's own kinds plus Istio's security resources, parsed,
//! validated and resolved into a per-workload [`Plan`].
//!
//! - [`source`] reads files and splits documents, remembering where each starts;
//! - [`resources`] is the YAML schema (strict in `spec`, lenient in `metadata`);
//! - [`load`] turns documents into a validated [`MeshConfig`];
//! - [`peer_authn`] is the pure resolution rule of PeerAuthentication (inbound modes);
//!   `authorization_policy` and `request_authentication` compile AuthorizationPolicy and
//!   RequestAuthentication into the per-port authorizer and authenticator of
//!   [`crate::policy`];
//! - [`hosts`], [`destination_rule`], [`virtual_service`] and [`outbound`] are those of §3:
//!   host names, the TLS a DestinationRule sets, the routes a VirtualService splits, and the
//!   outbound plan that combines them (with auto mTLS);
//! - [`gateway`] is Istio's Gateway and the plan of a gateway workload (`spec.role: gateway`):
//!   its servers by port, with the VirtualService rules bound to them compiled
//!   ([`GatewayPlan`]);
//! - [`check`] is `outrider check`, [`reload`] the watcher that re-plans on change.
//!
//! Loading plans every workload once, so a configuration that loads is one every sidecar of
//! the mesh can run with, and the contradictions found while planning are warnings of the load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::identity::SpiffeId;

mod authorization_policy;
mod capture;
pub mod check;
pub mod destination_rule;
pub mod error;
pub mod gateway;
mod gateway_plan;
pub mod hosts;
mod load;
pub mod outbound;
pub mod peer_authn;
pub mod plan;
pub mod reload;
mod request_authentication;
pub mod resources;
mod scope;
pub mod source;
pub mod virtual_service;

pub use error::{ConfigError, Location};
pub use gateway_plan::*;
pub use plan::*;

use destination_rule::DestinationRule;
use peer_authn::PeerPolicy;
use source::Document;
use virtual_service::VirtualService;

/// Every document of a configuration, loaded and validated.
#[derive(Debug)]
pub struct MeshConfig {
    trust_domain: String,
    root_namespace: String,
    enable_auto_mtls: bool,
    outbound_traffic_policy: OutboundTrafficPolicy,
    workloads: Vec<Workload>,
    peer_policies: Vec<PeerPolicy>,
    authorization_policies: Vec<authorization_policy::AuthzPolicy>,
    request_authentications: Vec<request_authentication::AuthnPolicy>,
    destination_rules: Vec<DestinationRule>,
    virtual_services: Vec<VirtualService>,
    gateways: Vec<gateway::Gateway>,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
}

/// A `Workload` document after validation.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub spiffe_id: SpiffeId,
    pub address: String,
    pub ports: Vec<WorkloadPort>,
    pub outbound: Vec<(SocketAddr, String)>,
    pub sidecar: bool,
    /// `spec.role: gateway`: an ingress gateway (no ports, no outbound entries; planned with a
    /// [`GatewayPlan`]). A gateway runs an outrider proxy, so `sidecar` is true too.
    pub gateway: bool,
    /// X-Forwarded-For entries trusted from the right (`remote.ip`).
    pub num_trusted_proxies: u32,
    pub forward_client_cert: ForwardClientCert,
    /// `spec.capture`: the workload's traffic is captured.
    pub capture: bool,
    pub doc: Document,
}

impl Workload {
    /// Whether the workload carries every label of `selector` (an empty selector selects all).
    pub(crate) fn has_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WorkloadPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

/// Loads a file or a directory (`*.yaml`/`*.yml`, sorted by name; multi-document files
/// allowed), validates every document and plans every workload.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    load::load(&[path.to_path_buf()])
}

/// Loads several files or directories as one configuration, in the order given (each
/// directory's files sorted by name): `outrider check --config mesh.yaml --config strict.yaml`.
pub fn load_paths(paths: &[PathBuf]) -> Result<MeshConfig, ConfigError> {
    load::load(paths)
}

/// Loads configuration text as if read from a file called `file` (tests, tools).
pub fn load_str(file: &str, text: &str) -> Result<MeshConfig, ConfigError> {
    load::load_texts(vec![(PathBuf::from(file), text.to_string())])
}

impl MeshConfig {
    /// The mesh trust domain (`cluster.local` unless the Mesh document says otherwise).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root namespace (mesh-wide policies), `istio-system` by default.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// What the configuration does that outrider ignores or that looks like a mistake:
    /// kinds and fields not acted on, policies that lost a tie, contradictions.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The workloads that run a sidecar, in load order (gateways: [`Self::gateway_names`]).
    pub fn workload_names(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| w.sidecar && !w.gateway)
            .map(|w| w.name.clone())
            .collect()
    }

    /// The workloads declared `sidecar: false` (endpoints only), in load order.
    pub fn sidecarless_workload_names(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| !w.sidecar)
            .map(|w| w.name.clone())
            .collect()
    }

    /// The files the configuration was read from (what the reload watcher polls).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The plan of the sidecar beside `workload`, or of the gateway `workload` (then
    /// `Plan.gateway` is `Some`, `inbound` and `outbound` are empty).
    pub fn plan(&self, workload: &str) -> Result<Plan, ConfigError> {
        let w = self
            .workloads
            .iter()
            .find(|w| w.name == workload)
            .ok_or_else(|| ConfigError::UnknownWorkload {
                name: workload.to_string(),
                known: self
                    .workload_names()
                    .into_iter()
                    .chain(self.gateway_names())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !w.sidecar {
            return Err(ConfigError::NoSidecar(w.name.clone()));
        }
        self.plan_workload(w, &mut Vec::new())
    }

    fn plan_workload(&self, w: &Workload, warnings: &mut Vec<String>) -> Result<Plan, ConfigError> {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            &w.namespace,
            &w.labels,
        );
        for (ignored, level, winner) in &applicable.ties {
            if *level == peer_authn::Level::Workload {
                warnings.push(format!(
                    "{}: PeerAuthentication {}/{} is ignored for workload {}: {}/{} at {} also selects it and comes first in load order",
                    ignored.origin, ignored.namespace, ignored.name, w.name, winner.namespace, winner.name, winner.origin
                ));
            }
        }
        let inbound = w
            .ports
            .iter()
            .map(|p| {
                let decision = peer_authn::resolve(&applicable, p.target_port);
                let authorization = authorization_policy::authorizer(
                    &self.authorization_policies,
                    &self.root_namespace,
                    w,
                    p,
                    decision.mode,
                    warnings,
                );
                let authentication = request_authentication::authenticator(
                    &self.request_authentications,
                    &self.root_namespace,
                    w,
                    p,
                    warnings,
                );
                request_authentication::warn_unauthenticated(
                    &self.authorization_policies,
                    &self.root_namespace,
                    w,
                    p,
                    &authentication,
                    warnings,
                );
                InboundPlan {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: p.target_port,
                    protocol: p.protocol,
                    mode: decision.mode,
                    decided_by: decision.decided_by,
                    authorization,
                    authentication,
                }
            })
            .collect();
        let outbound = w
            .outbound
            .iter()
            .enumerate()
            .map(|(i, (bind, to))| outbound::plan_outbound(self, w, i, *bind, to, warnings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            trust_domain: self.trust_domain.clone(),
            workload: workload_info(w),
            inbound,
            outbound,
            forward_client_cert: w.forward_client_cert,
            capture: capture::plan(self, w, &applicable, warnings),
            gateway: if w.gateway {
                Some(self.plan_gateway(w, warnings)?)
            } else {
                None
            },
            peers: self.workloads.iter().map(workload_info).collect(),
        })
    }

    /// The server-side mode of `w` on its port `p`, as its own sidecar resolves it.
    pub(crate) fn inbound_mode(&self, w: &Workload, p: &WorkloadPort) -> peer_authn::PeerDecision {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            &w.namespace,
            &w.labels,
        );
        peer_authn::resolve(&applicable, p.target_port)
    }

    /// The namespace-level (mesh < namespace) mode of `namespace`.
    pub(crate) fn namespace_mode(&self, namespace: &str) -> MtlsMode {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            namespace,
            &BTreeMap::new(),
        );
        peer_authn::namespace_mode(&applicable)
    }
}

fn workload_info(w: &Workload) -> WorkloadInfo {
    WorkloadInfo {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        service: w.service.clone(),
        version: w.version.clone(),
        labels: w.labels.clone(),
        spiffe_id: w.spiffe_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, namespace: default, labels: { app: sentences } }
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: [{ name: http, port: 8080, targetPort: 9080, protocol: HTTP }]
  outbound:
    - { bind: \"127.0.0.1:9181\", to: \"age.default:http\" }
    - { bind: \"127.0.0.1:9182\", to: \"name.default:http\" }
    - { bind: \"127.0.0.1:9183\", to: \"db:5432\" }
    - { bind: \"127.0.0.1:9184\", to: \"api.example.com:443\" }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports: [{ name: http, port: 8081, targetPort: 9081, protocol: HTTP }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v1, namespace: default, labels: { app: name, version: v1 } }
spec:
  serviceAccount: name
  address: 127.0.0.1
  ports: [{ name: http, port: 8082, targetPort: 9082, protocol: HTTP }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v2, namespace: default, labels: { app: name, version: v2 } }
spec:
  serviceAccount: name-v2
  address: 127.0.0.1
  ports: [{ name: http, port: 8083, targetPort: 9083, protocol: HTTP }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: db, namespace: default }
spec:
  serviceAccount: db
  address: 127.0.0.1
  sidecar: false
  ports: [{ name: tcp, port: 5432 }]
";

    fn config(extra: &str) -> MeshConfig {
        load_str("mesh.yaml", &format!("{APP}---\n{extra}")).unwrap()
    }

    fn pa(ns: &str, name: &str, body: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec: {body}\n---\n")
    }

    fn dr(ns: &str, name: &str, host: &str, body: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n  host: {host}\n{body}\n---\n")
    }

    const NAME_VS: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: name, namespace: default }
spec:
  hosts: [name.default.svc.cluster.local]
  http:
    - route:
        - { destination: { host: name, subset: v1 }, weight: 50 }
        - { destination: { host: name, subset: v2 }, weight: 50 }
---
";

    const NAME_SUBSETS: &str = "  subsets:
    - { name: v1, labels: { version: v1 }, trafficPolicy: { tls: { mode: DISABLE } } }
    - { name: v2, labels: { version: v2 }, trafficPolicy: { tls: { mode: ISTIO_MUTUAL } } }";

    fn tls_modes(plan: &Plan, outbound: usize) -> Vec<(Option<String>, u32, String, String)> {
        plan.outbound[outbound]
            .routes
            .iter()
            .flat_map(|r| {
                r.endpoints.iter().map(move |e| {
                    let mode = match &e.tls {
                        TlsOrigination::Disable => "DISABLE",
                        TlsOrigination::IstioMutual { .. } => "ISTIO_MUTUAL",
                        TlsOrigination::Simple { .. } => "SIMPLE",
                        TlsOrigination::Mutual { .. } => "MUTUAL",
                    };
                    (
                        r.subset.clone(),
                        r.weight,
                        e.workload.clone().unwrap_or_default(),
                        mode.to_string(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn sample_app_name_v1_v2_with_permissive_mesh() {
        let c = config(&format!(
            "{}{}{NAME_VS}",
            pa("istio-system", "default", "{ mtls: { mode: PERMISSIVE } }"),
            dr("default", "name", "name", NAME_SUBSETS)
        ));
        let plan = c.plan("sentences").unwrap();
        assert_eq!(plan.inbound[0].mode, MtlsMode::Permissive);
        assert_eq!(
            tls_modes(&plan, 1),
            vec![
                (Some("v1".into()), 50, "name-v1".into(), "DISABLE".into()),
                (
                    Some("v2".into()),
                    50,
                    "name-v2".into(),
                    "ISTIO_MUTUAL".into()
                ),
            ]
        );
        let e = &plan.outbound[1].routes[1].endpoints[0];
        assert_eq!(e.decided_by, "DestinationRule default/name subset v2");
        // secure naming: every service account of the service, sorted
        let TlsOrigination::IstioMutual { allowed_ids, sni } = &e.tls else {
            panic!()
        };
        let ids: Vec<String> = allowed_ids.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://cluster.local/ns/default/sa/name",
                "spiffe://cluster.local/ns/default/sa/name-v2"
            ]
        );
        assert_eq!(sni, "outbound_.8083_.v2_.name.default.svc.cluster.local");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn subset_tls_needs_a_route() {
        let c = config(&dr("default", "name", "name", NAME_SUBSETS));
        let plan = c.plan("sentences").unwrap();
        assert_eq!(
            tls_modes(&plan, 1),
            vec![
                (None, 100, "name-v1".into(), "ISTIO_MUTUAL".into()),
                (None, 100, "name-v2".into(), "ISTIO_MUTUAL".into()),
            ]
        );
        assert_eq!(
            plan.outbound[1].decided_by,
            "default route (no VirtualService)"
        );
        assert_eq!(
            plan.outbound[1].routes[0].endpoints[0].decided_by,
            "auto mTLS: endpoint has a sidecar"
        );
    }

    #[test]
    fn auto_mtls_per_endpoint() {
        let c = config(&pa(
            "default",
            "v1-off",
            "{ selector: { matchLabels: { version: v1 } }, mtls: { mode: DISABLE } }",
        ));
        let plan = c.plan("sentences").unwrap();
        assert_eq!(
            tls_modes(&plan, 1),
            vec![
                (None, 100, "name-v1".into(), "DISABLE".into()),
                (None, 100, "name-v2".into(), "ISTIO_MUTUAL".into()),
            ]
        );
        // the sidecar-less database gets plaintext
        assert_eq!(
            tls_modes(&plan, 2),
            vec![(None, 100, "db".into(), "DISABLE".into())]
        );
        assert_eq!(
            plan.outbound[2].routes[0].endpoints[0].decided_by,
            "auto mTLS: endpoint has no sidecar (plaintext)"
        );
        assert_eq!(plan.outbound[2].routes[0].endpoints[0].port, 5432);
    }

    #[test]
    fn explicit_tls_applies_to_every_endpoint_and_warns_on_contradictions() {
        let c = config(&format!(
            "{}{}{}",
            pa("default", "default", "{ mtls: { mode: STRICT } }"),
            dr(
                "default",
                "db",
                "db",
                "  trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }"
            ),
            dr(
                "default",
                "age",
                "age.default",
                "  trafficPolicy: { tls: { mode: DISABLE } }"
            ),
        ));
        let plan = c.plan("sentences").unwrap();
        assert_eq!(tls_modes(&plan, 2)[0].3, "ISTIO_MUTUAL");
        assert_eq!(tls_modes(&plan, 0)[0].3, "DISABLE");
        let w = c.warnings().join("\n");
        assert!(w.contains("DestinationRule default/age sends plaintext to 127.0.0.1:8081 (workload age), whose mode is STRICT"), "{w}");
        assert!(w.contains("DestinationRule default/db sends ISTIO_MUTUAL to 127.0.0.1:5432 (workload db), which has no sidecar"), "{w}");
    }

    #[test]
    fn port_level_settings_replace_the_rule_policy() {
        let c = config(&dr(
            "default",
            "name",
            "name.default.svc.cluster.local",
            "  trafficPolicy:
    tls: { mode: DISABLE }
    portLevelSettings:
      - port: { number: 8083 }
        loadBalancer: { simple: ROUND_ROBIN }",
        ));
        let plan = c.plan("sentences").unwrap();
        let modes = tls_modes(&plan, 1);
        assert_eq!(modes[0].3, "DISABLE"); // name-v1 on 8082: rule-level tls
        assert_eq!(modes[1].3, "ISTIO_MUTUAL"); // 8083: the port entry has no tls ⇒ auto mTLS
        assert!(c.warnings().iter().any(|w| w.contains("not acted on")));
    }

    #[test]
    fn destination_rule_lookup_order_and_wildcards() {
        // S3: mesh-wide wildcard rule in the root namespace; a client-namespace rule wins.
        let c = config(&format!(
            "{}{}",
            dr(
                "istio-system",
                "all",
                "\"*.default.svc.cluster.local\"",
                "  trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }"
            ),
            dr(
                "default",
                "age",
                "age",
                "  trafficPolicy: { tls: { mode: DISABLE } }"
            ),
        ));
        let plan = c.plan("sentences").unwrap();
        assert_eq!(
            plan.outbound[0].routes[0].endpoints[0].decided_by,
            "DestinationRule default/age"
        );
        assert_eq!(tls_modes(&plan, 0)[0].3, "DISABLE");
        assert_eq!(
            plan.outbound[1].routes[0].endpoints[0].decided_by,
            "DestinationRule istio-system/all"
        );
        assert_eq!(tls_modes(&plan, 1)[0].3, "ISTIO_MUTUAL");
    }

    #[test]
    fn egress_defaults_to_plaintext_and_follows_its_rule() {
        let plan = config("").plan("sentences").unwrap();
        assert!(!plan.outbound[3].destination.in_mesh);
        assert_eq!(tls_modes(&plan, 3)[0].3, "DISABLE");
        let c = config(&dr(
            "default",
            "example",
            "api.example.com",
            "  trafficPolicy: { tls: { mode: SIMPLE, caCertificates: certs/ca.pem, sni: api.example.com } }",
        ));
        let plan = c.plan("sentences").unwrap();
        let e = &plan.outbound[3].routes[0].endpoints[0];
        assert_eq!((e.host.as_str(), e.port), ("api.example.com", 443));
        assert_eq!(
            e.tls,
            TlsOrigination::Simple {
                ca_certificates: Some(PathBuf::from("certs/ca.pem")),
                subject_alt_names: vec![],
                sni: Some("api.example.com".into()),
                insecure_skip_verify: false,
            }
        );
    }

    #[test]
    fn policy_warnings() {
        let c = config(&format!(
            "{}{}{}",
            pa("default", "a", "{ mtls: { mode: STRICT } }"),
            pa("default", "b", "{ mtls: { mode: DISABLE } }"),
            pa(
                "istio-system",
                "age",
                "{ selector: { matchLabels: { app: age } }, mtls: { mode: DISABLE } }"
            ),
        ));
        let w = c.warnings().join("\n");
        assert!(
            w.contains("PeerAuthentication default/b is ignored: default/a at mesh.yaml:"),
            "{w}"
        );
        assert!(
            w.contains("PeerAuthentication istio-system/age has a selector in the root namespace"),
            "{w}"
        );
        assert_eq!(c.plan("age").unwrap().inbound[0].mode, MtlsMode::Strict);
    }

    #[test]
    fn empty_subset_and_ignored_kinds_warn() {
        let c = config(&format!(
            "{}apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{ name: jwt }}\nspec: {{}}\n",
            dr("default", "name", "name", "  subsets: [{ name: v3, labels: { version: v3 } }]"),
        ));
        let w = c.warnings().join("\n");
        assert!(
            w.contains(
                "spec.subsets[0]: subset v3 of DestinationRule default/name matches no workload"
            ),
            "{w}"
        );
        assert!(
            w.contains("Telemetry jwt is not acted on by outrider yet"),
            "{w}"
        );
    }

    #[test]
    fn sidecarless_workloads_have_no_plan() {
        let c = config("");
        assert_eq!(
            c.workload_names(),
            ["sentences", "age", "name-v1", "name-v2"]
        );
        assert!(matches!(c.plan("db"), Err(ConfigError::NoSidecar(_))));
    }

    #[test]
    fn custom_trust_domain() {
        let c = load_str(
            "mesh.yaml",
            &format!("apiVersion: outrider.dev/v1alpha1\nkind: Mesh\nmetadata: {{ name: mesh }}\nspec: {{ trustDomain: example.org, rootNamespace: mesh-root }}\n---\n{APP}---\n{}",
                pa("mesh-root", "default", "{ mtls: { mode: STRICT } }")),
        )
        .unwrap();
        let plan = c.plan("age").unwrap();
        assert_eq!(
            plan.workload.spiffe_id.to_string(),
            "spiffe://example.org/ns/default/sa/age"
        );
        assert_eq!(plan.inbound[0].mode, MtlsMode::Strict);
        assert_eq!(
            c.normalize_host("age.default.svc.example.org", "x"),
            "age.default.svc.cluster.local"
        );
    }
}

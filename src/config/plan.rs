//! The resolved, immutable per-workload plan: everything the data path needs to know about
//! one sidecar's listeners, already decided. The data path never sees YAML; it sees a `Plan`.
//!
//! Every decision carries the resource that made it (`decided_by`), so `outrider check`, the
//! admin `/config_dump` and logs can answer "why is this port STRICT?".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::identity::SpiffeId;
use crate::policy::authz::Authorizer;
use crate::policy::jwt::{Authenticator, Keys};

/// One sidecar's view of the mesh.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The mesh trust domain (`cluster.local` by default).
    pub trust_domain: String,
    /// Who this sidecar is.
    pub workload: WorkloadInfo,
    /// One entry per workload port: the sidecar listens on `port`, the app on `target_port`.
    pub inbound: Vec<InboundPlan>,
    /// One entry per `outbound` entry of the workload.
    pub outbound: Vec<OutboundPlan>,
    /// What inbound HTTP requests tell the app about an mTLS client (XFCC).
    pub forward_client_cert: ForwardClientCert,
    /// What the capture listeners (`outrider run --capture`) need: every service by the
    /// addresses that reach it, and the inbound rule for undeclared ports.
    pub capture: CapturePlan,
    /// The gateway's servers and routes (`spec.role: gateway` workloads only).
    pub gateway: Option<super::GatewayPlan>,
    /// Every workload of the mesh (this one included): who is behind a peer's SPIFFE ID, for
    /// the metrics' source/destination labels (no control plane exchanges this metadata).
    #[serde(skip)]
    pub peers: Vec<WorkloadInfo>,
}

/// The identity and labels of the workload a sidecar runs beside.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The canonical service: the `app` label, else the workload name.
    pub service: String,
    /// The `version` label, else `latest` (Istio's canonical revision default).
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`.
    pub spiffe_id: SpiffeId,
}

/// Server-side mTLS mode after PeerAuthentication resolution (UNSET never survives resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Plaintext only; TLS is forwarded to the app untouched.
    Disable,
    /// Mesh mTLS and plaintext on the same port.
    Permissive,
    /// Mesh mTLS only; plaintext is reset.
    Strict,
}

/// The application protocol declared for a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Tcp,
    Http,
    Http2,
    Grpc,
    Tls,
}

impl Protocol {
    /// HTTP, HTTP2 and GRPC ports are handled at L7; TCP and TLS move bytes.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// What the sidecar does with `x-forwarded-client-cert` on inbound HTTP requests (Istio's
/// `ForwardClientCertDetails`; SEMANTICS §8). On a connection that is not mTLS, the client's
/// header is removed in every mode but `AlwaysForwardOnly`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCert {
    /// Remove the header.
    Sanitize,
    /// Pass the client's header on mTLS, add nothing.
    ForwardOnly,
    /// Append this hop's element to the client's header (the sidecar default).
    #[default]
    AppendForward,
    /// Replace the client's header by this hop's element.
    SanitizeSet,
    /// Never touch the header, even on plaintext.
    AlwaysForwardOnly,
}

/// One inbound listener.
#[derive(Debug, Clone, Serialize)]
pub struct InboundPlan {
    /// The port's name (`http`).
    pub name: String,
    /// Where the sidecar listens (the workload's `port`).
    pub port: u16,
    /// Where the app listens on 127.0.0.1 (the workload's `targetPort`).
    pub target_port: u16,
    pub protocol: Protocol,
    pub mode: MtlsMode,
    /// The resource that decided `mode`, e.g. `PeerAuthentication istio-system/default (mesh)`,
    /// `PeerAuthentication default/age portLevelMtls[9080]`, or `default (no policy)`.
    pub decided_by: String,
    /// The AuthorizationPolicies that apply to this port, compiled (serialized as the list of
    /// policies and a fingerprint of their rules, so a reload notices a changed rule).
    #[serde(
        rename = "authorization_policies",
        serialize_with = "authorization_summary"
    )]
    pub authorization: Arc<Authorizer>,
    /// The RequestAuthentication rules that apply to this port (HTTP ports only), compiled
    /// (serialized as the list of providers and a fingerprint).
    #[serde(
        rename = "request_authentication",
        serialize_with = "authentication_summary"
    )]
    pub authentication: Arc<Authenticator>,
}

fn authentication_summary<S: serde::Serializer>(
    a: &Arc<Authenticator>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Provider<'a> {
        origin: &'a str,
        issuer: &'a str,
        keys: String,
    }
    #[derive(Serialize)]
    struct Summary<'a> {
        providers: Vec<Provider<'a>>,
        fingerprint: String,
    }
    Summary {
        providers: a
            .providers()
            .iter()
            .map(|p| Provider {
                origin: &p.origin,
                issuer: &p.issuer,
                keys: keys_text(&p.keys),
            })
            .collect(),
        fingerprint: format!("{:016x}", a.fingerprint()),
    }
    .serialize(s)
}

/// Where a provider's keys come from, for people (`inline jwks (2 keys)`,
/// `jwksUri https://...`).
pub fn keys_text(keys: &Keys) -> String {
    match keys {
        Keys::Inline(set) => format!(
            "inline jwks ({} key{})",
            set.len(),
            if set.len() == 1 { "" } else { "s" }
        ),
        Keys::Remote { source, .. } => source.to_string(),
    }
}

fn authorization_summary<S: serde::Serializer>(
    a: &Arc<Authorizer>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Applied<'a> {
        name: &'a str,
        action: &'a str,
        dry_run: bool,
    }
    #[derive(Serialize)]
    struct Summary<'a> {
        policies: Vec<Applied<'a>>,
        fingerprint: String,
    }
    Summary {
        policies: a
            .applied()
            .iter()
            .map(|p| Applied {
                name: &p.name,
                action: p.action.as_str(),
                dry_run: p.dry_run,
            })
            .collect(),
        fingerprint: format!("{:016x}", a.fingerprint()),
    }
    .serialize(s)
}

/// Transparent capture (SEMANTICS §10): where captured connections go.
#[derive(Debug, Clone, Serialize)]
pub struct CapturePlan {
    /// Whether the workload says it is captured (`spec.capture`); `--capture` captures
    /// regardless.
    pub declared: bool,
    /// What an outbound connection to an address no service has gets.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Every port of every service of the mesh, routed as an `outbound` entry to it would
    /// be. A captured connection to one of `addresses` is sent along `route`.
    pub services: Vec<CapturedService>,
    /// An inbound connection to a port the workload does not declare: the workload-level
    /// mode, carried as TCP to the app on the port it was headed for (`port` and
    /// `target_port` are 0: "the original port").
    pub undeclared: InboundPlan,
}

/// One service port as captured outbound traffic finds it.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedService {
    /// `(host, port)` of every member workload: its `address` (a name, resolved by the data
    /// path, or an IP) and its `port`.
    pub addresses: Vec<(String, u16)>,
    pub route: OutboundPlan,
}

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Pass the connection through to where it was going, in plaintext
    /// (`destination_service="PassthroughCluster"`).
    #[default]
    AllowAny,
    /// Refuse it (`destination_service="BlackHoleCluster"`).
    RegistryOnly,
}

/// One outbound listener: the app connects to `bind` in plaintext; the sidecar carries the
/// connection to `to`.
#[derive(Debug, Clone, Serialize)]
pub struct OutboundPlan {
    pub bind: SocketAddr,
    /// As written in the configuration (`name.default:http` or `db.example.com:5432`).
    pub to: String,
    pub destination: Destination,
    /// Weighted routes (from a VirtualService, else one route of weight 100 over every
    /// endpoint). Weights are relative; a route with weight 0 receives nothing.
    pub routes: Vec<Route>,
    /// Which resources decided the routes (`VirtualService default/name`, or `default route`).
    pub decided_by: String,
}

/// Where an outbound entry goes.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    /// `name.default.svc.cluster.local` for mesh services, the host for external ones.
    pub host: String,
    /// The service name (`name`) for mesh services; `None` outside the mesh.
    pub service: Option<String>,
    pub namespace: Option<String>,
    /// The service port number (the workloads' `port`) for mesh services, the port otherwise.
    pub port: u16,
    /// True when `to` named a service of the mesh.
    pub in_mesh: bool,
    /// The destination port's protocol (`TCP` outside the mesh): HTTP, HTTP2 and GRPC are
    /// carried at L7 between sidecars.
    pub protocol: Protocol,
}

/// A share of an outbound entry's traffic sent to one subset (or to the whole service).
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// DestinationRule subset name; `None` = every endpoint of the service.
    pub subset: Option<String>,
    pub weight: u32,
    /// Tried round-robin; the next one when one refuses.
    pub endpoints: Vec<Endpoint>,
}

/// One upstream endpoint with the TLS its connection uses.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// The workload name in the mesh, or `None` for an external host.
    pub workload: Option<String>,
    /// Host name or IP literal to connect to.
    pub host: String,
    pub port: u16,
    pub tls: TlsOrigination,
    /// What decided `tls`: `DestinationRule default/name subset v1`, `auto mTLS (sidecar)`,
    /// `auto mTLS (no sidecar: plaintext)`, ...
    pub decided_by: String,
}

/// The TLS a client sidecar originates towards an endpoint (DestinationRule `tls.mode`
/// after auto-mTLS resolution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsOrigination {
    /// Plaintext.
    Disable,
    /// Mesh mTLS with the workload's own SVID; the server must present one of
    /// `allowed_ids` (secure naming). `sni` defaults to `outbound_.<port>_.<subset>_.<fqdn>`.
    IstioMutual {
        allowed_ids: Vec<SpiffeId>,
        sni: String,
    },
    /// One-way TLS verified against `ca_certificates` (None = no trust configured: refuse).
    Simple {
        ca_certificates: Option<PathBuf>,
        subject_alt_names: Vec<String>,
        sni: Option<String>,
        insecure_skip_verify: bool,
    },
    /// TLS with a client certificate from files.
    Mutual {
        client_certificate: PathBuf,
        private_key: PathBuf,
        ca_certificates: Option<PathBuf>,
        subject_alt_names: Vec<String>,
        sni: Option<String>,
        insecure_skip_verify: bool,
    },
}

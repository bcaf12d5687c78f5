//! The resolved plan of an ingress gateway (`outrider gateway`, a Workload with `spec.role:
//! gateway`): every Gateway server that selects it, grouped by port, with the VirtualService
//! rules bound to each server already compiled (matches, actions, destinations planned as
//! outbound routes into the mesh). The gateway's data path reads only these types.
//!
//! Rules of SEMANTICS.md §6 (server TLS) and Istio's Gateway/VirtualService reference.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::plan::OutboundPlan;
use crate::policy::authz::Authorizer;
use crate::policy::jwt::Authenticator;

/// Every listener of a gateway.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayPlan {
    /// One entry per distinct server `port.number`, in ascending port order.
    pub ports: Vec<GatewayPortPlan>,
}

/// One listening port and the servers on it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayPortPlan {
    pub port: u16,
    /// The servers on this port, in load order. Either all terminate or pass TLS (HTTPS, TLS,
    /// or HTTP with `tls` set) and are chosen by SNI, or all are plaintext (HTTP, HTTP2, GRPC,
    /// TCP) and HTTP ones are chosen by the request's authority.
    pub servers: Vec<GatewayServer>,
    /// AuthorizationPolicies selecting the gateway workload, for this port.
    #[serde(skip)]
    pub authorization: Arc<Authorizer>,
    /// RequestAuthentications selecting the gateway workload, for this port.
    #[serde(skip)]
    pub authentication: Arc<Authenticator>,
}

impl GatewayPortPlan {
    /// Whether connections to this port start with a TLS ClientHello.
    pub fn is_tls(&self) -> bool {
        self.servers.iter().any(|s| s.tls.is_some())
    }
}

/// One `servers[]` entry of a Gateway.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayServer {
    /// `<gateway namespace>/<gateway name>`.
    pub gateway: String,
    /// `port.name` when given, else `<namespace>/<name>/servers[<i>]`; names the server in
    /// logs, metrics (`server` label) and `/certs`.
    pub name: String,
    pub protocol: GatewayProtocol,
    /// Host patterns without their namespace part: `*`, `*.example.com`, `example.com`.
    pub hosts: Vec<String>,
    /// `None` for plaintext servers (no `tls`, or only `httpsRedirect`).
    pub tls: Option<ServerTls>,
    /// `tls.httpsRedirect`: every HTTP request gets a 301 to `https://`.
    pub https_redirect: bool,
    /// HTTP rules of the bound VirtualServices, in order (VirtualServices in load order,
    /// rules in file order). Unmatched requests get 404.
    pub http: Vec<HttpRule>,
    /// `tls[]` rules (PASSTHROUGH servers), matched by SNI.
    pub tls_routes: Vec<L4Rule>,
    /// `tcp[]` rules (TCP servers and TLS servers that terminate).
    pub tcp: Vec<L4Rule>,
}

/// `port.protocol` of a Gateway server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GatewayProtocol {
    Http,
    Https,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl GatewayProtocol {
    /// HTTP, HTTPS, HTTP2 and GRPC servers route requests (`http[]`); TCP and TLS move bytes.
    pub fn is_http(self) -> bool {
        !matches!(self, GatewayProtocol::Tcp | GatewayProtocol::Tls)
    }
}

/// `tls` of a Gateway server (SEMANTICS §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// The certificate served (SIMPLE, MUTUAL, OPTIONAL_MUTUAL); `None` otherwise.
    pub certificate: Option<CertificateSource>,
    /// The CA client certificates are verified against (MUTUAL, OPTIONAL_MUTUAL).
    pub ca_certificates: Option<CaSource>,
    /// A client certificate must carry one of these as DNS or URI SAN (empty: any).
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: TlsVersion,
    pub max_protocol_version: TlsVersion,
    /// OpenSSL-style names as written (`ECDHE-RSA-AES128-GCM-SHA256`); empty: the defaults.
    /// Only TLS 1.2 suites are selectable, as in Envoy.
    pub cipher_suites: Vec<String>,
}

/// `tls.mode` of a Gateway server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Route by SNI without terminating.
    Passthrough,
    /// One-way TLS.
    Simple,
    /// A client certificate is required and verified.
    Mutual,
    /// A client certificate is requested and verified when sent.
    OptionalMutual,
    /// The gateway's own SVID; mesh clients only.
    IstioMutual,
}

/// Where a server's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CertificateSource {
    /// `serverCertificate` + `privateKey` (paths, relative ones already resolved against the
    /// configuration file's directory).
    Files {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// `credentialName`: `<--credentials-dir>/<name>/` with `tls.crt`+`tls.key` or
    /// `cert`+`key` (SEMANTICS §6), resolved by the gateway at run time.
    Credential { name: String },
}

/// Where a server's client CA comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CaSource {
    /// `caCertificates` (and `caCrl`, accepted, not enforced yet) paths.
    Files {
        ca_certificates: PathBuf,
        ca_crl: Option<PathBuf>,
    },
    /// From `credentialName`: the `<name>-cacert` directory when it exists, else `<name>`;
    /// key `ca.crt` or `cacert`.
    Credential { name: String },
}

/// `minProtocolVersion` / `maxProtocolVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSV1_2")]
    Tls12,
    #[serde(rename = "TLSV1_3")]
    Tls13,
}

/// One `http[]` rule of a VirtualService bound to a server.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRule {
    /// `VirtualService <ns>/<name> http[<i>]` (+ ` (<name>)` when the rule is named).
    pub origin: String,
    /// The `hosts` of the rule's VirtualService (as written, namespace-less, e.g.
    /// `sentences.example.com`, `*.example.com`, `*`). A request is routed by the rules of
    /// the VirtualServices whose hosts match its authority most specifically (Envoy's virtual
    /// host choice), then by the first matching rule among those.
    pub hosts: Vec<String>,
    /// Any one matching is enough; empty matches every request.
    pub matches: Vec<HttpMatch>,
    pub action: HttpAction,
    /// The rule's `headers`: request edits before forwarding, response edits after.
    pub headers: HeaderEdits,
}

/// One `match[]` entry: every condition given must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// Lower-case header names. A header listed with an empty `StringMatch` (`{}`) must be
    /// present.
    pub headers: Vec<(String, StringMatch)>,
    /// Headers that must not match (`withoutHeaders`).
    pub without_headers: Vec<(String, StringMatch)>,
    /// The gateway port the request arrived on.
    pub port: Option<u16>,
    pub query_params: Vec<(String, StringMatch)>,
    /// `ignoreUriCase`: exact and prefix `uri` compare case-insensitively.
    pub ignore_uri_case: bool,
}

/// Istio's StringMatch. Regexes are RE2 syntax, matched against the whole value.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "regex_text")] Arc<regex::Regex>),
    /// `{}`: present, any value.
    Present,
}

fn regex_text<S: serde::Serializer>(r: &Arc<regex::Regex>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// What a matched rule does.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HttpAction {
    /// Forward into the mesh.
    Route(HttpRouteAction),
    /// Answer with a redirect (`redirect`).
    Redirect(Redirect),
    /// Answer locally (`directResponse`).
    DirectResponse { status: u16, body: Option<String> },
}

/// `route[]` and what goes with it.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRouteAction {
    /// Weighted destinations (weights relative; 0 receives nothing).
    pub destinations: Vec<WeightedDestination>,
    pub rewrite: Option<Rewrite>,
    /// `timeout`: the whole request including retries; `None`: no timeout (Istio's default).
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
}

/// One `route[]` entry: the destination planned as an outbound route from the gateway
/// (endpoints, subset, TLS: ISTIO_MUTUAL to sidecars, DestinationRules applied).
#[derive(Debug, Clone, Serialize)]
pub struct WeightedDestination {
    pub weight: u32,
    /// `bind` is unspecified (0.0.0.0:0): the gateway has no listener per destination.
    pub plan: OutboundPlan,
    /// The destination's own `headers` edits.
    pub headers: HeaderEdits,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rewrite {
    /// Replaces the matched prefix (for a `prefix` uri match) or the whole path (otherwise).
    pub uri: Option<String>,
    pub authority: Option<String>,
}

/// `redirect`.
#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    /// Replaces the whole path (query kept).
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    /// `redirectCode`, default 301.
    pub status: u16,
}

/// `retries` (Istio's default when absent: 2 attempts on connect-failure, refused-stream,
/// unavailable, cancelled, retriable-status-codes).
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try (0: none).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` conditions as written (`5xx`, `gateway-error`, `connect-failure`,
    /// `refused-stream`, `reset`, `retriable-4xx`, ...; gRPC ones too) plus status codes.
    pub retry_on: Vec<String>,
}

/// `headers`: `request` and `response` edits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderEdits {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// `set` (replace), `add` (append), `remove`, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// One `tls[]` or `tcp[]` rule.
#[derive(Debug, Clone, Serialize)]
pub struct L4Rule {
    pub origin: String,
    /// `tls[].match[].sniHosts` (all of the rule's matches together); empty for `tcp[]` or
    /// a match without SNI: any.
    pub sni_hosts: Vec<String>,
    /// `match[].port`: any when `None`.
    pub port: Option<u16>,
    pub destinations: Vec<WeightedDestination>,
}

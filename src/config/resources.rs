//! The YAML schema, as users write it: outrider's `Mesh` and `Workload` kinds and the parts of
//! Istio's `PeerAuthentication`, `AuthorizationPolicy`, `RequestAuthentication`,
//! `DestinationRule`, `VirtualService` and `Gateway` that outrider reads.
//!
//! Strict in `spec` (`deny_unknown_fields`: a typo is an error, not a silently ignored line),
//! lenient in `metadata` (users carry annotations, uids, timestamps from `kubectl get -o yaml`).
//! Fields of Istio resources that outrider accepts but does not act on yet are typed as raw
//! YAML values and reported as warnings by the loader.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The envelope shared by every kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<S> {
    #[allow(dead_code)]
    pub api_version: String,
    #[allow(dead_code)]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Option<S>,
    /// Present in `kubectl get -o yaml` output; ignored.
    #[allow(dead_code)]
    pub status: Option<Value>,
}

/// Kubernetes object metadata; fields other than these are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Read by kinds that act on one (`istio.io/dry-run`); any value accepted otherwise.
    #[serde(default)]
    pub annotations: BTreeMap<String, Value>,
}

/// `kind: Mesh` (outrider.dev/v1alpha1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    pub trust_domain: Option<String>,
    pub root_namespace: Option<String>,
    pub enable_auto_mtls: Option<bool>,
    /// Istio's `outboundTrafficPolicy`: what a captured connection to a destination outside
    /// the mesh's registry gets.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
}

/// `outboundTrafficPolicy` of the `Mesh` document, as Istio's MeshConfig spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicySpec {
    #[serde(default)]
    pub mode: OutboundTrafficModeSpec,
}

/// `ALLOW_ANY` (Istio's default): passed through in plaintext; `REGISTRY_ONLY`: refused.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficModeSpec {
    #[default]
    AllowAny,
    RegistryOnly,
}

/// `kind: Workload` (outrider.dev/v1alpha1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub service_account: String,
    pub address: String,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub outbound: Vec<OutboundSpec>,
    /// `false` for workloads without a sidecar (databases, not-yet-migrated services).
    #[serde(default = "yes")]
    pub sidecar: bool,
    /// Lets `outbound[].bind` be off loopback. Off by default: an outbound listener carries
    /// whoever connects into the mesh with this workload's identity.
    #[serde(default)]
    pub allow_non_local_bind: bool,
    /// Proxies in front of this workload whose X-Forwarded-For entries are trusted (Istio's
    /// `gatewayTopology.numTrustedProxies`): `remoteIpBlocks` / `remote.ip` read the client
    /// address from them. 0 (default): the TCP peer is the client.
    pub num_trusted_proxies: Option<u32>,
    /// What inbound HTTP requests tell the app about an mTLS client
    /// (`x-forwarded-client-cert`); Istio's `forwardClientCertDetails`, default
    /// `APPEND_FORWARD`.
    pub forward_client_cert_details: Option<ForwardClientCertSpec>,
    /// The workload's traffic is captured (`outrider iptables` in its network namespace, its
    /// sidecar started with `--capture`): the app listens on its own `port` on any address
    /// and calls other services at their addresses; `outrider check` shows the capture map.
    #[serde(default)]
    pub capture: bool,
    /// `sidecar` (default): a proxy beside an app; `gateway`: an ingress gateway
    /// (`outrider gateway`) listening on the ports of the Gateway servers that select it.
    #[serde(default)]
    pub role: RoleSpec,
}

/// `spec.role` of a Workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleSpec {
    #[default]
    Sidecar,
    Gateway,
}

/// Istio's `ForwardClientCertDetails` enum, as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertSpec {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub name: String,
    pub port: u32,
    pub target_port: Option<u32>,
    #[serde(default)]
    pub protocol: ProtocolSpec,
}

/// Istio's port protocol names (upper case, as in Istio's Service port naming).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProtocolSpec {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
    Tls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundSpec {
    pub bind: String,
    pub to: String,
}

/// `PeerAuthentication` (security.istio.io v1beta1 and v1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<Selector>,
    pub mtls: Option<PeerMtls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerMtls {
    #[serde(default)]
    pub mode: PeerMode,
}

/// `mtls.mode` as written, UNSET included (it inherits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// `AuthorizationPolicy` (security.istio.io v1beta1 and v1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<Selector>,
    /// Gateways and waypoints only; a sidecar ignores the policy.
    pub target_ref: Option<Value>,
    pub target_refs: Option<Vec<Value>>,
    #[serde(default)]
    pub action: AuthzActionSpec,
    pub provider: Option<ExtensionProvider>,
    pub rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzActionSpec {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub from: Option<Vec<FromSpec>>,
    pub to: Option<Vec<ToSpec>>,
    pub when: Option<Vec<ConditionSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    pub source: Option<SourceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    pub operation: Option<OperationSpec>,
}

/// `rules[].from[].source`: each field is a list of values; `not*` twins match when none does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
}

/// `rules[].to[].operation`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `rules[].when[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// `RequestAuthentication` (security.istio.io v1beta1 and v1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    pub selector: Option<Selector>,
    /// Gateways and waypoints only; a sidecar ignores the policy.
    pub target_ref: Option<Value>,
    pub target_refs: Option<Vec<Value>>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRuleSpec>,
}

/// `jwtRules[]`: one token issuer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRuleSpec {
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeaderSpec>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// JWKS fetch timeout in outrider's duration syntax (`5s`, `500ms`).
    pub timeout: Option<String>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeaderSpec {
    pub name: String,
    #[serde(default)]
    pub prefix: String,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub header: String,
    pub claim: String,
}

/// `DestinationRule` (networking.istio.io v1alpha3, v1beta1, v1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted, not acted on (outrider has one sidecar view per workload).
    pub workload_selector: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub tls: Option<ClientTls>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub load_balancer: Option<Value>,
    pub connection_pool: Option<Value>,
    pub outlier_detection: Option<Value>,
    pub tunnel: Option<Value>,
    pub proxy_protocol: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: PortSelector,
    pub tls: Option<ClientTls>,
    pub load_balancer: Option<Value>,
    pub connection_pool: Option<Value>,
    pub outlier_detection: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy.tls` (ClientTLSSettings).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTls {
    #[serde(default)]
    pub mode: ClientTlsMode,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

/// `VirtualService` (networking.istio.io): routes for the mesh (sidecars) and for gateways.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One `http` rule. A sidecar acts on `route` only; a gateway on every field typed here (the
/// ones kept as raw values are accepted with a warning).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Option<Vec<HttpMatchSpec>>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    pub redirect: Option<RedirectSpec>,
    pub direct_response: Option<DirectResponseSpec>,
    pub delegate: Option<Value>,
    pub rewrite: Option<RewriteSpec>,
    /// Istio duration (`10s`, `1.5s`, `500ms`); `0s` = no timeout.
    pub timeout: Option<String>,
    pub retries: Option<RetriesSpec>,
    pub fault: Option<Value>,
    pub mirror: Option<Value>,
    pub mirrors: Option<Value>,
    pub mirror_percentage: Option<Value>,
    pub cors_policy: Option<Value>,
    pub headers: Option<HeadersSpec>,
}

/// `http[].match[]` (HTTPMatchRequest).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchSpec {
    pub name: Option<String>,
    pub uri: Option<StringMatchSpec>,
    pub scheme: Option<StringMatchSpec>,
    pub method: Option<StringMatchSpec>,
    pub authority: Option<StringMatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatchSpec>,
    pub port: Option<u32>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub stat_prefix: Option<String>,
}

/// Istio's StringMatch: one of `exact`, `prefix`, `regex`; none (`{}`) = present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// `http[].redirect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectSpec {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
}

/// `http[].directResponse`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    pub status: u32,
    pub body: Option<HttpBodySpec>,
}

/// `directResponse.body`: `string`, or `bytes` (base64).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBodySpec {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

/// `http[].rewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RewriteSpec {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<Value>,
}

/// `http[].retries`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetriesSpec {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<Value>,
    pub retry_ignore_previous_hosts: Option<Value>,
    pub backoff: Option<Value>,
}

/// `headers` of a rule or of a destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    pub request: Option<HeaderOperationsSpec>,
    pub response: Option<HeaderOperationsSpec>,
}

/// `headers.request` / `headers.response`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperationsSpec {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One `tcp` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Option<Vec<L4MatchSpec>>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `tcp[].match[]` (L4MatchAttributes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchSpec {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
    pub source_subnet: Option<String>,
}

/// One `tls` rule (routing TLS that is not terminated, by SNI).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<TlsMatchSpec>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `tls[].match[]` (TLSMatchAttributes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatchSpec {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: DestinationSpec,
    pub weight: Option<u32>,
    pub headers: Option<HeadersSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

/// `Gateway` (networking.istio.io v1alpha3, v1beta1, v1): the servers of an ingress gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Labels of the gateway workloads it configures (in any namespace, Istio's default).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

/// `servers[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub port: GatewayPortSpec,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub bind: Option<String>,
    pub name: Option<String>,
    pub default_endpoint: Option<String>,
    pub tls: Option<ServerTlsSpec>,
}

/// `servers[].port`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayPortSpec {
    pub number: u32,
    pub name: Option<String>,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `TCP`, `TLS` (any case, as Istio reads it).
    pub protocol: String,
    pub target_port: Option<u32>,
}

/// `servers[].tls` (ServerTLSSettings). The fields outrider refuses are raw values, so that
/// the error can name them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSpec {
    #[serde(default)]
    pub https_redirect: bool,
    pub mode: Option<ServerTlsModeSpec>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    pub credential_names: Option<Value>,
    pub tls_certificates: Option<Value>,
    pub ca_cert_credential_name: Option<Value>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Option<Value>,
    pub verify_certificate_hash: Option<Value>,
    pub insecure_skip_verify: Option<Value>,
    pub min_protocol_version: Option<TlsVersionSpec>,
    pub max_protocol_version: Option<TlsVersionSpec>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// `tls.mode` of a Gateway server, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsModeSpec {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

/// `minProtocolVersion` / `maxProtocolVersion`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersionSpec {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

//! Prometheus metrics with Istio's standard names and labels (istio.io/latest/docs/reference/config/metrics/), plus outrider's
//! own `outrider_*` families.
//!
//! Built on an explicitly passed [`Registry`], never the global one. The data path resolves
//! a label set's handles once ([`Metrics::tcp_series`]) and keeps them in the runtime per peer
//! identity ([`SeriesByPeer`]); a connection then only counts itself opened and closed and
//! adds byte deltas in batches from the copy loop — no label strings per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::identity::SpiffeId;

/// Value used for labels that are not known (Istio's convention).
pub const UNKNOWN: &str = "unknown";

/// Istio's TCP label names, in the order of [`TcpLabels::values`].
const TCP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// One side of a connection as the metrics see it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
}

impl Peer {
    /// A peer about which nothing is known.
    pub fn unknown() -> Peer {
        Peer {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
        }
    }
}

/// Who reports a connection: the client-side sidecar (`source`) or the server-side one
/// (`destination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

/// The full Istio label set of one TCP connection.
#[derive(Debug, Clone)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source: Peer,
    pub destination: Peer,
    /// `name.default.svc.cluster.local` (or the external host).
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `mutual_tls` | `none` on the destination side; `unknown` on the source side.
    pub security_policy: &'static str,
}

impl TcpLabels {
    fn values(&self) -> [&str; 23] {
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let s = &self.source;
        let d = &self.destination;
        [
            reporter,
            &s.workload,
            &s.namespace,
            &s.principal,
            &s.app,
            &s.version,
            &s.app,
            &s.version,
            UNKNOWN,
            &d.workload,
            &d.namespace,
            &d.principal,
            &d.app,
            &d.version,
            &self.destination_service,
            &self.destination_service_name,
            &self.destination_service_namespace,
            &d.app,
            &d.version,
            UNKNOWN,
            "tcp",
            "-",
            self.security_policy,
        ]
    }
}

/// All metric families of one sidecar.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    handshake_failures: IntCounterVec,
    plaintext_rejected: IntCounterVec,
    plaintext_accepted: IntCounterVec,
    upstream_failures: IntCounterVec,
    inbound_rejected: IntCounterVec,
    jwt_rejected: IntCounterVec,
    outbound_rejected: IntCounterVec,
    closed_on_reload: IntCounterVec,
    resumptions_refused: IntCounterVec,
    handshakes: IntCounterVec,
    active: IntGaugeVec,
    cert_expiry: Gauge,
    cert_rotations: IntCounter,
    cert_rotation_failures: IntCounter,
    config_reloads: IntCounterVec,
    authz: AuthzMetrics,
    requests: RequestFamilies,
    jwks: JwksMetrics,
    gateway: GatewayMetrics,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    /// Registers every family in `registry`.
    pub fn new(registry: Registry) -> Metrics {
        let r = &registry;
        let active = IntGaugeVec::new(
            Opts::new(
                "outrider_active_connections",
                "Connections open now, by direction.",
            ),
            &["direction"],
        )
        .expect("valid metric definition");
        r.register(Box::new(active.clone()))
            .expect("metric registered once");
        let cert_expiry = Gauge::new(
            "outrider_cert_expiry_timestamp_seconds",
            "Unix time at which the current workload certificate expires.",
        )
        .expect("valid metric definition");
        r.register(Box::new(cert_expiry.clone()))
            .expect("metric registered once");
        let cert_rotations = IntCounter::new(
            "outrider_cert_rotations_total",
            "Workload certificates published.",
        )
        .expect("valid metric definition");
        r.register(Box::new(cert_rotations.clone()))
            .expect("metric registered once");
        let cert_rotation_failures = IntCounter::new(
            "outrider_cert_rotation_failures_total",
            "Certificate updates refused (invalid material) or failed.",
        )
        .expect("valid metric definition");
        r.register(Box::new(cert_rotation_failures.clone()))
            .expect("metric registered once");
        Metrics {
            tcp_opened: counter_vec(
                r,
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                TCP_LABELS,
            ),
            tcp_closed: counter_vec(
                r,
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                TCP_LABELS,
            ),
            tcp_sent: counter_vec(
                r,
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the downstream of the reporting proxy.",
                TCP_LABELS,
            ),
            tcp_received: counter_vec(
                r,
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream of the reporting proxy.",
                TCP_LABELS,
            ),
            handshake_failures: counter_vec(
                r,
                "outrider_tls_handshake_failures_total",
                "TLS handshakes that failed, by direction and reason.",
                &["direction", "reason"],
            ),
            plaintext_rejected: counter_vec(
                r,
                "outrider_plaintext_rejected_total",
                "Plaintext connections reset because the port is STRICT.",
                &["port"],
            ),
            plaintext_accepted: counter_vec(
                r,
                "outrider_plaintext_accepted_total",
                "Plaintext connections passed to the app (PERMISSIVE or DISABLE).",
                &["port"],
            ),
            upstream_failures: counter_vec(
                r,
                "outrider_upstream_failures_total",
                "Outbound connections that could not reach an endpoint, by reason.",
                &["destination_service", "reason"],
            ),
            inbound_rejected: counter_vec(
                r,
                "outrider_inbound_rejected_total",
                "Inbound connections closed before reaching the app, by reason.",
                &["port", "reason"],
            ),
            jwt_rejected: counter_vec(
                r,
                "outrider_jwt_rejected_total",
                "Inbound HTTP requests refused by RequestAuthentication (a JWT invalid for every provider), by port and Envoy's reason (the response body).",
                &["port", "reason"],
            ),
            outbound_rejected: counter_vec(
                r,
                "outrider_outbound_rejected_total",
                "Outbound connections from the app closed before reaching a destination, by listener and reason.",
                &["bind", "reason"],
            ),
            handshakes: counter_vec(
                r,
                "outrider_tls_handshakes_total",
                "Completed TLS handshakes, by direction and kind (full, or resumed from a session ticket).",
                &["direction", "kind"],
            ),
            resumptions_refused: counter_vec(
                r,
                "outrider_tls_resumptions_refused_total",
                "Resumed TLS sessions refused because the peer's certificate from the first handshake expired or lost its root; the connection retried with a full handshake.",
                &["direction", "reason"],
            ),
            closed_on_reload: counter_vec(
                r,
                "outrider_connections_closed_on_reload_total",
                "Open connections closed by a configuration reload: refused by the port's new mode (plaintext under STRICT), or still open when a removed listener's drain ended.",
                &["direction", "listener", "reason"],
            ),
            active,
            cert_expiry,
            cert_rotations,
            cert_rotation_failures,
            config_reloads: counter_vec(
                r,
                "outrider_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            authz: AuthzMetrics::new(r),
            requests: RequestFamilies::register(r),
            jwks: JwksMetrics::register(r),
            gateway: GatewayMetrics::register(r),
            registry,
        }
    }

    /// The handles of one TCP label set, for every connection that carries it.
    pub fn tcp_series(&self, labels: &TcpLabels, direction: &'static str) -> Arc<TcpSeries> {
        let values = labels.values();
        Arc::new(TcpSeries {
            opened: self.tcp_opened.with_label_values(&values),
            closed: self.tcp_closed.with_label_values(&values),
            sent: self.tcp_sent.with_label_values(&values),
            received: self.tcp_received.with_label_values(&values),
            active: self.active.with_label_values(&[direction]),
        })
    }

    /// Starts accounting for one proxied TCP connection under a label set resolved now (the
    /// data path keeps resolved series instead, see [`SeriesByPeer`]).
    pub fn tcp_connection(&self, labels: &TcpLabels, direction: &'static str) -> ConnectionMetrics {
        self.tcp_series(labels, direction).open()
    }

    pub fn handshake_failed(&self, direction: &str, reason: &str) {
        self.handshake_failures
            .with_label_values(&[direction, reason])
            .inc();
    }

    pub fn plaintext_rejected(&self, port: u16) {
        self.plaintext_rejected
            .with_label_values(&[&port.to_string()])
            .inc();
    }

    pub fn plaintext_accepted(&self, port: u16) {
        self.plaintext_accepted
            .with_label_values(&[&port.to_string()])
            .inc();
    }

    pub fn inbound_rejected(&self, port: u16, reason: &str) {
        self.inbound_rejected
            .with_label_values(&[&port.to_string(), reason])
            .inc();
    }

    /// A request refused by RequestAuthentication with Envoy's `reason`.
    pub fn jwt_rejected(&self, port: u16, reason: &str) {
        self.jwt_rejected
            .with_label_values(&[&port.to_string(), reason])
            .inc();
    }

    pub fn outbound_rejected(&self, bind: SocketAddr, reason: &str) {
        self.outbound_rejected
            .with_label_values(&[&bind.to_string(), reason])
            .inc();
    }

    /// A completed handshake; `resumed` when it used a session ticket.
    pub fn handshake_completed(&self, direction: &str, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.handshakes.with_label_values(&[direction, kind]).inc();
    }

    pub fn resumption_refused(&self, direction: &str, reason: &str) {
        self.resumptions_refused
            .with_label_values(&[direction, reason])
            .inc();
    }

    /// `count` open connections of `listener` (a port or a bind address) closed by a reload.
    pub fn closed_on_reload(&self, direction: &str, listener: &str, reason: &str, count: usize) {
        self.closed_on_reload
            .with_label_values(&[direction, listener, reason])
            .inc_by(count as u64);
    }

    pub fn upstream_failed(&self, destination_service: &str, reason: &str) {
        self.upstream_failures
            .with_label_values(&[destination_service, reason])
            .inc();
    }

    /// Sets the values that are read from elsewhere at scrape time.
    pub fn set_identity_state(&self, not_after: Option<SystemTime>, rotations: u64, rejected: u64) {
        if let Some(t) = not_after {
            let secs = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.cert_expiry.set(secs);
        }
        raise_to(&self.cert_rotations, rotations);
        raise_to(&self.cert_rotation_failures, rejected);
    }

    /// Sets the reload counters from the configuration watcher's totals.
    pub fn set_reloads(&self, ok: u64, failed: u64) {
        raise_to(&self.config_reloads.with_label_values(&["success"]), ok);
        raise_to(&self.config_reloads.with_label_values(&["failure"]), failed);
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// AuthorizationPolicy decisions on TCP ports (HTTP ports count requests with
/// `istio_requests_total{response_code="403"}`).
#[derive(Clone)]
struct AuthzMetrics {
    denied: IntCounterVec,
    dry_run: IntCounterVec,
    audited: IntCounterVec,
}

impl AuthzMetrics {
    fn new(r: &Registry) -> AuthzMetrics {
        AuthzMetrics {
            denied: counter_vec(
                r,
                "outrider_authz_denied_total",
                "Inbound connections closed by an AuthorizationPolicy before reaching the app (at accept, or when a reload's policy denies an open one), by port and deciding policy.",
                &["port", "policy"],
            ),
            dry_run: counter_vec(
                r,
                "outrider_authz_dry_run_total",
                "What istio.io/dry-run AuthorizationPolicies would have decided (never enforced), by port and result (allow|deny); Istio's istio_dry_run_allow_*/istio_dry_run_deny_* stats.",
                &["port", "result"],
            ),
            audited: counter_vec(
                r,
                "outrider_authz_audited_total",
                "Inbound connections an AUDIT AuthorizationPolicy matched, by port.",
                &["port"],
            ),
        }
    }
}

impl Metrics {
    /// A connection denied by AuthorizationPolicy `policy` (`ns/name`, or why nothing allowed it).
    pub fn authz_denied(&self, port: u16, policy: &str) {
        self.authz
            .denied
            .with_label_values(&[&port.to_string(), policy])
            .inc();
    }

    /// The decision of the dry-run policies of a port.
    pub fn authz_dry_run(&self, port: u16, allowed: bool) {
        let result = if allowed { "allow" } else { "deny" };
        self.authz
            .dry_run
            .with_label_values(&[&port.to_string(), result])
            .inc();
    }

    /// A connection an AUDIT policy matched.
    pub fn authz_audited(&self, port: u16) {
        self.authz
            .audited
            .with_label_values(&[&port.to_string()])
            .inc();
    }
}

fn raise_to(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

// ---- HTTP request metrics (istio_requests_total & co.), kept in one block -----------------

/// Istio's buckets for request durations (ms) and sizes (bytes) alike.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The request label names: the TCP ones up to `destination_cluster` ([`TCP_LABELS`]), then
/// the per-request ones, in the order of [`RequestLabels::handles`].
fn request_labels() -> Vec<&'static str> {
    TCP_LABELS[..SHARED_LABELS]
        .iter()
        .copied()
        .chain([
            "request_protocol",
            "response_code",
            "grpc_response_status",
            "response_flags",
            "connection_security_policy",
        ])
        .collect()
}

/// Labels shared with the TCP families (everything before `request_protocol`).
const SHARED_LABELS: usize = 20;

#[derive(Clone)]
struct RequestFamilies {
    total: IntCounterVec,
    duration: prometheus::HistogramVec,
    request_bytes: prometheus::HistogramVec,
    response_bytes: prometheus::HistogramVec,
}

impl RequestFamilies {
    fn register(r: &Registry) -> RequestFamilies {
        let labels = request_labels();
        let histogram = |name: &str, help: &str| {
            let h = prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(REQUEST_BUCKETS.to_vec()),
                &labels,
            )
            .expect("valid metric definition");
            r.register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        RequestFamilies {
            total: counter_vec(
                r,
                "istio_requests_total",
                "HTTP and gRPC requests.",
                &labels,
            ),
            duration: histogram(
                "istio_request_duration_milliseconds",
                "Request duration, from the first byte of the request to the end of the response.",
            ),
            request_bytes: histogram(
                "istio_request_bytes",
                "Request size: headers and body as received from the downstream.",
            ),
            response_bytes: histogram(
                "istio_response_bytes",
                "Response size: headers and body as sent to the downstream.",
            ),
        }
    }
}

/// The label values of one connection's requests, resolved once when the connection opens;
/// per request only [`RequestOutcome`] varies.
#[derive(Clone)]
pub struct RequestLabels {
    families: RequestFamilies,
    shared: Vec<String>,
    security_policy: &'static str,
}

/// What varies per request: the protocol and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestOutcome {
    /// `grpc` rather than `http`.
    pub grpc: bool,
    /// The response status (`0` when none was sent).
    pub code: u16,
    /// The `grpc-status` of a gRPC response, if it had one.
    pub grpc_status: Option<u32>,
    /// Envoy's short response flags (`-` for none).
    pub flags: &'static str,
}

/// The four handles of one (connection, outcome) pair.
#[derive(Clone)]
pub struct RequestHandles {
    pub total: IntCounter,
    pub duration_ms: prometheus::Histogram,
    pub request_bytes: prometheus::Histogram,
    pub response_bytes: prometheus::Histogram,
}

impl RequestHandles {
    /// Counts one request.
    pub fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.total.inc();
        self.duration_ms.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

impl Metrics {
    /// The request labels of a connection that `labels` describes (its `request_protocol`
    /// and `response_flags` are replaced per request).
    pub fn request_labels(&self, labels: &TcpLabels) -> RequestLabels {
        let values = labels.values();
        RequestLabels {
            families: self.requests.clone(),
            shared: values[..SHARED_LABELS]
                .iter()
                .map(|v| v.to_string())
                .collect(),
            security_policy: labels.security_policy,
        }
    }
}

impl RequestLabels {
    /// The handles for one outcome (callers cache them per connection).
    pub fn handles(&self, outcome: RequestOutcome) -> RequestHandles {
        let code = outcome.code.to_string();
        let grpc_status = outcome.grpc_status.map(|s| s.to_string());
        let mut values: Vec<&str> = self.shared.iter().map(String::as_str).collect();
        values.extend([
            if outcome.grpc { "grpc" } else { "http" },
            &code,
            grpc_status.as_deref().unwrap_or(""),
            outcome.flags,
            self.security_policy,
        ]);
        let f = &self.families;
        RequestHandles {
            total: f.total.with_label_values(&values),
            duration_ms: f.duration.with_label_values(&values),
            request_bytes: f.request_bytes.with_label_values(&values),
            response_bytes: f.response_bytes.with_label_values(&values),
        }
    }
}

// ---- end of HTTP request metrics ----------------------------------------------------------

// ---- JWKS fetcher metrics (RequestAuthentication keys), kept in one block -----------------

/// The JWKS fetcher's families ([`crate::jwks`]), labelled by `source`: the JWKS URI, or the
/// issuer for a source found by OIDC discovery. Updated once per fetch, never per request.
#[derive(Clone)]
pub struct JwksMetrics {
    fetches: IntCounterVec,
    keys: IntGaugeVec,
    last_success: GaugeVec,
}

impl JwksMetrics {
    fn register(r: &Registry) -> JwksMetrics {
        let keys = IntGaugeVec::new(
            Opts::new(
                "outrider_jwks_keys",
                "Usable keys in the last JWKS document fetched successfully, by source.",
            ),
            &["source"],
        )
        .expect("valid metric definition");
        r.register(Box::new(keys.clone()))
            .expect("metric registered once");
        let last_success = GaugeVec::new(
            Opts::new(
                "outrider_jwks_last_success_timestamp_seconds",
                "Unix time of the last successful JWKS fetch, by source.",
            ),
            &["source"],
        )
        .expect("valid metric definition");
        r.register(Box::new(last_success.clone()))
            .expect("metric registered once");
        JwksMetrics {
            fetches: counter_vec(
                r,
                "outrider_jwks_fetches_total",
                "JWKS fetches, by source and result (success|error).",
                &["source", "result"],
            ),
            keys,
            last_success,
        }
    }

    /// A successful fetch of `source` at `at` whose document holds `keys` usable keys.
    pub fn fetch_succeeded(&self, source: &str, keys: usize, at: SystemTime) {
        self.fetches.with_label_values(&[source, "success"]).inc();
        self.keys
            .with_label_values(&[source])
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.with_label_values(&[source]).set(secs);
    }

    /// A failed fetch of `source` (the keys gauge keeps the last good document's count).
    pub fn fetch_failed(&self, source: &str) {
        self.fetches.with_label_values(&[source, "error"]).inc();
    }

    /// Drops the gauges of a source that is no longer configured (its counters stay).
    pub fn forget(&self, source: &str) {
        let _ = self.keys.remove_label_values(&[source]);
        let _ = self.last_success.remove_label_values(&[source]);
    }
}

impl Metrics {
    /// The JWKS fetcher's families, for [`crate::jwks::Jwks::spawn`].
    pub fn jwks(&self) -> JwksMetrics {
        self.jwks.clone()
    }
}

// ---- end of JWKS fetcher metrics ----------------------------------------------------------

// ---- Gateway edge TLS metrics (`outrider gateway`), kept in one block ---------------------

/// The ingress gateway's edge families: handshakes by server and outcome, certificate reloads
/// and expiry ([`crate::gateway::certs`]). The `server` label is `GatewayServer::name`.
#[derive(Clone)]
struct GatewayMetrics {
    handshakes: IntCounterVec,
    certificate_reloads: IntCounterVec,
    certificate_expiry: GaugeVec,
}

impl GatewayMetrics {
    fn register(r: &Registry) -> GatewayMetrics {
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "outrider_gateway_certificate_expiry_timestamp_seconds",
                "Unix time at which the certificate a gateway server serves expires, by server.",
            ),
            &["server"],
        )
        .expect("valid metric definition");
        r.register(Box::new(certificate_expiry.clone()))
            .expect("metric registered once");
        GatewayMetrics {
            handshakes: counter_vec(
                r,
                "outrider_gateway_tls_handshakes_total",
                "TLS handshakes at the gateway's edge, by port, server and outcome (ok, or the failure: certificate_required, unknown_ca, bad_certificate, certificate_expired, protocol_version, no_shared_cipher, no_server, timeout, not_tls, other).",
                &["port", "server", "outcome"],
            ),
            certificate_reloads: counter_vec(
                r,
                "outrider_gateway_certificate_reloads_total",
                "Changed edge certificate files taken into use (ok) or refused, the previous certificate still served (failed), by server.",
                &["server", "result"],
            ),
            certificate_expiry,
        }
    }
}

impl Metrics {
    /// One edge handshake on `port` for `server` (empty when no server was chosen) ended with
    /// `outcome` (`ok` or a reason of `outrider_gateway_tls_handshakes_total`).
    pub fn gateway_handshake(&self, port: u16, server: &str, outcome: &str) {
        self.gateway
            .handshakes
            .with_label_values(&[&port.to_string(), server, outcome])
            .inc();
    }

    /// A changed certificate of `server` taken into use (`ok`) or refused.
    pub fn gateway_certificate_reload(&self, server: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.gateway
            .certificate_reloads
            .with_label_values(&[server, result])
            .inc();
    }

    /// The notAfter (Unix seconds) of the certificate `server` serves.
    pub fn gateway_certificate_expiry(&self, server: &str, not_after_unix: i64) {
        self.gateway
            .certificate_expiry
            .with_label_values(&[server])
            .set(not_after_unix as f64);
    }

    /// Drops the expiry gauge of a server no longer configured (its counters stay).
    pub fn gateway_forget_server(&self, server: &str) {
        let _ = self
            .gateway
            .certificate_expiry
            .remove_label_values(&[server]);
    }
}

// ---- end of gateway edge TLS metrics ------------------------------------------------------

/// The metric handles of one TCP label set (the four `istio_tcp_*` series and the
/// direction's active gauge).
pub struct TcpSeries {
    opened: IntCounter,
    closed: IntCounter,
    sent: IntCounter,
    received: IntCounter,
    active: IntGauge,
}

impl TcpSeries {
    /// Counts a connection opened; the returned guard counts it closed when dropped.
    pub fn open(self: Arc<Self>) -> ConnectionMetrics {
        self.opened.inc();
        self.active.inc();
        ConnectionMetrics { series: self }
    }
}

/// Resolved series per peer identity, filled on first use: a known peer costs one map lookup
/// per connection. Bounded, since peers choose their identities: past [`SeriesByPeer::CAP`]
/// identities, new ones are resolved per connection instead of remembered.
#[derive(Default)]
pub struct SeriesByPeer {
    known: RwLock<HashMap<SpiffeId, Arc<TcpSeries>>>,
    anonymous: OnceLock<Arc<TcpSeries>>,
}

impl SeriesByPeer {
    pub const CAP: usize = 4096;

    /// The series of `peer` (`None`: no identity), made by `make` the first time.
    pub fn get(
        &self,
        peer: Option<&SpiffeId>,
        make: impl FnOnce() -> Arc<TcpSeries>,
    ) -> Arc<TcpSeries> {
        let Some(id) = peer else {
            return self.anonymous.get_or_init(make).clone();
        };
        if let Some(series) = self.known.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return series.clone();
        }
        let series = make();
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.len() < Self::CAP {
            known.entry(id.clone()).or_insert_with(|| series.clone());
        }
        series
    }
}

/// One open connection's metrics. Dropping it counts the connection closed.
pub struct ConnectionMetrics {
    series: Arc<TcpSeries>,
}

impl ConnectionMetrics {
    /// Adds bytes received from and sent to the reporting proxy's downstream.
    pub fn add(&self, received: u64, sent: u64) {
        if received > 0 {
            self.series.received.inc_by(received);
        }
        if sent > 0 {
            self.series.sent.inc_by(sent);
        }
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.series.closed.inc();
        self.series.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counts_and_bytes_appear_with_istio_labels() {
        let m = Metrics::new(Registry::new());
        let labels = TcpLabels {
            reporter: Reporter::Destination,
            source: Peer {
                principal: "spiffe://cluster.local/ns/default/sa/sentences".into(),
                ..Peer::unknown()
            },
            destination: Peer::unknown(),
            destination_service: "age.default.svc.cluster.local".into(),
            destination_service_name: "age".into(),
            destination_service_namespace: "default".into(),
            security_policy: "mutual_tls",
        };
        {
            let c = m.tcp_connection(&labels, "inbound");
            c.add(10, 20);
        }
        let text = m.encode();
        assert!(
            text.contains("istio_tcp_connections_opened_total{"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{"))
            .unwrap();
        assert!(line.contains(r#"connection_security_policy="mutual_tls""#));
        assert!(
            line.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/sentences""#)
        );
        assert!(line.ends_with(" 10"), "{line}");
        assert!(text.contains("istio_tcp_connections_closed_total{"));
    }

    #[test]
    fn series_are_resolved_once_per_peer_and_shared_by_its_connections() {
        let m = Metrics::new(Registry::new());
        let cache = SeriesByPeer::default();
        let made = std::cell::Cell::new(0);
        let labels_of = |principal: &str| TcpLabels {
            reporter: Reporter::Destination,
            source: Peer {
                principal: principal.into(),
                ..Peer::unknown()
            },
            destination: Peer::unknown(),
            destination_service: "age.default.svc.cluster.local".into(),
            destination_service_name: "age".into(),
            destination_service_namespace: "default".into(),
            security_policy: "mutual_tls",
        };
        let sentences = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sentences").unwrap();
        let name = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/name").unwrap();
        for id in [&sentences, &sentences, &name, &sentences] {
            let series = cache.get(Some(id), || {
                made.set(made.get() + 1);
                m.tcp_series(&labels_of(&id.to_string()), "inbound")
            });
            series.open().add(1, 2);
        }
        let anonymous = || {
            made.set(made.get() + 1);
            m.tcp_series(&labels_of(UNKNOWN), "inbound")
        };
        cache.get(None, anonymous).open();
        cache.get(None, anonymous).open();
        assert_eq!(made.get(), 3, "one resolution per distinct peer");
        let text = m.encode();
        let opened = |who: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_tcp_connections_opened_total{")
                        && l.contains(&format!("source_principal=\"{who}\""))
                })
                .unwrap_or_else(|| panic!("no series for {who}: {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            opened("spiffe://cluster.local/ns/default/sa/sentences"),
            "3"
        );
        assert_eq!(opened("spiffe://cluster.local/ns/default/sa/name"), "1");
        assert_eq!(opened(UNKNOWN), "2");
        assert!(
            text.contains("outrider_active_connections{direction=\"inbound\"} 0"),
            "{text}"
        );
    }
}

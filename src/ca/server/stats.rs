//! The CA service's counters and the small HTTP server that exposes them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

/// Decisions counted since start; read by the metrics scrape.
#[derive(Debug, Default)]
pub struct CaStats {
    pub(super) issued: AtomicU64,
    pub(super) denied: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) refused: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) timed_out: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) impersonated: Mutex<BTreeMap<String, u64>>,
}

impl CaStats {
    /// Certificates issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Refusals by reason (snake_case labels).
    pub fn denied_by_reason(&self) -> BTreeMap<&'static str, u64> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Certificates issued to node agents for other workloads, by node account
    /// (`<namespace>/<service-account>`).
    pub fn impersonated_by_node(&self) -> BTreeMap<String, u64> {
        self.impersonated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Connections closed at accept, by reason (`per_ip_limit`, `connection_limit`).
    pub fn connections_refused(&self) -> BTreeMap<&'static str, u64> {
        read(&self.refused)
    }

    /// Connections closed by a deadline, by phase (`handshake`, `idle`, `request`).
    pub fn connections_timed_out(&self) -> BTreeMap<&'static str, u64> {
        read(&self.timed_out)
    }

    /// The counters in Prometheus text format, from a registry built for this scrape (never
    /// the global default): `outrider_ca_certificates_issued_total`,
    /// `outrider_ca_requests_denied_total{reason}`,
    /// `outrider_ca_connections_refused_total{reason}`,
    /// `outrider_ca_connections_timed_out_total{phase}`,
    /// `outrider_ca_impersonated_certificates_issued_total{node_account}`.
    pub fn encode_prometheus(&self) -> String {
        use prometheus::Encoder;
        let registry = prometheus::Registry::new();
        let issued = prometheus::IntCounter::new(
            "outrider_ca_certificates_issued_total",
            "Workload certificates issued by the CA service.",
        )
        .expect("a valid metric name");
        issued.inc_by(self.issued());
        let denied = labelled_counter(
            "outrider_ca_requests_denied_total",
            "Certificate requests refused by the CA service, by reason.",
            "reason",
            &self.denied_by_reason(),
        );
        let refused = labelled_counter(
            "outrider_ca_connections_refused_total",
            "Connections the CA service closed at accept, by reason (per_ip_limit, connection_limit).",
            "reason",
            &self.connections_refused(),
        );
        let timed_out = labelled_counter(
            "outrider_ca_connections_timed_out_total",
            "Connections the CA service closed by a deadline, by phase (handshake, idle, request).",
            "phase",
            &self.connections_timed_out(),
        );
        let impersonated = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "outrider_ca_impersonated_certificates_issued_total",
                "Certificates issued to node agents for other workloads (ImpersonatedIdentity), by node account.",
            ),
            &["node_account"],
        )
        .expect("a valid metric name");
        for (node, n) in self.impersonated_by_node() {
            impersonated.with_label_values(&[node.as_str()]).inc_by(n);
        }
        let _ = registry.register(Box::new(impersonated));
        let _ = registry.register(Box::new(issued));
        let _ = registry.register(Box::new(denied));
        let _ = registry.register(Box::new(refused));
        let _ = registry.register(Box::new(timed_out));
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub(super) fn deny(&self, reason: &'static str) {
        bump(&self.denied, reason);
    }

    /// Counts a connection refused at accept; returns how many were refused for `reason`.
    pub(super) fn refuse(&self, reason: &'static str) -> u64 {
        bump(&self.refused, reason)
    }

    pub(super) fn time_out(&self, phase: &'static str) {
        bump(&self.timed_out, phase);
    }
}

pub(super) fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) -> u64 {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(key).or_default();
    *n += 1;
    *n
}

pub(super) fn read(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(super) fn labelled_counter(
    name: &str,
    help: &str,
    label: &str,
    values: &BTreeMap<&'static str, u64>,
) -> prometheus::IntCounterVec {
    let counter = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
        .expect("a valid metric name");
    for (value, n) in values {
        counter.with_label_values(&[value]).inc_by(*n);
    }
    counter
}

/// Serves `GET /stats/prometheus` (HTTP/1.1) with the CA's counters; 404 elsewhere.
pub(super) async fn serve_metrics(listener: TcpListener, stats: Arc<CaStats>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stats = stats.clone();
                    async move {
                        let response = if req.uri().path() == "/stats/prometheus" {
                            http::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    stats.encode_prometheus(),
                                )))
                        } else {
                            http::Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"not found\n",
                                )))
                        };
                        response
                    }
                });
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            )
            .await;
        });
    }
}

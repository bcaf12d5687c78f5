//! Where the dashboard's numbers come from: sidecars scraped directly (`--scrape`, their
//! `/stats/prometheus`), or a Prometheus server's HTTP API (`--prometheus`); plus, where a
//! sidecar's admin endpoint is reachable, its `/config_dump` (the workload and its mode) and
//! its `/plaintext` list (who sends plaintext, by address).
//!
//! Scraped counters are kept as a short history of snapshots per target, so a rate over the
//! last N minutes is the increase between the newest snapshot and the oldest one inside the
//! window, divided by the time between them. A series missing from the older snapshot was born
//! in between (outrider creates a series on its first connection) and counts from zero; a
//! counter that went down was reset by a restart and counts from zero too (as Prometheus's
//! `rate` does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::graph::{Rate, Security, SidecarInfo, Traffic, Workload, UNKNOWN};

/// How long one HTTP exchange with a sidecar or Prometheus may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{target}: {error}")]
    Fetch {
        target: String,
        error: crate::fetch::FetchError,
    },
    #[error("{target}{path} answered HTTP {status}")]
    Status {
        target: String,
        path: String,
        status: u16,
    },
    #[error("{target}: line {line} of the metrics is not in the exposition format: {text:?}")]
    Exposition {
        target: String,
        line: usize,
        text: String,
    },
    #[error("{target}: unexpected answer to {what}: {error}")]
    Json {
        target: String,
        what: &'static str,
        error: serde_json::Error,
    },
    #[error("Prometheus at {url}: {message}")]
    Prometheus { url: String, message: String },
    #[error("{0:?} is not an http://host:port[/path] URL")]
    Url(String),
}

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format (version 0.0.4): comments and blank lines are skipped;
/// every other line must be `name{label="value",...} value [timestamp]`. Returns the number
/// (1-based) and text of the first line that is not.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, (usize, String)> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).ok_or_else(|| (i + 1, line.to_string()))?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        rest = body;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        _ => return None,
                    },
                    c => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = rest[end + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s.parse().ok(),
        _ => None,
    }
}

/// What a series counts, without its value: the key of a snapshot.
pub type Series = (Workload, Workload, Security, Traffic);

/// The destination-reported Istio series the graph uses; `None` for anything else.
pub fn series_of(sample: &Sample) -> Option<Series> {
    let label = |k: &str| sample.labels.get(k).map(String::as_str).unwrap_or(UNKNOWN);
    if label("reporter") != "destination" {
        return None;
    }
    let traffic = match sample.name.as_str() {
        "istio_tcp_connections_opened_total" => Traffic::Connections,
        "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => Traffic::Bytes,
        "istio_requests_total" => Traffic::Requests {
            error: label("response_code").starts_with(['4', '5']),
        },
        _ => return None,
    };
    let service = |canonical: &str, fallback: &str| match label(canonical) {
        UNKNOWN => label(fallback).to_string(),
        s => s.to_string(),
    };
    let source = Workload::new(
        label("source_workload"),
        label("source_workload_namespace"),
        &service("source_canonical_service", "source_app"),
    );
    let destination = Workload::new(
        label("destination_workload"),
        label("destination_workload_namespace"),
        &service("destination_canonical_service", "destination_service_name"),
    );
    let security = Security::from_label(label("connection_security_policy"));
    Some((source, destination, security, traffic))
}

/// Counters of one target at one moment (several series may share a key: summed).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: HashMap<Series, f64>,
    /// From the target's `/config_dump`, when it serves one.
    pub sidecar: Option<SidecarInfo>,
    /// From the target's `/plaintext`, for the aggregated list.
    pub plaintext: Option<serde_json::Value>,
}

impl Snapshot {
    pub fn add_samples(&mut self, samples: &[Sample]) {
        for s in samples {
            if let Some(key) = series_of(s) {
                *self.counters.entry(key).or_default() += s.value;
            }
        }
    }
}

/// Rates over `window` from one target's snapshots, oldest first (`at`, snapshot).
pub fn rates(history: &VecDeque<(Instant, Snapshot)>, window: Duration) -> Vec<Rate> {
    let Some((newest_at, newest)) = history.back() else {
        return Vec::new();
    };
    let base = history
        .iter()
        .find(|(at, _)| newest_at.duration_since(*at) <= window);
    let Some((base_at, base)) = base else {
        return Vec::new();
    };
    let elapsed = newest_at.duration_since(*base_at).as_secs_f64();
    newest
        .counters
        .iter()
        .map(|(key, &now)| {
            let before = base.counters.get(key).copied().unwrap_or(0.0);
            let increase = if now < before { now } else { now - before };
            let per_second = if elapsed > 0.0 {
                increase / elapsed
            } else {
                0.0
            };
            Rate {
                source: key.0.clone(),
                destination: key.1.clone(),
                security: key.2,
                traffic: key.3.clone(),
                per_second,
            }
        })
        .collect()
}

/// Snapshot histories per target, shared by the poller and the page.
#[derive(Debug, Default)]
pub struct Histories {
    targets: Mutex<BTreeMap<String, VecDeque<(Instant, Snapshot)>>>,
    errors: Mutex<BTreeMap<String, String>>,
}

impl Histories {
    /// Adds a snapshot and forgets those older than `keep`.
    pub fn push(&self, target: &str, at: Instant, snapshot: Snapshot, keep: Duration) {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let history = targets.entry(target.to_string()).or_default();
        history.push_back((at, snapshot));
        while history
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            history.pop_front();
        }
    }

    pub fn set_error(&self, target: &str, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => errors.insert(target.to_string(), e),
            None => errors.remove(target),
        };
    }

    pub fn errors(&self) -> BTreeMap<String, String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every target's rates over `window`, and what each sidecar said about itself.
    pub fn read(&self, window: Duration) -> (Vec<Rate>, Vec<SidecarInfo>) {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        let mut sidecars = Vec::new();
        for history in targets.values() {
            all.extend(rates(history, window));
            if let Some(info) = history.back().and_then(|(_, s)| s.sidecar.clone()) {
                sidecars.push(info);
            }
        }
        (all, sidecars)
    }

    /// Every reachable sidecar's `/plaintext` list, by target.
    pub fn plaintext(&self) -> serde_json::Value {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<serde_json::Value> = targets
            .iter()
            .filter_map(|(target, history)| {
                let (_, s) = history.back()?;
                let clients = s.plaintext.clone()?;
                let workload = s.sidecar.as_ref().map(|i| &i.workload);
                Some(serde_json::json!({
                    "sidecar": target,
                    "workload": workload.map(|w| w.name.clone()),
                    "namespace": workload.map(|w| w.namespace.clone()),
                    "clients": clients,
                }))
            })
            .collect();
        serde_json::Value::Array(list)
    }
}

/// The parts of `/config_dump` the dashboard reads.
#[derive(Debug, Deserialize)]
struct ConfigDump {
    plan: DumpPlan,
}

#[derive(Debug, Deserialize)]
struct DumpPlan {
    workload: DumpWorkload,
    #[serde(default)]
    inbound: Vec<DumpInbound>,
}

#[derive(Debug, Deserialize)]
struct DumpWorkload {
    name: String,
    namespace: String,
    service: String,
}

#[derive(Debug, Deserialize)]
struct DumpInbound {
    mode: String,
}

/// One `/plaintext` entry.
#[derive(Debug, Deserialize)]
struct PlaintextClient {
    address: String,
    accepted: f64,
    rejected: f64,
}

/// Reads one target (`host:port`): its metrics when `metrics`, and its admin documents when
/// it serves them (a metrics-only listener answers 404 there: not an error).
pub async fn poll(target: &str, metrics: bool) -> Result<Snapshot, SourceError> {
    let mut snapshot = Snapshot::default();
    if metrics {
        let text = get_ok(target, "/stats/prometheus").await?;
        let samples = parse_exposition(&text).map_err(|(line, text)| SourceError::Exposition {
            target: target.to_string(),
            line,
            text,
        })?;
        snapshot.add_samples(&samples);
    }
    match admin(target, &mut snapshot).await {
        Ok(()) => Ok(snapshot),
        // The metrics are what the graph needs; a metrics target whose admin documents cannot
        // be read still draws its edges (no mode badge, no addresses).
        Err(e) if metrics => {
            tracing::debug!(%target, error = %e, "admin documents unreadable");
            Ok(snapshot)
        }
        Err(e) => Err(e),
    }
}

/// Adds what `/config_dump` and `/plaintext` say, where the target serves them.
async fn admin(target: &str, snapshot: &mut Snapshot) -> Result<(), SourceError> {
    let json = |what, e| SourceError::Json {
        target: target.to_string(),
        what,
        error: e,
    };
    if let Some(text) = get_admin(target, "/config_dump").await? {
        let dump: ConfigDump = serde_json::from_str(&text).map_err(|e| json("/config_dump", e))?;
        let w = dump.plan.workload;
        let modes: Vec<String> = dump.plan.inbound.into_iter().map(|i| i.mode).collect();
        snapshot.sidecar = Some(SidecarInfo {
            workload: Workload::new(&w.name, &w.namespace, &w.service),
            mode: super::graph::mode_of(&modes),
        });
    }
    if let Some(text) = get_admin(target, "/plaintext").await? {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| json("/plaintext", e))?;
        let clients: Vec<PlaintextClient> =
            serde_json::from_value(value.clone()).map_err(|e| json("/plaintext", e))?;
        if let Some(info) = &snapshot.sidecar {
            let unknown = Workload::new(UNKNOWN, UNKNOWN, UNKNOWN);
            for c in clients {
                let key = |traffic| {
                    (
                        unknown.clone(),
                        info.workload.clone(),
                        Security::None,
                        traffic,
                    )
                };
                let address = c.address.clone();
                snapshot
                    .counters
                    .insert(key(Traffic::PlaintextAdmitted { address }), c.accepted);
                let address = c.address;
                snapshot
                    .counters
                    .insert(key(Traffic::PlaintextRejected { address }), c.rejected);
            }
        }
        snapshot.plaintext = Some(value);
    }
    Ok(())
}

async fn get_ok(target: &str, path: &str) -> Result<String, SourceError> {
    let answer = crate::fetch::get(target, path, FETCH_TIMEOUT)
        .await
        .map_err(|error| SourceError::Fetch {
            target: target.to_string(),
            error,
        })?;
    if answer.status != 200 {
        return Err(SourceError::Status {
            target: target.to_string(),
            path: path.to_string(),
            status: answer.status,
        });
    }
    Ok(answer.body)
}

/// An admin document, or `None` when the target does not serve it.
async fn get_admin(target: &str, path: &str) -> Result<Option<String>, SourceError> {
    match get_ok(target, path).await {
        Ok(body) => Ok(Some(body)),
        Err(SourceError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A Prometheus server's HTTP API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    url: String,
    authority: String,
    prefix: String,
}

/// The metric families the graph reads, and the labels it groups them by.
const FAMILIES: &[&str] = &[
    "istio_tcp_connections_opened_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_requests_total",
];
const GROUP_BY: &str = "source_workload,source_workload_namespace,source_canonical_service,\
destination_workload,destination_workload_namespace,destination_canonical_service,\
destination_service_name,connection_security_policy,reporter,response_code";

#[derive(Debug, Deserialize)]
struct QueryAnswer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<QueryData>,
}

#[derive(Debug, Deserialize)]
struct QueryData {
    result: Vec<VectorSample>,
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Prometheus {
    /// `http://host:port` with an optional path prefix (`http://host/prometheus`).
    pub fn new(url: &str) -> Result<Prometheus, SourceError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| SourceError::Url(url.to_string()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(SourceError::Url(url.to_string()));
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Prometheus {
            url: url.to_string(),
            authority,
            prefix: prefix.to_string(),
        })
    }

    /// The destination-reported rates over `window`, one query per family.
    pub async fn rates(&self, window: Duration) -> Result<Vec<Rate>, SourceError> {
        let mut out = Vec::new();
        for family in FAMILIES {
            let query = format!(
                "sum by ({GROUP_BY}) (rate({family}{{reporter=\"destination\"}}[{}s]))",
                window.as_secs().max(1)
            );
            let path = format!("{}/api/v1/query?query={}", self.prefix, urlencode(&query));
            let text = get_ok(&self.authority, &path).await?;
            let answer: QueryAnswer =
                serde_json::from_str(&text).map_err(|e| SourceError::Json {
                    target: self.url.clone(),
                    what: "a query",
                    error: e,
                })?;
            if answer.status != "success" {
                return Err(SourceError::Prometheus {
                    url: self.url.clone(),
                    message: answer.error.unwrap_or(answer.status),
                });
            }
            for v in answer.data.map(|d| d.result).unwrap_or_default() {
                let sample = Sample {
                    name: family.to_string(),
                    labels: v.metric,
                    value: v.value.1.parse().unwrap_or(0.0),
                };
                if let Some((source, destination, security, traffic)) = series_of(&sample) {
                    let per_second = if sample.value.is_finite() {
                        sample.value
                    } else {
                        0.0
                    };
                    out.push(Rate {
                        source,
                        destination,
                        security,
                        traffic,
                        per_second,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDECAR: &str = r#"# HELP istio_tcp_connections_opened_total Total TCP connections opened
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="sentences",source_workload_namespace="default",source_canonical_service="sentences",destination_workload="age",destination_workload_namespace="default",destination_canonical_service="age",connection_security_policy="mutual_tls"} 3
istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown",source_workload_namespace="unknown",destination_workload="age",destination_workload_namespace="default",destination_canonical_service="age",connection_security_policy="none"} 1
istio_tcp_connections_opened_total{reporter="source",source_workload="sentences",destination_workload="age",connection_security_policy="unknown"} 3
istio_tcp_sent_bytes_total{reporter="destination",source_workload="sentences",source_workload_namespace="default",destination_workload="age",destination_workload_namespace="default",connection_security_policy="mutual_tls"} 100
istio_tcp_received_bytes_total{reporter="destination",source_workload="sentences",source_workload_namespace="default",destination_workload="age",destination_workload_namespace="default",connection_security_policy="mutual_tls"} 20
outrider_cert_expiry_timestamp_seconds 1.7e9
"#;

    #[test]
    fn parses_the_exposition_format() {
        let samples = parse_exposition(SIDECAR).unwrap();
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].labels["source_workload"], "sentences");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[5].value, 1.7e9);
        let s = parse_exposition("m{a=\"x\\\"y\\\\z\\n\",b=\"\",} +Inf 1700000000000\n").unwrap();
        assert_eq!(s[0].labels["a"], "x\"y\\z\n");
        assert_eq!(s[0].labels["b"], "");
        assert!(s[0].value.is_infinite());
        assert_eq!(
            parse_exposition("up 1\n\n# c\nx_y:z 2.5e-3").unwrap()[1].value,
            2.5e-3
        );
    }

    #[test]
    fn refuses_what_is_not_the_format() {
        for (text, line) in [
            ("<html>", 1),
            ("ok 1\nm{a=\"unterminated} 1", 2),
            ("m{a=x} 1", 1),
            ("m{a=\"\\q\"} 1", 1),
            ("m 1 2 3", 1),
            ("m one", 1),
            ("m{} 1 notatime", 1),
            ("1m 1", 1),
            ("m", 1),
        ] {
            assert_eq!(parse_exposition(text).unwrap_err().0, line, "{text}");
        }
    }

    #[test]
    fn keeps_destination_series_only() {
        let mut snap = Snapshot::default();
        snap.add_samples(&parse_exposition(SIDECAR).unwrap());
        // opened ×2 (mTLS, plaintext) + bytes (sent and received summed into one key).
        assert_eq!(snap.counters.len(), 3);
        let bytes = snap
            .counters
            .iter()
            .find(|(k, _)| k.3 == Traffic::Bytes)
            .unwrap();
        assert_eq!(*bytes.1, 120.0);
        // No canonical service label: the service name stands in.
        assert_eq!(bytes.0 .1.service, "unknown");
    }

    fn snap(v: &[(&str, f64)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (w, n) in v {
            let key = (
                Workload::new(w, "default", w),
                Workload::new("age", "default", "age"),
                Security::MutualTls,
                Traffic::Connections,
            );
            s.counters.insert(key, *n);
        }
        s
    }

    #[test]
    fn rates_over_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let history: VecDeque<_> = [
            (at(0), snap(&[("a", 100.0)])),
            (at(10), snap(&[("a", 110.0)])),
            // `b` was born after t=10; `a` restarted (counter went down).
            (at(20), snap(&[("a", 4.0), ("b", 5.0)])),
        ]
        .into();
        let by = |window: u64| {
            let mut r: Vec<(String, f64)> = rates(&history, Duration::from_secs(window))
                .into_iter()
                .map(|r| (r.source.name, r.per_second))
                .collect();
            r.sort_by(|a, b| a.0.cmp(&b.0));
            r
        };
        assert_eq!(by(10), [("a".to_string(), 0.4), ("b".to_string(), 0.5)]);
        assert_eq!(by(60), [("a".to_string(), 0.2), ("b".to_string(), 0.25)]);
        // A window shorter than the scrape interval: one snapshot, nothing moves.
        assert_eq!(by(5), [("a".to_string(), 0.0), ("b".to_string(), 0.0)]);
        assert!(rates(&VecDeque::new(), Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn prometheus_urls_and_queries() {
        let p = Prometheus::new("http://prometheus:9090").unwrap();
        assert_eq!(
            (p.authority.as_str(), p.prefix.as_str()),
            ("prometheus:9090", "")
        );
        let p = Prometheus::new("http://127.0.0.1:9090/prom/").unwrap();
        assert_eq!(p.prefix, "/prom");
        assert_eq!(
            Prometheus::new("http://prom/").unwrap().authority,
            "prom:80"
        );
        assert!(Prometheus::new("https://prom:9090").is_err());
        assert!(Prometheus::new("http:///x").is_err());
        assert_eq!(
            urlencode("rate(x{a=\"b\"}[5m])"),
            "rate%28x%7Ba%3D%22b%22%7D%5B5m%5D%29"
        );
    }
}

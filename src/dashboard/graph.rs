//! The mesh graph as a pure function of per-second rates: nodes are workloads, edges are the
//! traffic their destination sidecars reported, each marked with Kiali's padlock rule.
//!
//! Kiali sums the destination-reported rates of an edge by `connection_security_policy` and
//! shows a padlock when part of it is `mutual_tls`; it says how much as a percentage. Here an
//! edge is `mtls` when all of its traffic is mutual TLS, `mixed` when only part is,
//! `plaintext` when none is, and `blocked` when the only thing seen is plaintext attempts a
//! STRICT sidecar reset. The share is taken over requests when the edge has HTTP requests,
//! else over connections opened, else over bytes (a long-lived connection that opened
//! before the window still moves bytes).
//!
//! Metrics cannot tell plaintext clients apart: their source is `unknown`. The sidecars'
//! `/plaintext` lists do, by address, so an `unknown` edge is drawn from one node per address
//! that reached that destination in the window, its rates shared out in proportion to each
//! address's admitted connections.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Istio's value for a label nobody knows.
pub const UNKNOWN: &str = "unknown";

/// One side of a series: a workload, or `unknown` for a client without identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// The canonical service (`app` label), or `unknown`.
    pub service: String,
}

impl Workload {
    pub fn new(name: &str, namespace: &str, service: &str) -> Workload {
        Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            service: service.to_string(),
        }
    }

    pub fn is_unknown(&self) -> bool {
        self.name == UNKNOWN || self.name.is_empty()
    }

    /// `namespace/workload`, or `unknown`.
    fn id(&self) -> String {
        if self.is_unknown() {
            UNKNOWN.to_string()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// `connection_security_policy` as the destination reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Security {
    MutualTls,
    None,
    /// The source side's `unknown`, or a value outrider does not know.
    Unknown,
}

impl Security {
    pub fn from_label(value: &str) -> Security {
        match value {
            "mutual_tls" => Security::MutualTls,
            "none" => Security::None,
            _ => Security::Unknown,
        }
    }
}

/// What a rate counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Traffic {
    /// `istio_tcp_connections_opened_total`.
    Connections,
    /// `istio_tcp_sent_bytes_total` + `istio_tcp_received_bytes_total`.
    Bytes,
    /// `istio_requests_total`; `error` when the response code is 4xx or 5xx.
    Requests { error: bool },
    /// A sidecar's `/plaintext`: connections from `address` passed to the app.
    PlaintextAdmitted { address: String },
    /// A sidecar's `/plaintext`: connections from `address` reset (STRICT).
    PlaintextRejected { address: String },
}

/// One destination-reported series and its rate over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub source: Workload,
    pub destination: Workload,
    pub security: Security,
    pub traffic: Traffic,
    pub per_second: f64,
}

/// What a sidecar's admin endpoint says about its own workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarInfo {
    pub workload: Workload,
    /// The effective mode of its inbound ports (`STRICT`, `PERMISSIVE`, `DISABLE`, or
    /// `PERMISSIVE+STRICT` when ports differ); `None` when it has no inbound port.
    pub mode: Option<String>,
}

/// The graph `/api/graph` returns and the page draws.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `namespace/workload`; `unknown/<address>` or `unknown` for clients without identity.
    pub id: String,
    pub workload: String,
    pub namespace: String,
    pub service: String,
    /// The sidecar's effective mode, when its admin endpoint was reachable.
    pub mode: Option<String>,
    /// The client address of an `unknown` node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// How an edge's traffic is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeSecurity {
    /// All of it mutual TLS: the padlock.
    Mtls,
    /// Part mutual TLS, part plaintext: the padlock, the edge red, the share shown.
    Mixed,
    /// None of it mutual TLS: the open, red edge.
    Plaintext,
    /// Only plaintext attempts that were reset.
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    /// The source workload's name, `unknown` for a source without identity.
    pub source: String,
    pub destination: String,
    /// Node ids of both ends.
    pub source_id: String,
    pub destination_id: String,
    /// Share of the edge's traffic carried over mutual TLS, 0–100.
    pub mtls_percent: f64,
    pub security: EdgeSecurity,
    pub connections_per_second: f64,
    pub bytes_per_second: f64,
    /// HTTP only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// HTTP only: share of requests answered 4xx or 5xx, 0–100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_percent: Option<f64>,
    /// Plaintext connections a STRICT sidecar reset, per second.
    pub blocked_per_second: f64,
}

/// Sums of one edge's rates, split by security.
#[derive(Debug, Default, Clone)]
struct Sums {
    connections: [f64; 2],
    bytes: [f64; 2],
    requests: [f64; 2],
    errors: f64,
    blocked: f64,
}

impl Sums {
    fn add(&mut self, security: Security, traffic: &Traffic, v: f64) {
        // `unknown` never comes from a destination reporter; count it as not mTLS.
        let i = usize::from(security == Security::MutualTls);
        match traffic {
            Traffic::Connections => self.connections[i] += v,
            Traffic::Bytes => self.bytes[i] += v,
            Traffic::Requests { error } => {
                self.requests[i] += v;
                if *error {
                    self.errors += v;
                }
            }
            Traffic::PlaintextRejected { .. } => self.blocked += v,
            Traffic::PlaintextAdmitted { .. } => {}
        }
    }

    fn scaled(&self, f: f64) -> Sums {
        let s = |a: [f64; 2]| [a[0] * f, a[1] * f];
        Sums {
            connections: s(self.connections),
            bytes: s(self.bytes),
            requests: s(self.requests),
            errors: self.errors * f,
            blocked: self.blocked,
        }
    }

    fn has_traffic(&self) -> bool {
        self.connections
            .iter()
            .chain(&self.bytes)
            .chain(&self.requests)
            .any(|v| *v > 0.0)
    }
}

/// Builds the graph: every workload named by a series or a sidecar is a node; every pair with
/// traffic in the window is an edge.
pub fn build(rates: &[Rate], sidecars: &[SidecarInfo]) -> Graph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let add_node = |w: &Workload, mode: Option<String>, nodes: &mut BTreeMap<String, Node>| {
        if w.is_unknown() {
            return;
        }
        let node = nodes.entry(w.id()).or_insert_with(|| Node {
            id: w.id(),
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            service: w.service.clone(),
            mode: None,
            address: None,
        });
        if node.service == UNKNOWN && w.service != UNKNOWN {
            node.service = w.service.clone();
        }
        if mode.is_some() {
            node.mode = mode;
        }
    };
    for s in sidecars {
        add_node(&s.workload, s.mode.clone(), &mut nodes);
    }

    // Sum per (source id, destination); plaintext admissions per (destination, address).
    let mut sums: BTreeMap<(String, String), (Workload, Workload, Sums)> = BTreeMap::new();
    let mut admitted: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut rejected: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for r in rates {
        add_node(&r.source, None, &mut nodes);
        add_node(&r.destination, None, &mut nodes);
        // NaN counts as no traffic.
        if r.destination.is_unknown() || r.per_second.is_nan() || r.per_second <= 0.0 {
            continue;
        }
        let dest = r.destination.id();
        match &r.traffic {
            Traffic::PlaintextAdmitted { address } => {
                *admitted
                    .entry(dest)
                    .or_default()
                    .entry(address.clone())
                    .or_default() += r.per_second;
            }
            Traffic::PlaintextRejected { address } => {
                *rejected
                    .entry(dest)
                    .or_default()
                    .entry(address.clone())
                    .or_default() += r.per_second;
            }
            traffic => {
                let key = (r.source.id(), dest);
                let entry = sums
                    .entry(key)
                    .or_insert_with(|| (r.source.clone(), r.destination.clone(), Sums::default()));
                entry.2.add(r.security, traffic, r.per_second);
            }
        }
    }

    let mut edges = Vec::new();
    for ((source_id, dest_id), (source, destination, total)) in &sums {
        if source_id != UNKNOWN {
            if total.has_traffic() {
                edges.push(edge(source, None, destination, total));
            }
            continue;
        }
        // An identity-less source: one edge per address the destination saw, if it says.
        let by_address = admitted.get(dest_id).cloned().unwrap_or_default();
        let sum: f64 = by_address.values().sum();
        if by_address.is_empty() || sum.is_nan() || sum <= 0.0 {
            if total.has_traffic() {
                edges.push(edge(source, None, destination, total));
            }
            continue;
        }
        for (address, v) in &by_address {
            let mut share = total.scaled(v / sum);
            share.blocked = rejected
                .get_mut(dest_id)
                .and_then(|r| r.remove(address))
                .unwrap_or(0.0);
            edges.push(edge(source, Some(address), destination, &share));
        }
    }
    // Addresses that were only reset: no admitted traffic, the blocked edge alone.
    for (dest_id, by_address) in &rejected {
        let Some(destination) = nodes.get(dest_id) else {
            continue;
        };
        let destination = Workload::new(
            &destination.workload,
            &destination.namespace,
            &destination.service,
        );
        for (address, v) in by_address {
            let blocked = Sums {
                blocked: *v,
                ..Sums::default()
            };
            let unknown = Workload::new(UNKNOWN, UNKNOWN, UNKNOWN);
            edges.push(edge(&unknown, Some(address), &destination, &blocked));
        }
    }
    for e in &edges {
        if e.source_id.starts_with("unknown") && !nodes.contains_key(&e.source_id) {
            let address = e.source_id.strip_prefix("unknown/").map(str::to_string);
            nodes.insert(
                e.source_id.clone(),
                Node {
                    id: e.source_id.clone(),
                    workload: UNKNOWN.into(),
                    namespace: UNKNOWN.into(),
                    service: UNKNOWN.into(),
                    mode: None,
                    address,
                },
            );
        }
    }
    edges.sort_by(|a, b| (&a.source_id, &a.destination_id).cmp(&(&b.source_id, &b.destination_id)));
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
    }
}

fn edge(source: &Workload, address: Option<&String>, destination: &Workload, s: &Sums) -> Edge {
    let requests = s.requests[0] + s.requests[1];
    let connections = s.connections[0] + s.connections[1];
    let bytes = s.bytes[0] + s.bytes[1];
    let [plain, mtls] = if requests > 0.0 {
        s.requests
    } else if connections > 0.0 {
        s.connections
    } else {
        s.bytes
    };
    let mtls_percent = if plain + mtls > 0.0 {
        round(100.0 * mtls / (plain + mtls))
    } else {
        0.0
    };
    let security = if !s.has_traffic() {
        EdgeSecurity::Blocked
    } else if plain <= 0.0 {
        EdgeSecurity::Mtls
    } else if mtls > 0.0 {
        EdgeSecurity::Mixed
    } else {
        EdgeSecurity::Plaintext
    };
    let source_id = match address {
        Some(a) => format!("unknown/{a}"),
        None => source.id(),
    };
    Edge {
        source: if source.is_unknown() {
            UNKNOWN.into()
        } else {
            source.name.clone()
        },
        destination: destination.name.clone(),
        source_id,
        destination_id: destination.id(),
        mtls_percent,
        security,
        connections_per_second: round(connections),
        bytes_per_second: round(bytes),
        requests_per_second: (requests > 0.0).then(|| round(requests)),
        error_percent: (requests > 0.0).then(|| round(100.0 * s.errors / requests)),
        blocked_per_second: round(s.blocked),
    }
}

/// Four decimals: enough for one connection in half an hour (0.0006/s), short in JSON.
fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// The effective mode of a sidecar from its inbound ports' modes (`/config_dump`).
pub fn mode_of(ports: &[String]) -> Option<String> {
    let modes: BTreeSet<&str> = ports.iter().map(String::as_str).collect();
    if modes.is_empty() {
        return None;
    }
    Some(modes.into_iter().collect::<Vec<_>>().join("+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str) -> Workload {
        Workload::new(name, "default", name)
    }

    fn unknown() -> Workload {
        Workload::new(UNKNOWN, UNKNOWN, UNKNOWN)
    }

    fn rate(src: Workload, dst: &str, security: Security, traffic: Traffic, v: f64) -> Rate {
        Rate {
            source: src,
            destination: w(dst),
            security,
            traffic,
            per_second: v,
        }
    }

    fn admitted(dst: &str, address: &str, v: f64) -> Rate {
        rate(
            unknown(),
            dst,
            Security::Unknown,
            Traffic::PlaintextAdmitted {
                address: address.into(),
            },
            v,
        )
    }

    fn rejected(dst: &str, address: &str, v: f64) -> Rate {
        rate(
            unknown(),
            dst,
            Security::Unknown,
            Traffic::PlaintextRejected {
                address: address.into(),
            },
            v,
        )
    }

    use Security::{MutualTls, None as Plain};
    use Traffic::{Bytes, Connections};

    /// (case, rates, expected edges as (source_id, destination_id, security, mtls %, conn/s)).
    #[test]
    fn edges_follow_the_padlock_rule() {
        type Expect = (&'static str, &'static str, EdgeSecurity, f64, f64);
        let cases: Vec<(&str, Vec<Rate>, Vec<Expect>)> = vec![
            (
                "all mTLS: padlock, 100%",
                vec![rate(w("sentences"), "age", MutualTls, Connections, 2.0)],
                vec![(
                    "default/sentences",
                    "default/age",
                    EdgeSecurity::Mtls,
                    100.0,
                    2.0,
                )],
            ),
            (
                "all plaintext from a known workload: open edge, 0%",
                vec![rate(w("sentences"), "name-v1", Plain, Connections, 1.0)],
                vec![(
                    "default/sentences",
                    "default/name-v1",
                    EdgeSecurity::Plaintext,
                    0.0,
                    1.0,
                )],
            ),
            (
                "a quarter plaintext: mixed, 75%",
                vec![
                    rate(w("sentences"), "age", MutualTls, Connections, 3.0),
                    rate(w("sentences"), "age", Plain, Connections, 1.0),
                ],
                vec![(
                    "default/sentences",
                    "default/age",
                    EdgeSecurity::Mixed,
                    75.0,
                    4.0,
                )],
            ),
            (
                "no traffic in the window: no edge",
                vec![rate(w("sentences"), "age", MutualTls, Connections, 0.0)],
                vec![],
            ),
            (
                "only bytes (a long connection): share over bytes",
                vec![
                    rate(w("sentences"), "age", MutualTls, Bytes, 900.0),
                    rate(w("sentences"), "age", Plain, Bytes, 100.0),
                ],
                vec![(
                    "default/sentences",
                    "default/age",
                    EdgeSecurity::Mixed,
                    90.0,
                    0.0,
                )],
            ),
            (
                "an unknown source without /plaintext: one `unknown` node",
                vec![rate(unknown(), "age", Plain, Connections, 0.5)],
                vec![("unknown", "default/age", EdgeSecurity::Plaintext, 0.0, 0.5)],
            ),
            (
                "an unknown source, two addresses in /plaintext: shared 3:1",
                vec![
                    rate(unknown(), "age", Plain, Connections, 4.0),
                    admitted("age", "10.0.0.7", 3.0),
                    admitted("age", "10.0.0.9", 1.0),
                ],
                vec![
                    (
                        "unknown/10.0.0.7",
                        "default/age",
                        EdgeSecurity::Plaintext,
                        0.0,
                        3.0,
                    ),
                    (
                        "unknown/10.0.0.9",
                        "default/age",
                        EdgeSecurity::Plaintext,
                        0.0,
                        1.0,
                    ),
                ],
            ),
            (
                "STRICT: only resets from the address: a blocked edge",
                vec![rejected("age", "10.0.0.7", 0.2)],
                vec![(
                    "unknown/10.0.0.7",
                    "default/age",
                    EdgeSecurity::Blocked,
                    0.0,
                    0.0,
                )],
            ),
        ];
        for (case, rates, expected) in cases {
            let mut graph = build(
                &rates,
                &[SidecarInfo {
                    workload: w("age"),
                    mode: Some("PERMISSIVE".into()),
                }],
            );
            let got: Vec<_> = graph
                .edges
                .drain(..)
                .map(|e| {
                    let (src, dst) = (e.source_id, e.destination_id);
                    (
                        src,
                        dst,
                        e.security,
                        e.mtls_percent,
                        e.connections_per_second,
                    )
                })
                .collect();
            let expected: Vec<_> = expected
                .into_iter()
                .map(|(s, d, sec, p, c)| (s.to_string(), d.to_string(), sec, p, c))
                .collect();
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn nodes_carry_service_mode_and_addresses() {
        let rates = vec![
            rate(w("sentences"), "age", MutualTls, Connections, 1.0),
            rate(unknown(), "age", Plain, Connections, 1.0),
            admitted("age", "127.0.0.1", 1.0),
            // Seen once, idle now: still a node, no edge.
            rate(w("sentences"), "name-v2", MutualTls, Connections, 0.0),
        ];
        let sidecars = vec![
            SidecarInfo {
                workload: w("age"),
                mode: Some("STRICT".into()),
            },
            SidecarInfo {
                workload: Workload::new("lonely", "other", "lonely"),
                mode: None,
            },
        ];
        let g = build(&rates, &sidecars);
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "default/age",
                "default/name-v2",
                "default/sentences",
                "other/lonely",
                "unknown/127.0.0.1"
            ]
        );
        assert_eq!(g.nodes[0].mode.as_deref(), Some("STRICT"));
        assert_eq!(g.nodes[1].mode, None);
        assert_eq!(g.nodes[4].address.as_deref(), Some("127.0.0.1"));
        assert_eq!(g.nodes[4].workload, "unknown");
        assert_eq!(g.edges.len(), 2);
        assert_eq!(g.edges[1].source, "unknown");
        assert_eq!(g.edges[1].destination, "age");
    }

    #[test]
    fn http_edges_have_requests_and_errors() {
        let rates = vec![
            rate(
                w("sentences"),
                "age",
                MutualTls,
                Traffic::Requests { error: false },
                9.0,
            ),
            rate(
                w("sentences"),
                "age",
                MutualTls,
                Traffic::Requests { error: true },
                1.0,
            ),
            rate(w("sentences"), "age", MutualTls, Connections, 0.5),
        ];
        let g = build(&rates, &[]);
        let e = &g.edges[0];
        assert_eq!(e.requests_per_second, Some(10.0));
        assert_eq!(e.error_percent, Some(10.0));
        assert_eq!(e.security, EdgeSecurity::Mtls);
        let tcp = build(&[rate(w("a"), "b", MutualTls, Connections, 1.0)], &[]);
        assert_eq!(tcp.edges[0].requests_per_second, None);
        let json = serde_json::to_value(&tcp).unwrap();
        assert!(json["edges"][0].get("error_percent").is_none());
    }

    #[test]
    fn modes() {
        assert_eq!(mode_of(&[]), None);
        assert_eq!(
            mode_of(&["STRICT".into(), "STRICT".into()]).as_deref(),
            Some("STRICT")
        );
        assert_eq!(
            mode_of(&["STRICT".into(), "PERMISSIVE".into()]).as_deref(),
            Some("PERMISSIVE+STRICT")
        );
    }
}

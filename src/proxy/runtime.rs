//! The data path's view of one version of the plan: what listeners read per connection.
//!
//! [`build`] turns a resolved [`Plan`] into a [`Runtime`]: TLS client configurations per
//! endpoint (built once per reload, never per connection), the peer directory for metric
//! labels, and this workload's own labels. A reload swaps the whole `Runtime` between two
//! connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, OutboundPlan, Plan, TlsOrigination, WorkloadInfo};
use crate::identity::{CertStore, SpiffeId};
use crate::metrics::{Metrics, Peer, Reporter, SeriesByPeer, TcpLabels, TcpSeries, UNKNOWN};
use crate::proxy::outbound::{OutboundRuntime, UpstreamEndpoint, UpstreamRoute, UpstreamTls};
use crate::proxy::resolve::{Resolver, Target};
use crate::tls::origination::{client_config, FileTls};

/// Everything the listeners need for one version of the plan.
pub struct Runtime {
    pub plan: Arc<Plan>,
    /// One per `plan.outbound` entry, found by its `bind` address.
    outbound: HashMap<SocketAddr, Arc<OutboundRuntime>>,
    /// Who is behind a SPIFFE ID, for the metrics' source/destination labels.
    pub peers: PeerDirectory,
    /// This workload as the metrics name it.
    pub me: Peer,
    /// Inbound connection metrics per peer identity: mTLS connections by the client's ID,
    /// plaintext (and passed-through TLS) under no identity.
    inbound_mtls: SeriesByPeer,
    inbound_plain: SeriesByPeer,
    /// Captured outbound destinations (empty unless the sidecar captures).
    pub captured: CaptureTable,
    /// The gateway's destinations (gateways only).
    pub gateway: Option<crate::gateway::routes::GatewayRoutes>,
}

/// Where captured outbound connections go: every service port of the plan's capture
/// section, found by the address the connection was headed for (SEMANTICS §10).
#[derive(Default)]
pub struct CaptureTable {
    services: Vec<Arc<OutboundRuntime>>,
    /// Members whose `address` is an IP.
    by_addr: HashMap<SocketAddr, usize>,
    /// Members whose `address` is a name: compared with its last answer per lookup (names
    /// are resolved off the connection path, like endpoints).
    by_name: Vec<(Target, u16, usize)>,
}

impl CaptureTable {
    fn build(
        plan: &Plan,
        connectors: &MeshConnectors,
        resolver: &Resolver,
        used: &mut Vec<ConnectorKey>,
    ) -> CaptureTable {
        let mut table = CaptureTable::default();
        for captured in &plan.capture.services {
            // One service whose TLS cannot be built (a DestinationRule's certificate file
            // missing, say) does not take the others down: its connections get the outbound
            // traffic policy, and the reason is logged on every rebuild.
            let entry = match outbound_runtime(&captured.route, plan, connectors, resolver, used) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(service = %captured.route.to, error = %format!("{e:#}"), "captured connections to this service cannot be routed");
                    continue;
                }
            };
            let index = table.services.len();
            table.services.push(Arc::new(entry));
            for (host, port) in &captured.addresses {
                match resolver.target(host) {
                    Target::Ip(ip) => {
                        // The first service to claim an address keeps it.
                        let addr = SocketAddr::new(ip.to_canonical(), *port);
                        table.by_addr.entry(addr).or_insert(index);
                    }
                    named => table.by_name.push((named, *port, index)),
                }
            }
        }
        table
    }

    /// The service a captured connection to `destination` belongs to, if any.
    pub fn lookup(&self, destination: SocketAddr) -> Option<&Arc<OutboundRuntime>> {
        let destination = SocketAddr::new(destination.ip().to_canonical(), destination.port());
        let index = self.by_addr.get(&destination).copied().or_else(|| {
            self.by_name
                .iter()
                .find(|(target, port, _)| {
                    *port == destination.port() && target.points_at(destination.ip())
                })
                .map(|(_, _, index)| *index)
        })?;
        self.services.get(index)
    }
}

impl Runtime {
    /// The metric series of an inbound connection from `peer` (a verified client identity,
    /// or `None`) with `security` (`mutual_tls` or `none`), resolved on this runtime's first
    /// such connection.
    pub fn inbound_series(
        &self,
        metrics: &Metrics,
        peer: Option<&SpiffeId>,
        security: &'static str,
    ) -> Arc<TcpSeries> {
        let cache = if security == "mutual_tls" {
            &self.inbound_mtls
        } else {
            &self.inbound_plain
        };
        cache.get(peer, || {
            let w = &self.plan.workload;
            let labels = TcpLabels {
                reporter: Reporter::Destination,
                source: peer.map_or_else(Peer::unknown, |id| self.peers.lookup(id)),
                destination: self.me.clone(),
                destination_service: format!("{}.{}.svc.cluster.local", w.service, w.namespace),
                destination_service_name: w.service.clone(),
                destination_service_namespace: w.namespace.clone(),
                security_policy: security,
            };
            metrics.tcp_series(&labels, "inbound")
        })
    }

    /// The outbound entry whose `bind` is `bind`.
    pub fn outbound(&self, bind: SocketAddr) -> Option<Arc<OutboundRuntime>> {
        self.outbound.get(&bind).cloned()
    }
}

/// SPIFFE ID → workload labels, computed from the configuration's Workload documents (there
/// is no control plane to exchange metadata with).
#[derive(Debug, Default, Clone)]
pub struct PeerDirectory {
    by_id: HashMap<SpiffeId, Peer>,
}

impl PeerDirectory {
    /// Records a workload; an ID shared by several workloads keeps only what they share.
    pub fn insert(&mut self, id: SpiffeId, peer: Peer) {
        match self.by_id.get_mut(&id) {
            None => {
                self.by_id.insert(id, peer);
            }
            Some(existing) => {
                if existing.workload != peer.workload {
                    existing.workload = UNKNOWN.into();
                }
                if existing.app != peer.app {
                    existing.app = UNKNOWN.into();
                }
                if existing.version != peer.version {
                    existing.version = UNKNOWN.into();
                }
            }
        }
    }

    /// Labels for a peer identity; what is not known is `unknown`, the principal is always
    /// the ID, and the namespace falls back to the ID's `/ns/<x>/` part (as Istio does).
    pub fn lookup(&self, id: &SpiffeId) -> Peer {
        match self.by_id.get(id) {
            Some(p) => p.clone(),
            None => Peer {
                principal: id.to_string(),
                namespace: id.namespace().unwrap_or(UNKNOWN).to_string(),
                ..Peer::unknown()
            },
        }
    }
}

/// Builds the runtime of `plan`: TLS client configurations per endpoint (mesh ones resume
/// sessions unless `resumption` is false), the peer directory for metrics.
/// With `capture`, the plan's capture section is built too (every service's endpoints, for
/// the capture listeners); without, it is left out.
pub fn build(
    plan: Arc<Plan>,
    connectors: &MeshConnectors,
    resolver: &Resolver,
    capture: bool,
) -> anyhow::Result<Runtime> {
    let mut used = Vec::new();
    let mut outbound = HashMap::new();
    for o in &plan.outbound {
        let entry = outbound_runtime(o, &plan, connectors, resolver, &mut used)?;
        if outbound.insert(o.bind, Arc::new(entry)).is_some() {
            anyhow::bail!("two outbound entries bind {}", o.bind);
        }
    }
    let captured = if capture {
        CaptureTable::build(&plan, connectors, resolver, &mut used)
    } else {
        CaptureTable::default()
    };
    let gateway = plan.gateway.as_ref().map(|g| {
        crate::gateway::routes::GatewayRoutes::build(g, &plan, connectors, resolver, &mut used)
    });
    connectors.keep_only(&used);
    let mut peers = PeerDirectory::default();
    for w in &plan.peers {
        peers.insert(w.spiffe_id.clone(), peer_of(w));
    }
    Ok(Runtime {
        me: peer_of(&plan.workload),
        plan,
        outbound,
        peers,
        inbound_mtls: SeriesByPeer::default(),
        inbound_plain: SeriesByPeer::default(),
        captured,
        gateway,
    })
}

/// The data path's form of one outbound plan entry: each endpoint's TLS client
/// configuration (connectors used are recorded in `used`), resolver target and metric labels.
pub(crate) fn outbound_runtime(
    o: &OutboundPlan,
    plan: &Plan,
    connectors: &MeshConnectors,
    resolver: &Resolver,
    used: &mut Vec<ConnectorKey>,
) -> anyhow::Result<OutboundRuntime> {
    let store = &connectors.store;
    let mut routes = Vec::new();
    for r in &o.routes {
        let mut endpoints = Vec::new();
        for e in &r.endpoints {
            let tls = match &e.tls {
                TlsOrigination::Disable => UpstreamTls::Plain,
                TlsOrigination::IstioMutual { allowed_ids, sni } => {
                    let server_name = ServerName::try_from(sni.clone())
                        .with_context(|| format!("SNI {sni:?} for {} is not a valid name", o.to))?;
                    UpstreamTls::Tls {
                        connector: connectors.get(allowed_ids, &e.host, e.port, used),
                        server_name,
                        mesh: Some(store.clone()),
                    }
                }
                TlsOrigination::Simple {
                    ca_certificates,
                    subject_alt_names,
                    sni,
                    insecure_skip_verify,
                } => file_origination(
                    FileTls {
                        ca_certificates: ca_certificates.as_deref(),
                        subject_alt_names,
                        sni: sni.as_deref(),
                        insecure_skip_verify: *insecure_skip_verify,
                        client: None,
                    },
                    e,
                )?,
                TlsOrigination::Mutual {
                    client_certificate,
                    private_key,
                    ca_certificates,
                    subject_alt_names,
                    sni,
                    insecure_skip_verify,
                } => file_origination(
                    FileTls {
                        ca_certificates: ca_certificates.as_deref(),
                        subject_alt_names,
                        sni: sni.as_deref(),
                        insecure_skip_verify: *insecure_skip_verify,
                        client: Some((client_certificate, private_key)),
                    },
                    e,
                )?,
            };
            let peer = e
                .workload
                .as_ref()
                .and_then(|name| plan.peers.iter().find(|w| &w.name == name))
                .map(peer_of)
                .unwrap_or_else(Peer::unknown);
            endpoints.push(UpstreamEndpoint {
                host: e.host.clone(),
                port: e.port,
                target: resolver.target(&e.host),
                tls,
                peer,
                series: SeriesByPeer::default(),
            });
        }
        routes.push(UpstreamRoute::new(r.weight, endpoints));
    }
    Ok(OutboundRuntime {
        bind: o.bind,
        destination: o.destination.clone(),
        routes,
    })
}

/// A digest of the certificate and key files the plan's SIMPLE and MUTUAL originations read
/// (DestinationRule `caCertificates`, `clientCertificate`, `privateKey`): when it changes, the
/// runtime is rebuilt, so replaced files take effect without a restart, as the SVID's do. A
/// file that cannot be read counts as its error text.
pub fn origination_material(plan: &Plan) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut paths = std::collections::BTreeSet::new();
    for e in plan
        .outbound
        .iter()
        .chain(plan.capture.services.iter().map(|s| &s.route))
        .flat_map(|o| &o.routes)
        .flat_map(|r| &r.endpoints)
    {
        match &e.tls {
            TlsOrigination::Simple {
                ca_certificates, ..
            } => paths.extend(ca_certificates.iter()),
            TlsOrigination::Mutual {
                client_certificate,
                private_key,
                ca_certificates,
                ..
            } => {
                paths.extend(ca_certificates.iter());
                paths.insert(client_certificate);
                paths.insert(private_key);
            }
            TlsOrigination::Disable | TlsOrigination::IstioMutual { .. } => {}
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.hash(&mut hasher);
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.to_string().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// The mesh client configurations of one sidecar, one per endpoint and set of allowed server
/// identities, kept across reloads.
///
/// Per endpoint, because each client configuration holds its own ticket cache keyed by SNI,
/// and the SNI (`outbound_.<port>_.<subset>_.<fqdn>`) is the same for every endpoint of a
/// service: with one shared cache, round-robin would offer one endpoint the ticket another
/// issued (under another ticket key), and almost every connection would fall back to a full
/// handshake. Across reloads, so tickets outlive a configuration change that keeps the
/// endpoint (a bundle change still empties the caches, see [`crate::tls::resumption`]).
pub struct MeshConnectors {
    store: CertStore,
    resumption: bool,
    by_endpoint: Mutex<HashMap<ConnectorKey, TlsConnector>>,
}

/// (allowed server identities, endpoint host, endpoint port).
pub(crate) type ConnectorKey = (Vec<SpiffeId>, String, u16);

impl MeshConnectors {
    /// Connectors presenting `store`'s SVID; `resumption` false turns session tickets off.
    pub fn new(store: CertStore, resumption: bool) -> MeshConnectors {
        MeshConnectors {
            store,
            resumption,
            by_endpoint: Mutex::default(),
        }
    }

    fn get(
        &self,
        allowed_ids: &[SpiffeId],
        host: &str,
        port: u16,
        used: &mut Vec<ConnectorKey>,
    ) -> TlsConnector {
        let key = (allowed_ids.to_vec(), host.to_string(), port);
        let mut by_endpoint = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        let connector = by_endpoint
            .entry(key.clone())
            .or_insert_with(|| {
                let config = crate::tls::client_config(&self.store, allowed_ids.to_vec());
                TlsConnector::from(if self.resumption {
                    config
                } else {
                    crate::tls::without_resumption(&config)
                })
            })
            .clone();
        used.push(key);
        connector
    }

    /// Forgets the connectors of endpoints the current plan no longer has.
    fn keep_only(&self, used: &[ConnectorKey]) {
        self.by_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| used.contains(key));
    }
}

/// SIMPLE or MUTUAL towards a non-mesh endpoint, with certificates from files.
fn file_origination(tls: FileTls<'_>, e: &Endpoint) -> anyhow::Result<UpstreamTls> {
    let (config, server_name) = client_config(tls, &e.host)
        .with_context(|| format!("TLS settings for {}:{} ({})", e.host, e.port, e.decided_by))?;
    Ok(UpstreamTls::Tls {
        connector: TlsConnector::from(config),
        server_name,
        mesh: None,
    })
}

fn peer_of(w: &WorkloadInfo) -> Peer {
    Peer {
        workload: w.name.clone(),
        namespace: w.namespace.clone(),
        principal: w.spiffe_id.to_string(),
        app: w.service.clone(),
        version: w.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::IpAddr;

    const MESH: &str = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: client, labels: { app: client } }
spec: { serviceAccount: client, address: 10.0.0.1, capture: true }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age-v1, labels: { app: age } }
spec:
  serviceAccount: age
  address: 10.0.0.2
  ports: [{ name: http, port: 8080, protocol: HTTP }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age-v2, labels: { app: age } }
spec:
  serviceAccount: age
  address: age-two.example
  ports: [{ name: http, port: 8080, protocol: HTTP }, { name: admin, port: 9000 }]
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn captured_destinations_are_found_by_member_ip_or_resolved_name_and_port() {
        let config = crate::config::load_str("mesh.yaml", MESH).unwrap();
        let plan = Arc::new(config.plan("client").unwrap());
        let lookup: crate::proxy::resolve::Lookup = Arc::new(|host: String| {
            Box::pin(async move {
                match host.as_str() {
                    "age-two.example" => Ok(vec!["10.0.0.3".parse::<IpAddr>().unwrap()]),
                    _ => Err(std::io::Error::other("unknown")),
                }
            })
        });
        let resolver = Resolver::new(lookup);
        let store = CertStore::for_workload(&plan.workload.spiffe_id);
        let connectors = MeshConnectors::new(store, true);
        let rt = build(plan.clone(), &connectors, &resolver, true).unwrap();
        let service = |a: &str| {
            rt.captured
                .lookup(addr(a))
                .map(|o| format!("{}:{}", o.destination.host, o.destination.port))
        };
        let age = Some("age.default.svc.cluster.local:8080".to_string());
        assert_eq!(service("10.0.0.2:8080"), age, "an IP member");
        assert_eq!(service("[::ffff:10.0.0.2]:8080"), age, "IPv4-mapped");
        assert_eq!(service("10.0.0.2:9000"), None, "v1 has no port 9000");
        assert_eq!(service("10.0.0.3:8080"), None, "a name not resolved yet");
        resolver.refresh().await;
        assert_eq!(
            service("10.0.0.3:8080"),
            age,
            "a named member, once resolved"
        );
        assert_eq!(
            service("10.0.0.3:9000"),
            Some("age.default.svc.cluster.local:9000".to_string())
        );
        assert_eq!(service("10.0.0.9:8080"), None, "not a member");
        // Each service port routes over every member that has the port.
        let endpoints: Vec<String> = rt
            .captured
            .lookup(addr("10.0.0.2:8080"))
            .unwrap()
            .routes
            .iter()
            .flat_map(|r| r.endpoints.iter().map(|e| format!("{}:{}", e.host, e.port)))
            .collect();
        assert_eq!(endpoints, ["10.0.0.2:8080", "age-two.example:8080"]);
        // Without capture, the table is empty.
        let plain = build(plan, &connectors, &resolver, false).unwrap();
        assert!(plain.captured.lookup(addr("10.0.0.2:8080")).is_none());
    }
}

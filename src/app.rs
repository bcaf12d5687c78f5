//! Wiring of the sidecar: configuration → identity store → TLS → metrics → listeners.
//!
//! [`Sidecar::bind`] binds every listener (so a conflict fails start-up, with the address in
//! the message) and returns the bound addresses; [`Sidecar::run`] serves until a stop signal,
//! then drains.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admin::{AdminState, HttpServer, Role};
use crate::config::reload::ReloadStats;
use crate::config::Plan;
use crate::gateway::listener::{BoundPorts, GatewayContext};
use crate::gateway::{EdgeCertificates, GatewayListeners};
use crate::identity::ca_client::{CaClientConfig, CaSource};
use crate::identity::CertStore;
use crate::jwks::Jwks;
use crate::metrics::Metrics;
use crate::proxy::listeners::{Bound, CaptureAddrs, ListenerAddrs, ListenerSettings, Listeners};
use crate::proxy::resolve::{system_lookup, Resolver};
use crate::proxy::runtime::MeshConnectors;
use crate::proxy::{plaintext::PlaintextLog, CopyConfig, ProxySettings, Runtime, Shared};
use crate::shutdown::Shutdown;

/// Everything `outrider run` is told: plain data, from flags and `OUTRIDER_*` variables.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// A YAML file or a directory of YAML files (mesh.yaml).
    pub config: PathBuf,
    /// Which workload of the configuration this sidecar runs beside.
    pub workload: String,
    /// Where the workload certificate comes from.
    pub identity: IdentityConfig,
    /// Admin endpoints (/config_dump, /certs, /plaintext, /stats/prometheus, /healthz/ready).
    pub admin_addr: SocketAddr,
    /// Prometheus scrape endpoint `/stats/prometheus`.
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint `/healthz/ready`.
    pub ready_addr: SocketAddr,
    /// IP address the inbound listeners bind (their ports come from the workload's `port`s).
    pub inbound_ip: IpAddr,
    /// Where the app listens (its `targetPort`s).
    pub app_host: IpAddr,
    /// How long inbound waits for a client's first bytes before treating it as plaintext.
    pub detect_timeout: Duration,
    /// Close a connection after this long without traffic.
    pub idle_timeout: Duration,
    /// How long a shutdown waits for open connections.
    pub drain_timeout: Duration,
    /// How often endpoint host names are resolved again (connections never wait for DNS).
    pub dns_refresh: Duration,
    /// Most connections open at once (inbound + outbound).
    pub max_connections: usize,
    /// Most inbound connections open at once (within `max_connections`).
    pub max_inbound_connections: usize,
    /// Most outbound connections open at once (within `max_connections`).
    pub max_outbound_connections: usize,
    /// Worker threads of the async runtime (1: tokio's current-thread scheduler).
    pub threads: usize,
    /// TLS session resumption towards mesh peers.
    pub resumption: bool,
    /// Limits of the pooled HTTP/2 connections between sidecars.
    pub h2_pool: crate::proxy::http::pool::PoolSettings,
    /// Transparent capture (`--capture`): the capture listeners instead of per-port inbound
    /// listeners. The process must run as the UID or GID the nat rules exempt.
    pub capture: Option<CaptureConfig>,
    /// How RequestAuthentication's remote JWKS are fetched (`--jwks-*`).
    pub jwks: crate::jwks::FetchConfig,
    /// `outrider gateway`: the workload is an ingress gateway (`spec.role: gateway`).
    pub gateway: Option<GatewayConfig>,
}

/// What `outrider gateway` adds to the sidecar's settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where `credentialName`s are directories (`--credentials-dir`).
    pub credentials_dir: Option<PathBuf>,
    /// The IP every Gateway server port is bound on.
    pub listen_ip: IpAddr,
    /// How often edge certificate files are checked for changes.
    pub cert_poll: Duration,
}

/// `--capture` and the addresses and identity it goes with.
#[derive(Debug, Clone, Copy)]
pub struct CaptureConfig {
    pub addrs: CaptureAddrs,
    /// The UID and GID `outrider iptables -u/-g` exempted (1337).
    pub proxy_uid: u32,
    pub proxy_gid: u32,
}

/// Where the workload's certificate comes from.
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    /// A directory with cert-chain.pem, key.pem, root-cert.pem, watched for changes.
    Files(PathBuf),
    /// The mesh CA (CSR over Istio's protocol, renewed at half-life).
    Ca(CaClientConfig),
}

/// Runs the sidecar until SIGTERM/SIGINT.
pub fn run(config: SidecarConfig) -> anyhow::Result<()> {
    // One thread: tokio's single-threaded scheduler, which skips the work-stealing
    // machinery a lone worker never uses.
    let mut builder = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let sidecar = Sidecar::bind(config).await?;
        let addrs = sidecar.addrs();
        let role = if sidecar.gateway.is_some() {
            "gateway"
        } else {
            "sidecar"
        };
        tracing::info!(?addrs, role, "outrider {role} listening");
        sidecar.run(crate::shutdown::termination_signal()).await
    })
}

/// Every address a sidecar listens on.
#[derive(Debug, Clone, Serialize)]
pub struct BoundAddrs {
    /// The data path's listeners (they follow the plan on reload).
    #[serde(flatten)]
    pub listeners: ListenerAddrs,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    /// A gateway's server ports: (Gateway `port.number`, bound address).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<(u16, SocketAddr)>,
}

/// A sidecar with every listener bound.
pub struct Sidecar {
    args: SidecarConfig,
    store: CertStore,
    connectors: Arc<MeshConnectors>,
    metrics: Metrics,
    shared: Shared,
    runtime_tx: watch::Sender<Arc<Runtime>>,
    listeners: Bound,
    admin: HttpServer,
    metrics_server: HttpServer,
    ready: HttpServer,
    reload_stats: Arc<ReloadStats>,
    plan_rx: watch::Receiver<Arc<Plan>>,
    warnings: Vec<String>,
    identity_source: IdentitySource,
    jwks: Jwks,
    gateway: Option<GatewaySide>,
}

/// A gateway's own parts: its server ports and its edge certificates.
struct GatewaySide {
    ports: crate::gateway::listener::BoundPorts,
    edge: EdgeCertificates,
    cert_poll: Duration,
}

/// Where the workload's certificate comes from, decided once at start-up.
enum IdentitySource {
    /// A directory of files, watched for changes (`--cert-dir`).
    Files(PathBuf),
    /// The mesh CA (`--ca-address`).
    Ca(CaSource),
}

impl Sidecar {
    /// Loads configuration and identity, builds TLS, binds every listener.
    pub async fn bind(args: SidecarConfig) -> anyhow::Result<Sidecar> {
        let mesh = crate::config::load(&args.config)?;
        for w in mesh.warnings() {
            tracing::warn!("{w}");
        }
        if let Some(capture) = &args.capture {
            crate::capture::check_proxy_identity(capture.proxy_uid, capture.proxy_gid)?;
        }
        let plan = Arc::new(mesh.plan(&args.workload)?);
        match (&args.gateway, plan.gateway.is_some()) {
            (None, true) => anyhow::bail!(
                "workload {} is a gateway (spec.role: gateway): run it with `outrider gateway`",
                args.workload
            ),
            (Some(_), false) => anyhow::bail!(
                "workload {} is not a gateway: give it `spec.role: gateway`, or run it with `outrider run`",
                args.workload
            ),
            _ => {}
        }
        tracing::info!(plan = %serde_json::to_string(&*plan).unwrap_or_default(), "effective plan");
        let store = CertStore::for_workload(&plan.workload.spiffe_id);
        let identity_source = match &args.identity {
            IdentityConfig::Files(dir) => {
                crate::identity::files::load_dir(&store, dir).with_context(|| {
                    format!("cannot load the workload identity from {}", dir.display())
                })?;
                IdentitySource::Files(dir.clone())
            }
            IdentityConfig::Ca(ca) => {
                IdentitySource::Ca(CaSource::from_config(ca, plan.workload.spiffe_id.clone())?)
            }
        };
        let metrics = Metrics::new(prometheus::Registry::new());
        let settings = ProxySettings {
            detect_timeout: args.detect_timeout,
            max_connections: args.max_connections,
            max_inbound_connections: args.max_inbound_connections,
            max_outbound_connections: args.max_outbound_connections,
            copy: CopyConfig {
                idle_timeout: args.idle_timeout,
                ..CopyConfig::default()
            },
            h2_pool: args.h2_pool,
            ..ProxySettings::default()
        };
        let resolver = Arc::new(Resolver::new(system_lookup()));
        let shared = Shared::new(
            metrics.clone(),
            Arc::new(PlaintextLog::default()),
            Shutdown::new(),
            settings,
            resolver.clone(),
        );
        let connectors = Arc::new(MeshConnectors::new(store.clone(), args.resumption));
        let jwks = Jwks::spawn(args.jwks.clone(), metrics.jwks(), shared.shutdown.watch())?;
        jwks.set_targets(jwks_targets(&plan));
        let capture = args.capture.is_some();
        let runtime = Arc::new(crate::proxy::runtime::build(
            plan.clone(),
            &connectors,
            &resolver,
            capture,
        )?);
        let (runtime_tx, _) = watch::channel(runtime);
        let listeners = Bound::bind(
            &plan,
            ListenerSettings {
                inbound_ip: args.inbound_ip,
                app_host: args.app_host,
                drain_timeout: args.drain_timeout,
                capture: args.capture.map(|c| c.addrs),
            },
        )
        .await?;
        let gateway = match (&args.gateway, &plan.gateway) {
            (Some(config), Some(gw)) => {
                let edge = EdgeCertificates::load(
                    gw,
                    config.credentials_dir.as_deref(),
                    shared.metrics.clone(),
                )?;
                let ports = BoundPorts::bind(gw, config.listen_ip).await?;
                Some(GatewaySide {
                    ports,
                    edge,
                    cert_poll: config.cert_poll,
                })
            }
            _ => None,
        };
        let admin = HttpServer::bind(args.admin_addr, Role::Admin).await?;
        let metrics_server = HttpServer::bind(args.metrics_addr, Role::Metrics).await?;
        let ready = HttpServer::bind(args.ready_addr, Role::Ready).await?;
        let (plan_rx, reload_stats) = crate::config::reload::spawn(
            args.config.clone(),
            args.workload.clone(),
            plan.clone(),
            Duration::from_secs(1),
        );
        Ok(Sidecar {
            warnings: mesh.warnings().to_vec(),
            args,
            store,
            connectors,
            metrics,
            shared,
            runtime_tx,
            listeners,
            admin,
            metrics_server,
            ready,
            reload_stats,
            plan_rx,
            identity_source,
            jwks,
            gateway,
        })
    }

    /// The addresses bound at start-up.
    pub fn addrs(&self) -> BoundAddrs {
        BoundAddrs {
            listeners: self.listeners.addrs(),
            admin: self.admin.local_addr(),
            metrics: self.metrics_server.local_addr(),
            ready: self.ready.local_addr(),
            gateway: self
                .gateway
                .as_ref()
                .map(|g| g.ports.addrs())
                .unwrap_or_default(),
        }
    }

    /// Serves until `stop` resolves, then drains for up to the drain timeout.
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let addrs = self.addrs();
        let Sidecar {
            args,
            store,
            connectors,
            metrics,
            shared,
            runtime_tx,
            listeners,
            admin,
            metrics_server,
            ready,
            reload_stats,
            plan_rx,
            warnings,
            identity_source,
            jwks,
            gateway,
        } = self;
        // The identity source: files watched for changes, or the mesh CA. Readiness waits for
        // the first certificate.
        let identity_source = match identity_source {
            IdentitySource::Files(dir) => tokio::spawn(crate::identity::files::watch_dir(
                store.clone(),
                dir,
                Duration::from_millis(500),
            )),
            IdentitySource::Ca(source) => {
                tokio::spawn(crate::identity::ca_client::run(store.clone(), source))
            }
        };
        let dns = tokio::spawn(shared.resolver.clone().refresh_every(args.dns_refresh));
        let tls = TlsAcceptor::from(crate::tls::server_config(&store));
        let mesh_acceptor = tls.clone();
        let listeners = listeners.start(shared.clone(), runtime_tx.subscribe(), tls);
        let mut edge_watch = None;
        let gateway = gateway.map(|g| {
            edge_watch = Some(tokio::spawn(
                g.edge.clone().watch(g.cert_poll, shared.shutdown.watch()),
            ));
            let listeners = g.ports.start(GatewayContext {
                shared: shared.clone(),
                runtime: runtime_tx.subscribe(),
                edge: g.edge.clone(),
                mesh: mesh_acceptor,
            });
            (listeners, g.edge)
        });
        let edge = gateway.as_ref().map(|(_, e)| e.clone());
        let (addrs_tx, addrs_rx) = watch::channel(serde_json::to_value(&addrs).unwrap_or_default());
        let reloads = tokio::spawn(follow_reloads(Reloads {
            plan_rx,
            capture: args.capture.is_some(),
            connectors,
            jwks,
            resolver: shared.resolver.clone(),
            runtime_tx: runtime_tx.clone(),
            listeners,
            addrs,
            addrs_tx,
            gateway,
            stats: reload_stats.clone(),
        }));
        let handler = crate::admin::sidecar_routes(AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            plaintext: shared.plaintext.clone(),
            runtime: runtime_tx.subscribe(),
            reload_stats,
            listeners: addrs_rx,
            warnings,
            edge,
        });
        let mut tasks = Vec::new();
        for server in [admin, metrics_server, ready] {
            tasks.push(tokio::spawn(
                server.run(handler.clone(), shared.shutdown.watch()),
            ));
        }
        stop.await;
        tracing::info!(live = shared.shutdown.live_connections(), "draining");
        let left = shared.shutdown.drain(args.drain_timeout).await;
        if left > 0 {
            tracing::warn!(left, "drain deadline passed; closing remaining connections");
        }
        identity_source.abort();
        dns.abort();
        reloads.abort();
        if let Some(t) = edge_watch {
            t.abort();
        }
        for t in tasks {
            t.abort();
        }
        Ok(())
    }
}

/// How often the files of SIMPLE/MUTUAL originations are checked for changes.
const ORIGINATION_POLL: Duration = Duration::from_secs(1);

/// What the reload follower owns.
struct Reloads {
    plan_rx: watch::Receiver<Arc<Plan>>,
    /// The runtime includes the capture table.
    capture: bool,
    connectors: Arc<MeshConnectors>,
    /// The JWKS fetcher: told the key slots of every new plan before its runtime is
    /// published, so the data path never sees a plan whose slots nobody fills.
    jwks: Jwks,
    resolver: Arc<Resolver>,
    runtime_tx: watch::Sender<Arc<Runtime>>,
    listeners: Listeners,
    addrs: BoundAddrs,
    addrs_tx: watch::Sender<serde_json::Value>,
    /// A gateway's listeners and edge certificates.
    gateway: Option<(GatewayListeners, EdgeCertificates)>,
    /// The watcher's counters: a plan refused here is a failed reload too.
    stats: Arc<ReloadStats>,
}

impl Reloads {
    /// Builds the runtime of `plan` and hands it to the data path; `false` (logged) when it
    /// cannot be built, and the old runtime stays.
    fn publish(&self, plan: &Arc<Plan>) -> bool {
        match crate::proxy::runtime::build(
            plan.clone(),
            &self.connectors,
            &self.resolver,
            self.capture,
        ) {
            Ok(rt) => {
                self.runtime_tx.send_replace(Arc::new(rt));
                true
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "runtime not rebuilt; keeping the old one");
                false
            }
        }
    }
}

/// Applies each reloaded plan: a new runtime for the data path (a plan that cannot be built
/// keeps the old one), then the listener set and the live connections brought in line. Also
/// rebuilds the runtime when a SIMPLE/MUTUAL origination's certificate files change.
async fn follow_reloads(mut r: Reloads) {
    let mut plan = r.plan_rx.borrow().clone();
    // The plan whose runtime the data path uses now (a plan that cannot be built is not).
    let mut live = plan.clone();
    let mut material = crate::proxy::runtime::origination_material(&plan);
    let mut poll = tokio::time::interval(ORIGINATION_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = r.plan_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                plan = r.plan_rx.borrow_and_update().clone();
                material = crate::proxy::runtime::origination_material(&plan);
                // Before the runtime goes out: a source the fetcher already knows publishes
                // its last good keys into the new slots here, so a reload never fails closed.
                r.jwks.set_targets(jwks_targets(&plan));
                if !apply(&mut r, &plan, true).await {
                    r.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    r.jwks.set_targets(jwks_targets(&live));
                } else {
                    live = plan.clone();
                }
            }
            _ = poll.tick() => {
                // A plan refused for its gateway certificates waits for them (a Secret
                // created after its Gateway).
                if !Arc::ptr_eq(&live, &plan) && plan.gateway.is_some() {
                    r.jwks.set_targets(jwks_targets(&plan));
                    if apply(&mut r, &plan, false).await {
                        live = plan.clone();
                    } else {
                        r.jwks.set_targets(jwks_targets(&live));
                    }
                    continue;
                }
                let now = crate::proxy::runtime::origination_material(&plan);
                if now != material {
                    material = now;
                    if r.publish(&plan) {
                        tracing::info!("origination certificates reloaded");
                    }
                }
            }
        }
    }
    r.listeners.stop();
    if let Some((listeners, _)) = &r.gateway {
        listeners.stop();
    }
}

/// Publishes `plan` (edge certificates first, then the runtime, then the listeners);
/// `false` when it is refused and the old plan stays.
async fn apply(r: &mut Reloads, plan: &Arc<Plan>, log: bool) -> bool {
    let edge_ready = match (&r.gateway, &plan.gateway) {
        (Some((_, edge)), Some(gw)) => match edge.update(gw) {
            Ok(()) => true,
            Err(e) => {
                if log {
                    tracing::error!(error = %e, "gateway certificates of the new configuration do not load; keeping the old configuration");
                }
                false
            }
        },
        _ => true,
    };
    if !(edge_ready && r.publish(plan)) {
        return false;
    }
    r.listeners.reconcile(plan).await;
    r.addrs.listeners = r.listeners.addrs();
    if let (Some((listeners, _)), Some(gw)) = (&mut r.gateway, &plan.gateway) {
        listeners.reconcile(gw).await;
        r.addrs.gateway = listeners.addrs();
    }
    r.addrs_tx
        .send_replace(serde_json::to_value(&r.addrs).unwrap_or_default());
    tracing::info!("configuration reloaded");
    true
}

/// The JWKS fetcher's targets: the remote key sources of every inbound port's
/// RequestAuthentication (slots shared between ports appear once per port; the fetcher
/// serves each source once; a slot shared by several ports is listed once).
fn jwks_targets(plan: &Plan) -> Vec<crate::jwks::Target> {
    let mut targets: Vec<crate::jwks::Target> = Vec::new();
    let gateway_ports = plan.gateway.iter().flat_map(|g| &g.ports);
    for target in plan
        .inbound
        .iter()
        .map(|p| &p.authentication)
        .chain(gateway_ports.map(|p| &p.authentication))
        .flat_map(|a| crate::jwks::targets_of(a))
    {
        let known = targets
            .iter()
            .any(|t| std::ptr::addr_eq(Arc::as_ptr(&t.sink), Arc::as_ptr(&target.sink)));
        if !known {
            targets.push(target);
        }
    }
    targets
}

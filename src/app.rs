//! Wiring of the sidecar: configuration → identity store → TLS → metrics → listeners.
//!
//! [`Sidecar::bind`] binds every listener (so a conflict fails start-up, with the address in
//! the message) and returns the bound addresses; [`Sidecar::run`] serves until a stop signal,
//! then drains.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::admin::{Handler, HttpServer, Reply, Role};
use crate::config::{Plan, TlsOrigination};
use crate::identity::{CertStore, SpiffeId};
use crate::metrics::{Metrics, Peer};
use crate::proxy::inbound::Inbound;
use crate::proxy::outbound::{
    Outbound, OutboundRuntime, UpstreamEndpoint, UpstreamRoute, UpstreamTls,
};
use crate::proxy::{
    plaintext::PlaintextLog, CopyConfig, PeerDirectory, ProxySettings, Runtime, Shared,
};
use crate::shutdown::Shutdown;

use crate::cli::duration;

/// `outrider run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A YAML file or a directory of YAML files (mesh.yaml).
    #[arg(long, env = "OUTRIDER_CONFIG")]
    pub config: PathBuf,
    /// Which workload of the configuration this sidecar runs beside.
    #[arg(long, env = "OUTRIDER_WORKLOAD")]
    pub workload: String,
    /// Identity from files: a directory with cert-chain.pem, key.pem, root-cert.pem (watched
    /// for changes). Either this or `--ca-address`.
    #[arg(
        long,
        env = "OUTRIDER_CERT_DIR",
        required_unless_present = "ca_address",
        conflicts_with = "ca_address"
    )]
    pub cert_dir: Option<PathBuf>,
    /// Identity from the mesh CA (CSR over Istio's protocol, renewed at half-life).
    #[command(flatten)]
    pub ca: crate::identity::ca_client::CaSourceArgs,
    /// Admin endpoints (/config_dump, /certs, /plaintext, /stats/prometheus, /healthz/ready).
    #[arg(long, env = "OUTRIDER_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus scrape endpoint `/stats/prometheus`.
    #[arg(long, env = "OUTRIDER_METRICS_ADDR", default_value = "0.0.0.0:15090")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint `/healthz/ready`.
    #[arg(long, env = "OUTRIDER_READY_ADDR", default_value = "0.0.0.0:15021")]
    pub ready_addr: SocketAddr,
    /// IP address the inbound listeners bind (their ports come from the workload's `port`s).
    #[arg(long, env = "OUTRIDER_INBOUND_IP", default_value = "0.0.0.0")]
    pub inbound_ip: IpAddr,
    /// Where the app listens (its `targetPort`s).
    #[arg(long, env = "OUTRIDER_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// How long inbound waits for a client's first bytes before treating it as plaintext.
    #[arg(long, env = "OUTRIDER_DETECT_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub detect_timeout: Duration,
    /// Close a connection after this long without traffic.
    #[arg(long, env = "OUTRIDER_IDLE_TIMEOUT", default_value = "1h", value_parser = duration)]
    pub idle_timeout: Duration,
    /// How long a shutdown waits for open connections.
    #[arg(long, env = "OUTRIDER_DRAIN_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Most connections open at once (inbound + outbound).
    #[arg(long, env = "OUTRIDER_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// Worker threads of the runtime.
    #[arg(long, env = "OUTRIDER_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Turn off TLS session resumption towards mesh peers: every outbound connection does a
    /// full handshake.
    #[arg(long, env = "OUTRIDER_NO_RESUMPTION")]
    pub no_resumption: bool,
}

impl RunArgs {
    /// Runs the sidecar until SIGTERM/SIGINT.
    pub fn run(self) -> anyhow::Result<()> {
        // One thread: tokio's single-threaded scheduler, which skips the work-stealing
        // machinery a lone worker never uses.
        let mut builder = if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(self.threads);
            b
        };
        let runtime = builder
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async move {
            let sidecar = Sidecar::bind(self).await?;
            let addrs = sidecar.addrs();
            tracing::info!(?addrs, "outrider sidecar listening");
            sidecar.run(crate::shutdown::termination_signal()).await
        })
    }
}

/// Every address a sidecar listens on.
#[derive(Debug, Clone, Serialize)]
pub struct BoundAddrs {
    /// (workload port, bound address).
    pub inbound: Vec<(u16, SocketAddr)>,
    pub outbound: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
}

/// A sidecar with every listener bound.
pub struct Sidecar {
    args: RunArgs,
    store: CertStore,
    metrics: Metrics,
    shared: Shared,
    runtime_tx: watch::Sender<Arc<Runtime>>,
    inbound: Vec<Inbound>,
    outbound: Vec<Outbound>,
    admin: HttpServer,
    metrics_server: HttpServer,
    ready: HttpServer,
    reload_stats: Arc<crate::config::reload::ReloadStats>,
    plan_rx: watch::Receiver<Arc<Plan>>,
    warnings: Vec<String>,
    identity_source: IdentitySource,
}

/// Where the workload's certificate comes from, decided once at start-up.
enum IdentitySource {
    /// A directory of files, watched for changes (`--cert-dir`).
    Files(PathBuf),
    /// The mesh CA (`--ca-address`).
    Ca(crate::identity::ca_client::CaSource),
}

impl Sidecar {
    /// Loads configuration and identity, builds TLS, binds every listener.
    pub async fn bind(args: RunArgs) -> anyhow::Result<Sidecar> {
        let mesh = crate::config::load(&args.config)?;
        for w in mesh.warnings() {
            tracing::warn!("{w}");
        }
        let plan = Arc::new(mesh.plan(&args.workload)?);
        tracing::info!(plan = %serde_json::to_string(&*plan).unwrap_or_default(), "effective plan");
        let store = CertStore::new(&plan.trust_domain);
        let identity_source = match (
            &args.cert_dir,
            args.ca.to_source(plan.workload.spiffe_id.clone())?,
        ) {
            (Some(dir), _) => {
                crate::identity::files::load_dir(&store, dir).with_context(|| {
                    format!("cannot load the workload identity from {}", dir.display())
                })?;
                IdentitySource::Files(dir.clone())
            }
            (None, Some(source)) => IdentitySource::Ca(source),
            (None, None) => anyhow::bail!("no identity source: give --cert-dir or --ca-address"),
        };
        let metrics = Metrics::new(prometheus::Registry::new());
        let settings = ProxySettings {
            detect_timeout: args.detect_timeout,
            max_connections: args.max_connections,
            copy: CopyConfig {
                idle_timeout: args.idle_timeout,
                ..CopyConfig::default()
            },
            ..ProxySettings::default()
        };
        let shared = Shared {
            metrics: metrics.clone(),
            plaintext: Arc::new(PlaintextLog::default()),
            shutdown: Shutdown::new(),
            settings,
            permits: Arc::new(tokio::sync::Semaphore::new(args.max_connections)),
        };
        let runtime = Arc::new(build_runtime(plan.clone(), &store, !args.no_resumption)?);
        let (runtime_tx, _) = watch::channel(runtime);
        let mut inbound = Vec::new();
        for p in &plan.inbound {
            inbound.push(
                Inbound::bind(
                    SocketAddr::new(args.inbound_ip, p.port),
                    p.port,
                    args.app_host,
                )
                .await?,
            );
        }
        let mut outbound = Vec::new();
        for (i, o) in plan.outbound.iter().enumerate() {
            outbound.push(Outbound::bind(o.bind, i).await?);
        }
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
            metrics,
            shared,
            runtime_tx,
            inbound,
            outbound,
            admin,
            metrics_server,
            ready,
            reload_stats,
            plan_rx,
            identity_source,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        BoundAddrs {
            inbound: self
                .inbound
                .iter()
                .map(|l| (l.local_addr().port(), l.local_addr()))
                .collect(),
            outbound: self.outbound.iter().map(|l| l.local_addr()).collect(),
            admin: self.admin.local_addr(),
            metrics: self.metrics_server.local_addr(),
            ready: self.ready.local_addr(),
        }
    }

    /// Serves until `stop` resolves, then drains for up to the drain timeout.
    pub async fn run(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let addrs = self.addrs();
        let Sidecar {
            args,
            store,
            metrics,
            shared,
            runtime_tx,
            inbound,
            outbound,
            admin,
            metrics_server,
            ready,
            reload_stats,
            mut plan_rx,
            warnings,
            identity_source,
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
        // Plan reloads: rebuild the runtime; a plan that cannot be built keeps the old one.
        let reload_store = store.clone();
        let reload_tx = runtime_tx.clone();
        let resumption = !args.no_resumption;
        let reloads = tokio::spawn(async move {
            while plan_rx.changed().await.is_ok() {
                let plan = plan_rx.borrow_and_update().clone();
                match build_runtime(plan, &reload_store, resumption) {
                    Ok(rt) => {
                        reload_tx.send_replace(Arc::new(rt));
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reloaded plan refused; keeping the old one")
                    }
                }
            }
        });
        let tls = TlsAcceptor::from(crate::tls::server_config(&store));
        let mut tasks = Vec::new();
        for l in inbound {
            tasks.push(tokio::spawn(l.run(
                shared.clone(),
                runtime_tx.subscribe(),
                tls.clone(),
            )));
        }
        for l in outbound {
            tasks.push(tokio::spawn(l.run(shared.clone(), runtime_tx.subscribe())));
        }
        let handler = admin_handler(AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            plaintext: shared.plaintext.clone(),
            runtime: runtime_tx.subscribe(),
            reload_stats,
            addrs,
            warnings,
        });
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
        reloads.abort();
        for t in tasks {
            t.abort();
        }
        Ok(())
    }
}

/// Builds the data path's view of a plan: TLS client configurations per endpoint (mesh ones
/// resume sessions unless `resumption` is false), the peer directory for metrics.
pub fn build_runtime(
    plan: Arc<Plan>,
    store: &CertStore,
    resumption: bool,
) -> anyhow::Result<Runtime> {
    let mut istio_configs: HashMap<Vec<SpiffeId>, TlsConnector> = HashMap::new();
    let mut outbound = Vec::new();
    for o in &plan.outbound {
        let mut routes = Vec::new();
        for r in &o.routes {
            let mut endpoints = Vec::new();
            for e in &r.endpoints {
                let tls = match &e.tls {
                    TlsOrigination::Disable => UpstreamTls::Plain,
                    TlsOrigination::IstioMutual { allowed_ids, sni } => {
                        let connector = istio_configs
                            .entry(allowed_ids.clone())
                            .or_insert_with(|| {
                                let config = crate::tls::client_config(store, allowed_ids.clone());
                                TlsConnector::from(if resumption {
                                    config
                                } else {
                                    crate::tls::without_resumption(&config)
                                })
                            })
                            .clone();
                        let server_name = ServerName::try_from(sni.clone()).with_context(|| {
                            format!("SNI {sni:?} for {} is not a valid name", o.to)
                        })?;
                        UpstreamTls::Tls {
                            connector,
                            server_name,
                            mesh: true,
                        }
                    }
                    other => {
                        let (config, server_name) = crate::tls::origination::client_config(
                            other, &e.host,
                        )
                        .with_context(|| {
                            format!("TLS settings for {}:{} ({})", e.host, e.port, e.decided_by)
                        })?;
                        UpstreamTls::Tls {
                            connector: TlsConnector::from(config),
                            server_name,
                            mesh: false,
                        }
                    }
                };
                let peer = match &e.workload {
                    Some(name) => plan
                        .peers
                        .iter()
                        .find(|w| &w.name == name)
                        .map(peer_of)
                        .unwrap_or_else(Peer::unknown),
                    None => Peer::unknown(),
                };
                endpoints.push(UpstreamEndpoint {
                    host: e.host.clone(),
                    port: e.port,
                    tls,
                    peer,
                });
            }
            routes.push(UpstreamRoute::new(r.weight, endpoints));
        }
        outbound.push(Arc::new(OutboundRuntime {
            destination: o.destination.clone(),
            routes,
        }));
    }
    let mut peers = PeerDirectory::default();
    for w in &plan.peers {
        peers.insert(w.spiffe_id.clone(), peer_of(w));
    }
    Ok(Runtime {
        me: peer_of(&plan.workload),
        plan,
        outbound,
        peers,
    })
}

fn peer_of(w: &crate::config::WorkloadInfo) -> Peer {
    Peer {
        workload: w.name.clone(),
        namespace: w.namespace.clone(),
        principal: w.spiffe_id.to_string(),
        app: w.service.clone(),
        version: w.version.clone(),
    }
}

struct AdminState {
    store: CertStore,
    metrics: Metrics,
    plaintext: Arc<PlaintextLog>,
    runtime: watch::Receiver<Arc<Runtime>>,
    reload_stats: Arc<crate::config::reload::ReloadStats>,
    addrs: BoundAddrs,
    warnings: Vec<String>,
}

fn admin_handler(state: AdminState) -> Handler {
    use std::sync::atomic::Ordering;
    Arc::new(move |path: &str| {
        let identity = state.store.current();
        match path {
            "/healthz/ready" => Some(match identity {
                Some(_) => Reply::text(200, "ready\n"),
                None => Reply::text(503, "no workload certificate yet\n"),
            }),
            "/stats/prometheus" | "/metrics" => {
                let stats = state.store.stats();
                state.metrics.set_identity_state(
                    identity.as_ref().map(|i| i.svid.not_after),
                    stats.rotations,
                    stats.rejected + stats.rotation_failures,
                );
                state.metrics.set_reloads(
                    state.reload_stats.ok.load(Ordering::Relaxed),
                    state.reload_stats.failed.load(Ordering::Relaxed),
                );
                Some(Reply {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: state.metrics.encode(),
                })
            }
            "/config_dump" => {
                let rt = state.runtime.borrow().clone();
                let dump = serde_json::json!({
                    "plan": &*rt.plan,
                    "listeners": &state.addrs,
                    "warnings": &state.warnings,
                });
                Some(Reply::json(
                    serde_json::to_string_pretty(&dump).unwrap_or_default(),
                ))
            }
            "/certs" => Some(match identity {
                None => Reply::text(503, "no workload certificate yet\n"),
                Some(i) => {
                    Reply::json(serde_json::to_string_pretty(&certs_json(&i)).unwrap_or_default())
                }
            }),
            "/plaintext" => Some(Reply::json(
                serde_json::to_string_pretty(&state.plaintext.clients()).unwrap_or_default(),
            )),
            "/" => Some(Reply::text(
                200,
                "outrider admin: /config_dump /certs /plaintext /stats/prometheus /healthz/ready\n",
            )),
            _ => None,
        }
    })
}

/// The `/certs` document: own SPIFFE ID, each certificate of the chain (serial, validity,
/// PEM), and the trust bundle per trust domain.
fn certs_json(identity: &crate::identity::Identity) -> serde_json::Value {
    let describe = |der: &rustls::pki_types::CertificateDer<'_>| {
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => serde_json::json!({
                "subject": cert.subject().to_string(),
                "issuer": cert.issuer().to_string(),
                "serial": cert.raw_serial_as_string().replace(':', ""),
                "not_before": cert.validity().not_before.to_rfc2822().unwrap_or_default(),
                "not_after": cert.validity().not_after.to_rfc2822().unwrap_or_default(),
                "pem": pem,
            }),
            Err(_) => serde_json::json!({ "pem": pem }),
        }
    };
    let svid = &identity.svid;
    let not_after = svid
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bundle: serde_json::Map<String, serde_json::Value> = identity
        .bundle
        .trust_domains()
        .into_iter()
        .map(|td| {
            let roots = identity
                .bundle
                .roots(&td)
                .unwrap_or_default()
                .iter()
                .map(describe)
                .collect();
            (td, serde_json::Value::Array(roots))
        })
        .collect();
    serde_json::json!({
        "spiffe_id": svid.id.to_string(),
        "serial": svid.serial_hex,
        "not_after_unix": not_after,
        "chain": svid.chain().iter().map(describe).collect::<Vec<_>>(),
        "trust_bundle": bundle,
    })
}

/// Installs the tracing subscriber: human-readable by default, JSON lines with `--log-json`.
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTRIDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and container logs stay plain text.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

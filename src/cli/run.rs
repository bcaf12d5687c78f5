//! `outrider run` flags → [`SidecarConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use outrider::app::{CaptureConfig, IdentityConfig, SidecarConfig};
use outrider::identity::ca_client::CaClientConfig;
use outrider::proxy::listeners::CaptureAddrs;

use super::{boolish, duration};

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
    pub ca: CaSourceArgs,
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
    /// How often endpoint host names are resolved again in the background (connections use
    /// the last answer; a failed lookup keeps it).
    #[arg(long, env = "OUTRIDER_DNS_REFRESH", default_value = "5s", value_parser = duration)]
    pub dns_refresh: Duration,
    /// Most connections open at once (inbound + outbound).
    #[arg(long, env = "OUTRIDER_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// Most inbound connections open at once (default: three quarters of
    /// --max-connections, so an inbound flood always leaves room for the app's outbound calls).
    #[arg(long, env = "OUTRIDER_MAX_INBOUND_CONNECTIONS")]
    pub max_inbound_connections: Option<usize>,
    /// Most outbound connections open at once (default: three quarters of --max-connections).
    #[arg(long, env = "OUTRIDER_MAX_OUTBOUND_CONNECTIONS")]
    pub max_outbound_connections: Option<usize>,
    /// Worker threads of the runtime.
    #[arg(long, env = "OUTRIDER_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Turn off TLS session resumption towards mesh peers: every outbound connection does a
    /// full handshake.
    #[arg(long, env = "OUTRIDER_NO_RESUMPTION", value_parser = boolish())]
    pub no_resumption: bool,
    /// HTTP between sidecars: most concurrent requests on one pooled HTTP/2 connection before
    /// another is opened.
    #[arg(long, env = "OUTRIDER_H2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_streams: u32,
    /// HTTP between sidecars: close a pooled HTTP/2 connection idle this long.
    #[arg(long, env = "OUTRIDER_H2_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub h2_idle_timeout: Duration,
    /// HTTP between sidecars: most pooled HTTP/2 connections per destination endpoint.
    #[arg(long, env = "OUTRIDER_H2_MAX_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_connections: u32,
    /// Transparent capture: serve the connections `outrider iptables` redirects (outbound to
    /// --capture-outbound-addr, inbound to --capture-inbound-addr) instead of one inbound
    /// listener per port; the app listens on its own ports. Needs --proxy-uid/--proxy-gid.
    #[arg(long, env = "OUTRIDER_CAPTURE", value_parser = boolish())]
    pub capture: bool,
    /// Where redirected outbound connections arrive (`outrider iptables -p`).
    #[arg(
        long,
        env = "OUTRIDER_CAPTURE_OUTBOUND_ADDR",
        default_value = "0.0.0.0:15001"
    )]
    pub capture_outbound_addr: SocketAddr,
    /// Where redirected inbound connections arrive (`outrider iptables -z`).
    #[arg(
        long,
        env = "OUTRIDER_CAPTURE_INBOUND_ADDR",
        default_value = "0.0.0.0:15006"
    )]
    pub capture_inbound_addr: SocketAddr,
    /// With --capture: the UID the nat rules exempt (`outrider iptables -u`); the sidecar
    /// must run as it (or as --proxy-gid).
    #[arg(long, env = "OUTRIDER_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// With --capture: the GID the nat rules exempt (`outrider iptables -g`; default: the UID).
    #[arg(long, env = "OUTRIDER_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// RequestAuthentication: PEM bundle that https JWKS (and OIDC discovery) servers must
    /// chain to, instead of the compiled-in Mozilla roots. https is always verified.
    #[arg(long, env = "OUTRIDER_JWKS_CA")]
    pub jwks_ca: Option<PathBuf>,
    /// RequestAuthentication: refetch a JWKS this long after a successful fetch (Istio's
    /// PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
    #[arg(long, env = "OUTRIDER_JWKS_REFRESH", default_value = "20m", value_parser = duration)]
    pub jwks_refresh: Duration,
    /// RequestAuthentication: first retry after a failed JWKS fetch, doubling per
    /// consecutive failure up to --jwks-retry-max (until the first success every token
    /// fails: fail closed).
    #[arg(long, env = "OUTRIDER_JWKS_RETRY_MIN", default_value = "1m", value_parser = duration)]
    pub jwks_retry_min: Duration,
    /// RequestAuthentication: longest wait between retries of a failing JWKS source.
    #[arg(long, env = "OUTRIDER_JWKS_RETRY_MAX", default_value = "60m", value_parser = duration)]
    pub jwks_retry_max: Duration,
    /// RequestAuthentication: a token whose `kid` the JWKS lacks asks for an early refetch,
    /// but not sooner than this after the source's last fetch.
    #[arg(long, env = "OUTRIDER_JWKS_EARLY_REFRESH_MIN", default_value = "60s", value_parser = duration)]
    pub jwks_early_refresh_min: Duration,
}

/// Flags of the `ca` identity source.
#[derive(Debug, Clone, clap::Args)]
pub struct CaSourceArgs {
    /// The mesh CA service, host:port (enables the `ca` identity source).
    #[arg(long, env = "OUTRIDER_CA_ADDRESS", requires_all = ["ca_root", "token_file"])]
    pub ca_address: Option<String>,
    /// PEM file with the CA's root certificate(s), to authenticate the CA service.
    #[arg(long, env = "OUTRIDER_CA_ROOT")]
    pub ca_root: Option<PathBuf>,
    /// File holding the bootstrap token (`outrider ca token` output).
    #[arg(long, env = "OUTRIDER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Validity to ask the CA for.
    #[arg(long, env = "OUTRIDER_CERT_TTL", default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,
    /// DNS name expected in the CA's serving certificate (default: the host of --ca-address).
    #[arg(long, env = "OUTRIDER_CA_SERVER_NAME")]
    pub ca_server_name: Option<String>,
}

impl RunArgs {
    pub fn into_config(self) -> anyhow::Result<SidecarConfig> {
        let identity = match (self.cert_dir, self.ca) {
            (Some(dir), _) => IdentityConfig::Files(dir),
            (
                None,
                CaSourceArgs {
                    ca_address: Some(address),
                    ca_root: Some(ca_root),
                    token_file: Some(token_file),
                    cert_ttl,
                    ca_server_name,
                },
            ) => IdentityConfig::Ca(CaClientConfig {
                address,
                ca_root,
                token_file,
                ttl: cert_ttl,
                server_name: ca_server_name,
            }),
            _ => anyhow::bail!(
                "no identity source: give --cert-dir, or --ca-address with --ca-root and --token-file"
            ),
        };
        Ok(SidecarConfig {
            config: self.config,
            workload: self.workload,
            identity,
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            ready_addr: self.ready_addr,
            inbound_ip: self.inbound_ip,
            app_host: self.app_host,
            detect_timeout: self.detect_timeout,
            idle_timeout: self.idle_timeout,
            drain_timeout: self.drain_timeout,
            dns_refresh: self.dns_refresh,
            max_connections: self.max_connections,
            max_inbound_connections: self
                .max_inbound_connections
                .unwrap_or_else(|| default_direction_cap(self.max_connections)),
            max_outbound_connections: self
                .max_outbound_connections
                .unwrap_or_else(|| default_direction_cap(self.max_connections)),
            threads: self.threads,
            resumption: !self.no_resumption,
            h2_pool: outrider::proxy::http::pool::PoolSettings {
                max_streams: self.h2_max_streams as usize,
                idle_timeout: self.h2_idle_timeout,
                max_connections: self.h2_max_connections as usize,
            },
            capture: self.capture.then(|| CaptureConfig {
                addrs: CaptureAddrs {
                    outbound: self.capture_outbound_addr,
                    inbound: self.capture_inbound_addr,
                },
                proxy_uid: self.proxy_uid,
                proxy_gid: self.proxy_gid.unwrap_or(self.proxy_uid),
            }),
            jwks: outrider::jwks::FetchConfig {
                ca_file: self.jwks_ca,
                refresh: self.jwks_refresh,
                retry_min: self.jwks_retry_min,
                retry_max: self.jwks_retry_max.max(self.jwks_retry_min),
                early_refresh_min: self.jwks_early_refresh_min,
                ..outrider::jwks::FetchConfig::default()
            },
            gateway: None,
        })
    }
}

/// A direction's default cap: three quarters of the total (at least one), so neither
/// direction can take every slot.
fn default_direction_cap(total: usize) -> usize {
    (total - total / 4).max(1)
}

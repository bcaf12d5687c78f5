//! `outrider ca init | issue | serve | token | rotate-root`: thin wrappers around
//! [`Authority`], [`CaServer`], [`TokenKey`] and [`rotation`].

use std::path::PathBuf;
use std::time::SystemTime;

use crate::ca::server::{CaServer, ServeConfig};
use crate::ca::token::TokenKey;
use crate::ca::{parse_duration, rotation, workload_id, write_file, Authority};

/// `outrider ca init --dir <dir> --trust-domain <td> [--ttl 87600h] [--force]`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, default_value = "87600h")]
    pub ttl: String,
    #[arg(long)]
    pub force: bool,
}

impl InitArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let ttl = parse_duration(&self.ttl)?;
        let ca = Authority::init(&self.dir, &self.trust_domain, ttl, self.force)?;
        // The token signing key too, now: `ca token` jobs run in parallel (docker-compose) and
        // must not race to create it.
        TokenKey::load_or_create(&self.dir)?;
        println!(
            "created CA for trust domain {} in {} (root-cert.pem, root-key.pem), valid until {}",
            ca.trust_domain(),
            self.dir.display(),
            rfc3339(ca.not_after()),
        );
        Ok(())
    }
}

/// `outrider ca issue --ca-dir <dir> --namespace <ns> --service-account <sa> --out <dir>`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    #[arg(long)]
    pub ca_dir: PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    #[arg(long)]
    pub dns: Vec<String>,
}

impl IssueArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let ttl = parse_duration(&self.ttl)?;
        let ca = Authority::load(&self.ca_dir)?;
        let id = workload_id(ca.trust_domain(), &self.namespace, &self.service_account)?;
        let issued = ca.issue(&id, ttl, &self.dns)?;
        Authority::write_svid(&issued, &self.out)?;
        // `rotate-root --step retire` waits for this leaf too.
        let until = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if until > rotation::issued_until(&self.ca_dir, ca.serial_hex()) {
            rotation::record_issued_until(&self.ca_dir, ca.serial_hex(), until)?;
        }
        println!(
            "issued {} (serial {}, valid until {}) into {} (cert-chain.pem, key.pem, root-cert.pem)",
            issued.id,
            issued.serial_hex,
            rfc3339(issued.not_after),
            self.out.display(),
        );
        Ok(())
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `outrider ca serve --dir <dir> [--listen 0.0.0.0:15012] [--dns ca] [--default-ttl 24h]
/// [--max-ttl 90d]`: the CSR signing service (Istio's `IstioCertificateService`).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The CA directory (made by `outrider ca init`).
    #[arg(long, env = "OUTRIDER_CA_DIR")]
    pub dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:15012", env = "OUTRIDER_CA_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// DNS names of the CA's serving certificate (what workloads dial). Repeatable.
    #[arg(long, default_values_t = [String::from("ca")])]
    pub dns: Vec<String>,
    /// Validity of certificates whose request asks for none.
    #[arg(long, default_value = "24h")]
    pub default_ttl: String,
    /// Longest validity a request may ask for (longer is refused).
    #[arg(long, default_value = "90d")]
    pub max_ttl: String,
    /// Certificates per identity per minute.
    #[arg(long, default_value_t = 60)]
    pub rate_limit: u32,
    /// Burst of certificates per identity.
    #[arg(long, default_value_t = 10)]
    pub burst: u32,
    /// Serve the CA's own counters on `http://<addr>/stats/prometheus`.
    #[arg(long, env = "OUTRIDER_CA_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Connection limits and deadlines.
    #[command(flatten)]
    pub limits: Box<ServeLimitArgs>,
    /// Istio's own clients: node agents, IP SANs.
    #[command(flatten)]
    pub clients: Box<ServeClientArgs>,
}

/// `ca serve` flags that bound what one client can hold (boxed into [`ServeArgs`] to keep the
/// command enum small).
#[derive(Debug, clap::Args)]
pub struct ServeLimitArgs {
    /// Open connections in all; more are closed at accept.
    #[arg(long, default_value_t = crate::ca::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Open connections per source IP address (mid-handshake ones included).
    #[arg(long, env = "OUTRIDER_CA_MAX_CONNECTIONS_PER_IP", default_value_t = crate::ca::server::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Deadline for a client's TLS handshake.
    #[arg(long, default_value = "10s")]
    pub handshake_timeout: String,
    /// Close a connection with no request in flight for this long.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: String,
    /// HTTP/2 keep-alive PING interval.
    #[arg(long, default_value = "30s")]
    pub keepalive_interval: String,
    /// Close a connection whose keep-alive PING is not answered within this.
    #[arg(long, default_value = "10s")]
    pub keepalive_timeout: String,
    /// Deadline for one request (DEADLINE_EXCEEDED after it).
    #[arg(long, default_value = "10s")]
    pub request_timeout: String,
}

/// `ca serve` flags for Istio's own clients (ztunnel, istio-agent).
#[derive(Debug, clap::Args)]
pub struct ServeClientArgs {
    /// IP address SAN of the CA's serving certificate (clients dialling the CA by address).
    /// Repeatable.
    #[arg(long = "ip")]
    pub ips: Vec<std::net::IpAddr>,
    /// A node agent's `<namespace>/<service-account>` that may request certificates for
    /// other workloads (`ImpersonatedIdentity`, like Istio's CA_TRUSTED_NODE_ACCOUNTS).
    /// Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "trusted-node-account",
        env = "OUTRIDER_CA_TRUSTED_NODE_ACCOUNTS",
        value_delimiter = ','
    )]
    pub trusted_node_accounts: Vec<crate::ca::impersonation::NodeAccount>,
    /// YAML file: node account → the identities it may request (`<ns>/*` or `<ns>/<sa>`).
    #[arg(long, env = "OUTRIDER_CA_NODE_IDENTITIES")]
    pub node_identities: Option<PathBuf>,
}

impl ServeArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let config = ServeConfig {
            dir: self.dir,
            listen: self.listen,
            dns: self.dns,
            default_ttl: parse_duration(&self.default_ttl)?,
            max_ttl: parse_duration(&self.max_ttl)?,
            rate_per_minute: self.rate_limit,
            burst: self.burst,
            metrics: self.metrics_addr,
            max_connections: self.limits.max_connections,
            max_connections_per_ip: self.limits.max_connections_per_ip,
            handshake_timeout: parse_duration(&self.limits.handshake_timeout)?,
            idle_timeout: parse_duration(&self.limits.idle_timeout)?,
            keepalive_interval: parse_duration(&self.limits.keepalive_interval)?,
            keepalive_timeout: parse_duration(&self.limits.keepalive_timeout)?,
            request_timeout: parse_duration(&self.limits.request_timeout)?,
            ips: self.clients.ips,
            trusted_node_accounts: self.clients.trusted_node_accounts,
            node_identities: self.clients.node_identities,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let server = CaServer::bind(config).await?;
            // One line on stdout with the bound address (scripts and tests use port 0).
            println!("CA service listening on {}", server.local_addr());
            if let Some(addr) = server.metrics_addr() {
                tracing::info!(%addr, "CA metrics on /stats/prometheus");
            }
            tokio::select! {
                () = server.run() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        })
    }
}

/// `outrider ca token --dir <dir> --namespace <ns> --service-account <sa> [--ttl 24h]
/// [--out <dir>]`: prints a bootstrap token (ES256 JWT, audience `istio-ca`) on stdout, or
/// writes a sidecar's bootstrap files into `--out`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(long, env = "OUTRIDER_CA_DIR")]
    pub dir: PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Write `token` (0600, for --token-file) and `root-cert.pem` (the CA's trust bundle, for
    /// --ca-root) into this directory instead of printing: for images without a shell, where
    /// the output cannot be redirected (the docker-compose file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl TokenArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let ttl = parse_duration(&self.ttl)?;
        let ca = Authority::load(&self.dir)?;
        // Refuse names that could never become an identity, before signing anything.
        workload_id(ca.trust_domain(), &self.namespace, &self.service_account)?;
        let key = TokenKey::load_or_create(&self.dir)?;
        let token = key.mint(&self.namespace, &self.service_account, ttl)?;
        // No trailing newline, like a Kubernetes projected token: clients that send the
        // file's bytes as they are (ztunnel) would otherwise put a newline in the header.
        let Some(out) = self.out else {
            print!("{token}");
            std::io::Write::flush(&mut std::io::stdout())?;
            return Ok(());
        };
        let bundle = rotation::load_material(&self.dir)?.bundle_pem;
        std::fs::create_dir_all(&out)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
        write_file(&out.join("token"), token.as_bytes(), 0o600)?;
        write_file(&out.join("root-cert.pem"), bundle.as_bytes(), 0o644)?;
        println!(
            "wrote the bootstrap token of spiffe://{}/ns/{}/sa/{} and the CA's trust bundle into {} (token, root-cert.pem)",
            ca.trust_domain(),
            self.namespace,
            self.service_account,
            out.display()
        );
        Ok(())
    }
}

/// One step of a root rotation (see `outrider::ca::rotation`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RotationStep {
    /// Generate a new root and add it to the bundle handed out; signing is unchanged.
    Prepare,
    /// Sign with the new root; the old one stays in the bundle.
    Activate,
    /// Drop the old root from the bundle once no leaf it signed is still valid.
    Retire,
}

/// `outrider ca rotate-root --dir <dir> --step prepare|activate|retire`.
#[derive(Debug, clap::Args)]
pub struct RotateRootArgs {
    #[arg(long, env = "OUTRIDER_CA_DIR")]
    pub dir: PathBuf,
    #[arg(long, value_enum)]
    pub step: RotationStep,
    /// Validity of the new root (prepare).
    #[arg(long, default_value = "87600h")]
    pub ttl: String,
    /// Retire even though leaves signed by the old root are still valid (they stop verifying).
    #[arg(long)]
    pub force: bool,
}

impl RotateRootArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let message = match self.step {
            RotationStep::Prepare => rotation::prepare(&self.dir, parse_duration(&self.ttl)?)?,
            RotationStep::Activate => rotation::activate(&self.dir)?,
            RotationStep::Retire => rotation::retire(&self.dir, self.force)?,
        };
        println!("{message}");
        Ok(())
    }
}

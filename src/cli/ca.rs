//! `outrider ca init | issue | serve | token | rotate-root` flags → the plain options of
//! [`outrider::ca::commands`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use outrider::ca::commands::{self, InitOptions, IssueOptions, RotationStep, TokenOptions};
use outrider::ca::impersonation::NodeAccount;
use outrider::ca::server::{ServeConfig, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};

use super::duration;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root CA (root-cert.pem, root-key.pem).
    Init(InitArgs),
    /// Issue a workload certificate (cert-chain.pem, key.pem, root-cert.pem).
    Issue(IssueArgs),
    /// Serve Istio's CA protocol (CSR signing) over TLS.
    Serve(Box<ServeArgs>),
    /// Print a bootstrap token for a service account.
    Token(TokenArgs),
    /// Rotate the root: --step prepare, then activate, then retire.
    RotateRoot(RotateRootArgs),
}

impl CaCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            CaCommand::Init(a) => commands::init(InitOptions {
                dir: a.dir,
                trust_domain: a.trust_domain,
                ttl: a.ttl,
                force: a.force,
            }),
            CaCommand::Issue(a) => commands::issue(IssueOptions {
                ca_dir: a.ca_dir,
                namespace: a.namespace,
                service_account: a.service_account,
                out: a.out,
                ttl: a.ttl,
                dns: a.dns,
            }),
            CaCommand::Serve(a) => commands::serve(ServeConfig {
                dir: a.dir,
                listen: a.listen,
                dns: a.dns,
                default_ttl: a.default_ttl,
                max_ttl: a.max_ttl,
                rate_per_minute: a.rate_limit,
                burst: a.burst,
                metrics: a.metrics_addr,
                max_connections: a.max_connections,
                max_connections_per_ip: a.max_connections_per_ip,
                handshake_timeout: a.handshake_timeout,
                idle_timeout: a.idle_timeout,
                keepalive_interval: a.keepalive_interval,
                keepalive_timeout: a.keepalive_timeout,
                request_timeout: a.request_timeout,
                ips: a.ips,
                trusted_node_accounts: a.trusted_node_accounts,
                node_identities: a.node_identities,
            }),
            CaCommand::Token(a) => commands::token(TokenOptions {
                dir: a.dir,
                namespace: a.namespace,
                service_account: a.service_account,
                ttl: a.ttl,
                out: a.out,
            }),
            CaCommand::RotateRoot(a) => {
                let step = match a.step {
                    Step::Prepare => RotationStep::Prepare { ttl: a.ttl },
                    Step::Activate => RotationStep::Activate,
                    Step::Retire => RotationStep::Retire { force: a.force },
                };
                commands::rotate_root(&a.dir, step)
            }
        }
    }
}

/// `outrider ca init --dir <dir> --trust-domain <td> [--ttl 87600h] [--force]`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, default_value = "87600h", value_parser = duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub force: bool,
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
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub dns: Vec<String>,
}

/// `outrider ca serve --dir <dir> [--listen 0.0.0.0:15012] [--dns ca] [--default-ttl 24h]
/// [--max-ttl 90d]`: the CSR signing service (Istio's `IstioCertificateService`).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The CA directory (made by `outrider ca init`).
    #[arg(long, env = "OUTRIDER_CA_DIR")]
    pub dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:15012", env = "OUTRIDER_CA_LISTEN")]
    pub listen: SocketAddr,
    /// DNS names of the CA's serving certificate (what workloads dial). Repeatable.
    #[arg(long, default_values_t = [String::from("ca")])]
    pub dns: Vec<String>,
    /// Validity of certificates whose request asks for none.
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub default_ttl: Duration,
    /// Longest validity a request may ask for (longer is refused).
    #[arg(long, default_value = "90d", value_parser = duration)]
    pub max_ttl: Duration,
    /// Certificates per identity per minute.
    #[arg(long, default_value_t = 60)]
    pub rate_limit: u32,
    /// Burst of certificates per identity.
    #[arg(long, default_value_t = 10)]
    pub burst: u32,
    /// Serve the CA's own counters on `http://<addr>/stats/prometheus`.
    #[arg(long, env = "OUTRIDER_CA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Open connections in all; more are closed at accept.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Open connections per source IP address (mid-handshake ones included).
    #[arg(long, env = "OUTRIDER_CA_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Deadline for a client's TLS handshake.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive PING interval.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub keepalive_interval: Duration,
    /// Close a connection whose keep-alive PING is not answered within this.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub keepalive_timeout: Duration,
    /// Deadline for one request (DEADLINE_EXCEEDED after it).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub request_timeout: Duration,
    /// IP address SAN of the CA's serving certificate (clients dialling the CA by address).
    /// Repeatable.
    #[arg(long = "ip")]
    pub ips: Vec<IpAddr>,
    /// A node agent's `<namespace>/<service-account>` that may request certificates for
    /// other workloads (`ImpersonatedIdentity`, like Istio's CA_TRUSTED_NODE_ACCOUNTS).
    /// Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "trusted-node-account",
        env = "OUTRIDER_CA_TRUSTED_NODE_ACCOUNTS",
        value_delimiter = ','
    )]
    pub trusted_node_accounts: Vec<NodeAccount>,
    /// YAML file: node account → the identities it may request (`<ns>/*` or `<ns>/<sa>`).
    #[arg(long, env = "OUTRIDER_CA_NODE_IDENTITIES")]
    pub node_identities: Option<PathBuf>,
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
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub ttl: Duration,
    /// Write `token` (0600, for --token-file) and `root-cert.pem` (the CA's trust bundle, for
    /// --ca-root) into this directory instead of printing: for images without a shell, where
    /// the output cannot be redirected (the docker-compose file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One step of a root rotation.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Step {
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
    pub step: Step,
    /// Validity of the new root (prepare).
    #[arg(long, default_value = "87600h", value_parser = duration)]
    pub ttl: Duration,
    /// Retire even though leaves signed by the old root are still valid (they stop verifying).
    #[arg(long)]
    pub force: bool,
}

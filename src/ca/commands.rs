//! `outrider ca init | issue | serve | token | rotate-root`: thin wrappers around
//! [`Authority`], [`CaServer`], [`TokenKey`] and [`rotation`], taking plain options (the
//! command line turns flags into them).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::ca::server::{CaServer, ServeConfig};
use crate::ca::token::TokenKey;
use crate::ca::{rotation, workload_id, write_file, Authority};

/// `outrider ca init`: a new root (and the token signing key).
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub trust_domain: String,
    pub ttl: Duration,
    /// Overwrite an existing CA.
    pub force: bool,
}

pub fn init(o: InitOptions) -> anyhow::Result<()> {
    let ca = Authority::init(&o.dir, &o.trust_domain, o.ttl, o.force)?;
    // The token signing key too, now: `ca token` jobs run in parallel (docker-compose) and
    // must not race to create it.
    TokenKey::load_or_create(&o.dir)?;
    println!(
        "created CA for trust domain {} in {} (root-cert.pem, root-key.pem), valid until {}",
        ca.trust_domain(),
        o.dir.display(),
        rfc3339(ca.not_after()),
    );
    Ok(())
}

/// `outrider ca issue`: one workload certificate in Istio's file names.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    pub ca_dir: PathBuf,
    pub namespace: String,
    pub service_account: String,
    pub out: PathBuf,
    pub ttl: Duration,
    /// Extra DNS SANs.
    pub dns: Vec<String>,
}

pub fn issue(o: IssueOptions) -> anyhow::Result<()> {
    let ca = Authority::load(&o.ca_dir)?;
    let id = workload_id(ca.trust_domain(), &o.namespace, &o.service_account)?;
    let issued = ca.issue(&id, o.ttl, &o.dns)?;
    Authority::write_svid(&issued, &o.out)?;
    // `rotate-root --step retire` waits for this leaf too.
    let until = issued
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if until > rotation::issued_until(&o.ca_dir, ca.serial_hex()) {
        rotation::record_issued_until(&o.ca_dir, ca.serial_hex(), until)?;
    }
    println!(
        "issued {} (serial {}, valid until {}) into {} (cert-chain.pem, key.pem, root-cert.pem)",
        issued.id,
        issued.serial_hex,
        rfc3339(issued.not_after),
        o.out.display(),
    );
    Ok(())
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `outrider ca serve`: the CSR signing service until Ctrl-C.
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
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

/// `outrider ca token`: a bootstrap token (ES256 JWT, audience `istio-ca`) on stdout, or a
/// sidecar's bootstrap files in `out`.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    pub dir: PathBuf,
    pub namespace: String,
    pub service_account: String,
    pub ttl: Duration,
    /// Write `token` (0600) and `root-cert.pem` here instead of printing: for images without
    /// a shell, where the output cannot be redirected (the docker-compose file).
    pub out: Option<PathBuf>,
}

pub fn token(o: TokenOptions) -> anyhow::Result<()> {
    let ca = Authority::load(&o.dir)?;
    // Refuse names that could never become an identity, before signing anything.
    workload_id(ca.trust_domain(), &o.namespace, &o.service_account)?;
    let key = TokenKey::load_or_create(&o.dir)?;
    let token = key.mint(&o.namespace, &o.service_account, o.ttl)?;
    // No trailing newline, like a Kubernetes projected token: clients that send the file's
    // bytes as they are (ztunnel) would otherwise put a newline in the header.
    let Some(out) = o.out else {
        print!("{token}");
        std::io::Write::flush(&mut std::io::stdout())?;
        return Ok(());
    };
    let bundle = rotation::load_material(&o.dir)?.bundle_pem;
    std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    write_file(&out.join("token"), token.as_bytes(), 0o600)?;
    write_file(&out.join("root-cert.pem"), bundle.as_bytes(), 0o644)?;
    println!(
        "wrote the bootstrap token of spiffe://{}/ns/{}/sa/{} and the CA's trust bundle into {} (token, root-cert.pem)",
        ca.trust_domain(),
        o.namespace,
        o.service_account,
        out.display()
    );
    Ok(())
}

/// One step of a root rotation (see [`rotation`]).
#[derive(Debug, Clone, Copy)]
pub enum RotationStep {
    /// Generate a new root valid for `ttl` and add it to the bundle handed out; signing is
    /// unchanged.
    Prepare { ttl: Duration },
    /// Sign with the new root; the old one stays in the bundle.
    Activate,
    /// Drop the old root from the bundle once no leaf it signed is still valid (`force`:
    /// even though some still are; they stop verifying).
    Retire { force: bool },
}

/// `outrider ca rotate-root`.
pub fn rotate_root(dir: &std::path::Path, step: RotationStep) -> anyhow::Result<()> {
    let message = match step {
        RotationStep::Prepare { ttl } => rotation::prepare(dir, ttl)?,
        RotationStep::Activate => rotation::activate(dir)?,
        RotationStep::Retire { force } => rotation::retire(dir, force)?,
    };
    println!("{message}");
    Ok(())
}

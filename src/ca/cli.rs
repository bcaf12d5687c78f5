//! `outrider ca init` and `outrider ca issue`: thin wrappers around [`Authority`].

use std::path::PathBuf;
use std::time::SystemTime;

use crate::ca::{parse_duration, workload_id, Authority};

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

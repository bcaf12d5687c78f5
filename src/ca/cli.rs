//! `outrider ca init` and `outrider ca issue`.

use std::path::PathBuf;

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
        anyhow::bail!("outrider ca init is not built yet")
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
        anyhow::bail!("outrider ca issue is not built yet")
    }
}

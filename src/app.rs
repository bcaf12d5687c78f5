//! Wiring of the sidecar: configuration → identity store → TLS → metrics → listeners.

use std::path::PathBuf;

/// `outrider run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A YAML file or a directory of YAML files (mesh.yaml).
    #[arg(long, env = "OUTRIDER_CONFIG")]
    pub config: PathBuf,
    /// Which workload of the configuration this sidecar runs beside.
    #[arg(long, env = "OUTRIDER_WORKLOAD")]
    pub workload: String,
    /// Directory with cert-chain.pem, key.pem, root-cert.pem (watched for changes).
    #[arg(long, env = "OUTRIDER_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
}

impl RunArgs {
    pub fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("outrider run is not built yet")
    }
}

/// Installs the tracing subscriber: human-readable by default, JSON lines with `--log-json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTRIDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

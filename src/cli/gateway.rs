//! `outrider gateway` flags → [`SidecarConfig`] with its gateway part.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use outrider::app::{GatewayConfig, SidecarConfig};

use super::duration;
use super::run::RunArgs;

/// `outrider gateway`: the sidecar's flags (identity, admin, metrics, limits, JWKS) plus the
/// edge's own.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: RunArgs,
    /// Where a Gateway's `credentialName: X` is found: the directory `<dir>/X/` with
    /// tls.crt + tls.key (+ ca.crt) or cert + key (+ cacert); the MUTUAL CA from `<dir>/X-cacert/`
    /// when it exists. Kubernetes secret volumes (`..data` symlinks) work as mounted.
    #[arg(long, env = "OUTRIDER_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// IP address every Gateway server port is bound on.
    #[arg(long, env = "OUTRIDER_LISTEN_IP", default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,
    /// How often edge certificate files and credential directories are checked for changes
    /// (a changed file is served from the next handshake on; a broken one keeps the old).
    #[arg(long, env = "OUTRIDER_CERT_POLL", default_value = "1s", value_parser = duration)]
    pub cert_poll: Duration,
}

impl GatewayArgs {
    pub fn into_config(self) -> anyhow::Result<SidecarConfig> {
        if self.common.capture {
            anyhow::bail!(
                "--capture is for sidecars: a gateway listens on its Gateway servers' ports"
            );
        }
        let mut config = self.common.into_config()?;
        config.gateway = Some(GatewayConfig {
            credentials_dir: self.credentials_dir,
            listen_ip: self.listen_ip,
            cert_poll: self.cert_poll,
        });
        Ok(config)
    }
}

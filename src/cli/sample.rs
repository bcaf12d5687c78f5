//! `outrider sample-app` flags → [`SampleConfig`]. Self-contained (no `super::`): the
//! `cargo run --example age|name|sentences` programs include this file too.

use std::net::SocketAddr;

use outrider::samples::{SampleConfig, Service};

/// `outrider sample-app --service age|name|sentences`: one service of the sample app.
#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// age, name or sentences.
    #[arg(long)]
    pub service: Service,
    /// Where the service listens (its sidecar's `targetPort`).
    #[arg(long, env = "SAMPLE_LISTEN", default_value = "127.0.0.1:9080")]
    pub listen: SocketAddr,
    /// The version label it reports (`v1`, `v2`).
    #[arg(long, env = "SAMPLE_VERSION", default_value = "v1")]
    pub version: String,
    /// For `sentences`: where `name` is reached (its sidecar's outbound bind address).
    #[arg(long, env = "SAMPLE_NAME_ADDR")]
    pub name_addr: Option<String>,
    /// For `sentences`: where `age` is reached.
    #[arg(long, env = "SAMPLE_AGE_ADDR")]
    pub age_addr: Option<String>,
}

impl SampleArgs {
    pub fn into_config(self) -> SampleConfig {
        SampleConfig {
            service: self.service,
            listen: self.listen,
            version: self.version,
            name_addr: self.name_addr,
            age_addr: self.age_addr,
        }
    }
}

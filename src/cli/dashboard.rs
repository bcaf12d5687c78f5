//! Flags of `outrider dashboard`: where to listen, where the numbers come from.

use std::net::SocketAddr;
use std::time::Duration;

use outrider::dashboard::{DashboardOptions, Source};

use super::duration;

/// `outrider dashboard [--listen 127.0.0.1:20001] (--prometheus <url> | --scrape <host:port>...)`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["prometheus", "scrape"])))]
pub struct DashboardArgs {
    /// Where the page is served; loopback by default (it shows the mesh's topology).
    #[arg(
        long,
        env = "OUTRIDER_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:20001"
    )]
    pub listen: SocketAddr,
    /// A Prometheus server that scrapes the sidecars (`http://prometheus:9090`).
    #[arg(long, env = "OUTRIDER_DASHBOARD_PROMETHEUS", conflicts_with = "scrape")]
    pub prometheus: Option<String>,
    /// A sidecar's metrics or admin listener (`host:port`) to read directly; repeat for each.
    /// An admin listener also gives the workload's mode and its plaintext clients.
    #[arg(long, env = "OUTRIDER_DASHBOARD_SCRAPE", value_delimiter = ',')]
    pub scrape: Vec<String>,
    /// A sidecar's admin listener (`host:port`) for its mode and plaintext clients only (with
    /// `--prometheus`); repeat for each.
    #[arg(long, env = "OUTRIDER_DASHBOARD_ADMIN", value_delimiter = ',')]
    pub admin: Vec<String>,
    /// How often sidecars are read and the page refreshes.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub interval: Duration,
    /// The traffic window the page opens with (the page offers 1, 5, 15 and 30 minutes too).
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub window: Duration,
}

impl DashboardArgs {
    pub fn into_options(self) -> DashboardOptions {
        DashboardOptions {
            listen: self.listen,
            source: match self.prometheus {
                Some(url) => Source::Prometheus(url),
                None => Source::Scrape(self.scrape),
            },
            admin: self.admin,
            interval: self.interval,
            window: self.window,
        }
    }
}

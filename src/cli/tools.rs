//! Flags of the tools around the sidecar: `check`, `demo`, `fetch` (`sample-app` is in
//! `sample.rs`, shared with the examples).

use std::path::PathBuf;
use std::time::Duration;

use outrider::config::check::{CheckOptions, Output};
use outrider::demo::DemoOptions;
use outrider::fetch::FetchOptions;

use super::duration;

/// `outrider check --config <path> [--workload <name>] [--output table|json]`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A YAML file or a directory of YAML files; repeat to combine several, in order.
    #[arg(long, env = "OUTRIDER_CONFIG", required = true)]
    pub config: Vec<PathBuf>,
    /// Only this workload's plan.
    #[arg(long, env = "OUTRIDER_WORKLOAD")]
    pub workload: Option<String>,
    /// `table` or `json`.
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Table,
    Json,
}

impl CheckArgs {
    pub fn into_options(self) -> CheckOptions {
        CheckOptions {
            config: self.config,
            workload: self.workload,
            output: match self.output {
                OutputArg::Table => Output::Table,
                OutputArg::Json => Output::Json,
            },
        }
    }
}

/// `outrider demo [--once] [--requests N]`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Play the story once and exit (instead of running until Ctrl-C).
    #[arg(long)]
    pub once: bool,
    /// Requests sent through the mesh at each step.
    #[arg(long, default_value_t = 6)]
    pub requests: usize,
}

impl DemoArgs {
    pub fn into_options(self) -> DemoOptions {
        DemoOptions {
            once: self.once,
            requests: self.requests,
        }
    }
}

/// `outrider fetch <url> [--timeout 5s] [--every 5s] [--quiet] [--header 'Name: value']...`.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// `http://host:port/path` (plaintext only; host is a name or an IP).
    pub url: String,
    /// Deadline for the whole request (connect, send, read the answer).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    /// Repeat forever with this pause, printing one line per attempt (never exits).
    #[arg(long, value_parser = duration)]
    pub every: Option<Duration>,
    /// Print nothing on success (health checks).
    #[arg(long)]
    pub quiet: bool,
    /// An extra request header, `Name: value` (repeatable), as curl's -H:
    /// `--header "Authorization: Bearer $TOKEN"`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
}

impl FetchArgs {
    pub fn into_options(self) -> FetchOptions {
        FetchOptions {
            url: self.url,
            timeout: self.timeout,
            every: self.every,
            quiet: self.quiet,
            headers: self.headers,
        }
    }
}

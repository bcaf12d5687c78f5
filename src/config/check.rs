//! `outrider check`: validate the configuration and print the plan.

use std::path::PathBuf;

/// `outrider check --config <path> [--workload <name>] [--output table|json]`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A YAML file or a directory of YAML files.
    #[arg(long, env = "OUTRIDER_CONFIG")]
    pub config: PathBuf,
    /// Only this workload's plan.
    #[arg(long, env = "OUTRIDER_WORKLOAD")]
    pub workload: Option<String>,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub output: String,
}

impl CheckArgs {
    /// Runs the check; returns the process exit code.
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        anyhow::bail!("outrider check is not built yet")
    }
}

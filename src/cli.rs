//! The command line: `run | ca init/issue | check | demo`. Every flag of `run` can also be
//! set by an `OUTRIDER_*` environment variable, for containers.

use clap::{Parser, Subcommand};

use crate::app::RunArgs;
use crate::ca::cli::{InitArgs, IssueArgs, RotateRootArgs, ServeArgs, TokenArgs};
use crate::config::check::CheckArgs;
use crate::demo::DemoArgs;
use crate::fetch::FetchArgs;
use crate::samples::SampleArgs;

/// outrider: a sidecar mTLS proxy with SPIFFE identities.
#[derive(Debug, Parser)]
#[command(name = "outrider", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "OUTRIDER_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar beside one workload.
    Run(Box<RunArgs>),
    /// The mesh CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Validate the configuration and print the effective mode per port and why.
    Check(CheckArgs),
    /// The one-command local mesh on loopback: CA, sample app, sidecars, a plaintext intruder.
    Demo(DemoArgs),
    /// One service of the seeds' sample app (age, name, sentences): a tiny HTTP server.
    SampleApp(SampleArgs),
    /// A plaintext HTTP GET (health checks and the intruder in a FROM-scratch image).
    Fetch(FetchArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root CA (root-cert.pem, root-key.pem).
    Init(InitArgs),
    /// Issue a workload certificate (cert-chain.pem, key.pem, root-cert.pem).
    Issue(IssueArgs),
    /// Serve Istio's CA protocol (CSR signing) over TLS.
    Serve(ServeArgs),
    /// Print a bootstrap token for a service account.
    Token(TokenArgs),
    /// Rotate the root: --step prepare, then activate, then retire.
    RotateRoot(RotateRootArgs),
}

/// Parses a duration flag (`500ms`, `30s`, `1h30m`) with the CA's duration syntax.
pub(crate) fn duration(s: &str) -> Result<std::time::Duration, String> {
    crate::ca::parse_duration(s).map_err(|e| e.to_string())
}

//! The command line (clap): `run | gateway | ca ... | check | demo | sample-app | fetch | dashboard |
//! iptables`. Each subcommand's flags (and their `OUTRIDER_*` environment variables, for
//! containers) become the plain configuration struct of the library module that does the
//! work; nothing in the library sees clap.

mod ca;
mod dashboard;
mod gateway;
mod iptables;
mod run;
mod sample;
mod tools;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// outrider: a sidecar mTLS proxy with SPIFFE identities.
#[derive(Debug, Parser)]
#[command(name = "outrider", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "OUTRIDER_LOG_JSON", value_parser = boolish())]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar beside one workload.
    Run(Box<run::RunArgs>),
    /// The ingress gateway: Istio Gateway + VirtualService at the edge, TLS / mTLS with the
    /// user's certificates, into the mesh over mesh mTLS with the gateway's own identity.
    ///
    /// Runs the Workload named by --workload, which must have `spec.role: gateway`; listens
    /// on the `port.number` of every Gateway server that selects it (on --listen-ip).
    /// Identity, admin, metrics, readiness, reload and drain as `outrider run`.
    Gateway(Box<gateway::GatewayArgs>),
    /// The mesh CA.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Validate the configuration and print the effective mode per port and why.
    Check(tools::CheckArgs),
    /// The one-command local mesh on loopback: CA, sample app, sidecars, a plaintext intruder.
    Demo(tools::DemoArgs),
    /// One service of the labs' sample app (age, name, sentences, auth): a tiny HTTP server.
    ///
    /// `auth` is a small OpenID Connect issuer for the labs, at Keycloak's URLs: discovery at
    /// /auth/realms/<realm>/.well-known/openid-configuration, the JWKS at
    /// .../protocol/openid-connect/certs, RS256 access tokens from the password grant at
    /// .../protocol/openid-connect/token, a new signing key on POST .../rotate or SIGHUP. It is a
    /// sample for the labs, not a product identity provider: plain-text passwords, no
    /// clients, no refresh or ID tokens, and anyone who reaches it may rotate its key.
    SampleApp(sample::SampleArgs),
    /// A plaintext HTTP GET (health checks and the intruder in a FROM-scratch image).
    Fetch(tools::FetchArgs),
    /// A live service graph of the mesh: padlocks on mTLS edges, plaintext clients, rates.
    Dashboard(dashboard::DashboardArgs),
    /// Install Istio's transparent-capture nat rules in this network namespace (the init step).
    ///
    /// As Istio's init container (istio-iptables) does: the app's outbound TCP connections go
    /// to the proxy's port (-p, 15001), every inbound one to its inbound capture port (-z,
    /// 15006), except the proxy's own traffic (-u/-g, UID/GID 1337: run the sidecar as that
    /// user), port 15008 and the excluded inbound ports (-d). Chains ISTIO_INBOUND,
    /// ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT in the nat table; IPv4 only. Applied with
    /// iptables-restore in one transaction; running it again replaces the earlier install,
    /// --cleanup removes it. Needs root or CAP_NET_ADMIN (docker: cap_add: [NET_ADMIN]) and the
    /// iptables programs (--iptables-bin).
    Iptables(iptables::IptablesArgs),
    /// A probe for capture rules: answer each connection with where it was accepted and its
    /// original destination (SO_ORIGINAL_DST).
    CaptureEcho(iptables::CaptureEchoArgs),
}

impl Command {
    /// Runs the subcommand; `Ok` carries the exit code.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match self {
            Command::Run(args) => done(outrider::app::run(args.into_config()?)),
            Command::Gateway(args) => done(outrider::app::run(args.into_config()?)),
            Command::Ca(command) => done(command.run()),
            Command::Check(args) => args.into_options().run(),
            Command::Demo(args) => done(args.into_options().run()),
            Command::SampleApp(args) => done(args.into_config().run()),
            Command::Fetch(args) => done(args.into_options().run()),
            Command::Dashboard(args) => done(args.into_options().run().map_err(Into::into)),
            Command::Iptables(args) => done(args.into_options().run().map_err(Into::into)),
            Command::CaptureEcho(args) => done(args.into_options().run().map_err(Into::into)),
        }
    }
}

/// Parses a duration flag (`500ms`, `30s`, `1h30m`).
fn duration(s: &str) -> Result<Duration, String> {
    outrider::duration::parse(s).map_err(|e| e.to_string())
}

/// Boolean flags whose environment variable may say 1/0, true/false, yes/no, on/off.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

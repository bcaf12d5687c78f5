//! The `auth` service of the labs' sample app, as a standalone program: a small OIDC issuer
//! (a sample, not a product identity provider).
//! `cargo run --example auth -- --listen 127.0.0.1:8080`, then
//! `curl -d username=alice -d password=alice -d grant_type=password -d client_id=frontend
//! http://127.0.0.1:8080/auth/realms/mesh/protocol/openid-connect/token`
//! (see `outrider sample-app --help`).

use clap::Parser;

#[path = "../src/cli/sample.rs"]
mod sample;

/// A small OIDC issuer for the labs: a sample, not a product identity provider.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    app: sample::SampleArgs,
}

fn main() -> anyhow::Result<()> {
    let fixed = ["auth".to_string(), "--service".into(), "auth".into()];
    let args = Args::parse_from(fixed.into_iter().chain(std::env::args().skip(1)));
    args.app.into_config().run()
}

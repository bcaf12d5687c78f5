//! The `name` service of the labs' sample app, as a standalone program:
//! `cargo run --example name -- --listen 127.0.0.1:9080` (see `outrider sample-app --help`).

use clap::Parser;

#[path = "../src/cli/sample.rs"]
mod sample;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    app: sample::SampleArgs,
}

fn main() -> anyhow::Result<()> {
    let fixed = ["name".to_string(), "--service".into(), "name".into()];
    let args = Args::parse_from(fixed.into_iter().chain(std::env::args().skip(1)));
    args.app.into_config().run()
}

//! The `outrider` binary: parse the command line into plain configuration, set up logging,
//! run the chosen role, map errors to the exit code. No logic of its own.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    outrider::logging::init(cli.log_json);
    match cli.command.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("outrider: {err:#}");
            ExitCode::FAILURE
        }
    }
}

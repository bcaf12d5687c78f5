use std::process::ExitCode;

use clap::Parser;

use outrider::cli::{CaCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    outrider::app::init_logging(cli.log_json);
    let result = match cli.command {
        Command::Run(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Ca(CaCommand::Init(args)) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Ca(CaCommand::Issue(args)) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Ca(CaCommand::Serve(args)) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Ca(CaCommand::Token(args)) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Ca(CaCommand::RotateRoot(args)) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Check(args) => args.run(),
        Command::Demo(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::SampleApp(args) => args.run().map(|()| ExitCode::SUCCESS),
        Command::Fetch(args) => args.run().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("outrider: {err:#}");
            ExitCode::FAILURE
        }
    }
}

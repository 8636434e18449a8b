//! The `berth` binary: initialises logging, parses the command line and runs the command. All
//! behaviour lives in the library (`berth::cli`); this file must stay this small.

use std::process::ExitCode;

use berth::logging::Logging;
use clap::Parser;

fn main() -> ExitCode {
    let cli = berth::cli::Cli::parse();
    let log = cli.log_config();
    let logging = Logging::init(&log.level, log.format);

    match cli.run_with(logging) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

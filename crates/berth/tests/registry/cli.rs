//! Running the real `berth` binary, as the CLI suites do.

use std::process::{Command, Output};

/// Runs `berth` with `args`, without a `BERTH_CONFIG` from the environment and logging only
/// warnings, and returns its output.
pub fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run berth")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

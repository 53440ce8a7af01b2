//! A minimal host for the runtime's helper subcommands (`env-init`, `env-enter`), used by the
//! runtime's own tests and by embedders that do not want to re-execute their main binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    runtime::helper::run_if_requested().unwrap_or_else(|| {
        eprintln!("usage: spawngrid-env-helper env-init|env-enter CONFIG (started by the runtime)");
        ExitCode::from(2)
    })
}

//! `spawngrid`: the one binary of Spawngrid. This file parses the command line and reports
//! errors; each command family lives in its own module.

mod cpu_cmd;
mod env_cmd;
mod lib_cmd;
mod mount_cmd;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Spawngrid: environments spawned in milliseconds from a library of immutable snapshots.
#[derive(Parser)]
#[command(name = "spawngrid", version, about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work on a node's library offline: import, export, log, diff, verify, gc, stats.
    Lib(lib_cmd::LibArgs),
    /// Run environments on this node (root): spawn, exec, save, boom, ls.
    Env(env_cmd::EnvArgs),
}

fn main() -> ExitCode {
    // The runtime re-executes this binary for namespace setup; that must run before anything
    // else (single-threaded).
    if let Some(code) = runtime::helper::run_if_requested() {
        return code;
    }
    // Like other Unix tools, die quietly when the reader of our output goes away
    // (`spawngrid lib diff A B | head`) instead of failing on every write.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPAWNGRID_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lib(args) => lib_cmd::run(args, cli.json),
        Command::Env(args) => env_cmd::run(args, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("spawngrid: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

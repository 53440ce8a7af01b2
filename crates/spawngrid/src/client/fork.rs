//! `spawngrid fork ENV [--count N] [--as PREFIX]`: the node saves the running env once, as the
//! new name PREFIX (default `ENV-YYYYMMDDTHHMMSS`, UTC), and spawns N copies of that save as
//! envs `PREFIX-1` … `PREFIX-N`; prints the save and how to attach to each copy.

use super::{call, print_json, NodeArgs};
use anyhow::Result;
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// `spawngrid fork`.
#[derive(Args)]
pub struct ForkArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The running env to fork.
    env: String,
    /// How many copies.
    #[arg(long, default_value_t = 1, value_name = "N")]
    count: u32,
    /// The name the save is bound to, and the copies' prefix (PREFIX-1 …); default:
    /// ENV-YYYYMMDDTHHMMSS (the time of the fork, UTC).
    #[arg(long = "as", value_name = "PREFIX")]
    prefix: Option<String>,
}

/// `spawngrid fork`.
pub fn fork(a: ForkArgs, json: bool) -> Result<ExitCode> {
    let req = api::ForkRequest {
        count: a.count,
        prefix: a.prefix.clone(),
    };
    let r: api::ForkResponse = call(&a.node, "POST", &routes::fork(&a.env), Some(&req))?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "forked {}: saved as {} = {} ({:.0} ms), {} {} in {:.0} ms:",
        r.save.env,
        r.save.name,
        r.save.score,
        r.save.seconds * 1e3,
        r.envs.len(),
        if r.envs.len() == 1 { "copy" } else { "copies" },
        r.seconds * 1e3
    );
    for e in &r.envs {
        println!("  {:<32} {}", e.env, e.attach.ssh);
    }
    for w in &r.save.warnings {
        eprintln!("spawngrid: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

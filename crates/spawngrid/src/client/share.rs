//! `spawngrid share NAME USER` and `spawngrid unshare NAME USER`: give another user one of
//! your names to list and spawn (as `OWNER/NAME`), or take it back.

use super::{call, print_json, NodeArgs};
use anyhow::Result;
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// `spawngrid share` and `spawngrid unshare`.
#[derive(Args)]
pub struct ShareArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// One of your names.
    name: String,
    /// The other user, or `*` for every user (admins only).
    #[arg(value_name = "USER")]
    other: String,
}

/// `spawngrid share`: USER then sees NAME in `scores` and spawns it as `YOU/NAME`.
pub fn share(a: ShareArgs, json: bool) -> Result<ExitCode> {
    set(a, json, true)
}

/// `spawngrid unshare`: USER no longer sees or spawns NAME (their envs keep running).
pub fn unshare(a: ShareArgs, json: bool) -> Result<ExitCode> {
    set(a, json, false)
}

fn set(a: ShareArgs, json: bool, on: bool) -> Result<ExitCode> {
    let req = api::ShareRequest {
        name: a.name,
        user: a.other,
    };
    let path = if on { routes::SHARE } else { routes::UNSHARE };
    let r: api::ShareResponse = call(&a.node, "POST", path, Some(&req))?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (on, r.changed) {
        (true, true) => println!(
            "shared {} with {}: they spawn it as {}",
            r.name, r.user, r.address
        ),
        (true, false) => println!(
            "{} was already shared with {} (as {})",
            r.name, r.user, r.address
        ),
        (false, true) => println!("stopped sharing {} with {}", r.name, r.user),
        (false, false) => println!("{} was not shared with {}", r.name, r.user),
    }
    Ok(ExitCode::SUCCESS)
}

//! `spawngrid invite USER NAME`: give USER their own copy of NAME with an account for them
//! inside (in `/etc/passwd`, `/etc/shadow`, `/etc/group`, a home), bound to USER.

use super::{call, print_json, NodeArgs};
use anyhow::Result;
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// `spawngrid invite`.
#[derive(Args)]
pub struct InviteArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The user invited.
    #[arg(value_name = "USER")]
    invitee: String,
    /// Your name (or OWNER/NAME shared with you) to copy.
    name: String,
    /// The invited user's new name (default: NAME without any OWNER/; refused if they have it).
    #[arg(long = "as", value_name = "NEWNAME")]
    as_name: Option<String>,
}

/// `spawngrid invite`.
pub fn invite(a: InviteArgs, json: bool) -> Result<ExitCode> {
    let req = api::InviteRequest {
        user: a.invitee,
        name: a.name.clone(),
        as_name: a.as_name,
    };
    let r: api::InviteResponse = call(&a.node, "POST", routes::INVITE, Some(&req))?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let how = if r.existed {
        "already had an account"
    } else {
        "has a new account"
    };
    let groups = if r.groups.is_empty() {
        String::new()
    } else {
        format!(", groups {}", r.groups.join(" "))
    };
    println!(
        "invited {} to {}: their name {} = {} ({how}: uid {} gid {}{groups}; {:.0} ms)",
        r.user,
        a.name,
        r.name,
        r.score,
        r.uid,
        r.gid,
        r.seconds * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

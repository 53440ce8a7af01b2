//! `spawngrid invite USER NAME`: give USER their own copy of NAME with an account for them
//! inside (in `/etc/passwd`, `/etc/shadow`, `/etc/group`, a home), bound to USER once they
//! accept it; and `invite list`, `invite accept NAME`, `invite refuse NAME` for the invites
//! waiting for you.

use super::{call, print_json, NodeArgs};
use anyhow::{bail, Result};
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// `spawngrid invite`.
#[derive(Args)]
pub struct InviteArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// `USER NAME`: invite USER to a copy of your NAME (or OWNER/NAME shared with you);
    /// `list`: the invites waiting for you; `accept NAME`, `refuse NAME`: one of them.
    #[arg(value_name = "USER NAME | list | accept NAME | refuse NAME", num_args = 1..=2, required = true)]
    words: Vec<String>,
    /// The invited user's new name (default: NAME without any OWNER/; refused if they have it).
    #[arg(long = "as", value_name = "NEWNAME")]
    as_name: Option<String>,
}

/// `spawngrid invite`.
pub fn invite(a: InviteArgs, json: bool) -> Result<ExitCode> {
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    match words[..] {
        ["list"] => list(&a.node, json),
        ["accept", name] => {
            let r: api::InviteResponse = call(&a.node, "POST", &routes::accept(name), None::<&()>)?;
            report(&r, name, json)
        }
        ["refuse", name] => {
            let r: api::PendingInvite =
                call(&a.node, "DELETE", &routes::pending(name), None::<&()>)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "refused {}'s invite to {} (nothing was kept)",
                    r.inviter, r.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        [user, name] => {
            let req = api::InviteRequest {
                user: user.to_string(),
                name: name.to_string(),
                as_name: a.as_name.clone(),
            };
            let r: api::InviteResponse = call(&a.node, "POST", routes::INVITE, Some(&req))?;
            report(&r, name, json)
        }
        _ => bail!("invite takes USER NAME, list, accept NAME or refuse NAME"),
    }
}

/// `invite list`.
fn list(node: &NodeArgs, json: bool) -> Result<ExitCode> {
    let list: Vec<api::PendingInvite> = call(node, "GET", routes::INVITES, None::<&()>)?;
    if json {
        print_json(&list)?;
    } else if list.is_empty() {
        println!("no invites waiting for you");
    } else {
        for i in &list {
            println!(
                "{} from {} (their {}): `spawngrid invite accept {}` or `refuse {}`",
                i.name, i.inviter, i.from, i.name, i.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an invite's outcome (made, or waiting for the user).
fn report(r: &api::InviteResponse, from: &str, json: bool) -> Result<ExitCode> {
    if json {
        print_json(r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.pending {
        println!(
            "invited {} to {from} as their {}: waiting for them to accept \
             (`spawngrid invite accept {}`)",
            r.user, r.name, r.name
        );
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
        "invited {} to {from}: their name {} = {} ({how}: uid {} gid {}{groups}; {:.0} ms)",
        r.user,
        r.name,
        r.score,
        r.uid,
        r.gid,
        r.seconds * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

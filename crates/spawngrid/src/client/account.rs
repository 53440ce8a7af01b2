//! `spawngrid whoami` (who the client acts as on a node, from its stored login), and
//! `spawngrid passwd [USER]` and `spawngrid key [--of USER] add|ls|rm`: your own password and
//! SSH public keys on a node (admins: anyone's). Changing a password ends every session of
//! that user, so you log in again after changing your own.

use super::store::Tokens;
use super::{call, print_json, NodeArgs};
use crate::user_cmd::{new_password, print_keys, KeyAction};
use anyhow::Result;
use api::routes;
use clap::Args;
use human::age;
use std::process::ExitCode;

/// `spawngrid whoami`.
#[derive(Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// `spawngrid whoami`: the user commands to the node act as, and their token's age and
/// expiry (read from the stored login; the node is not asked).
pub fn whoami(a: WhoamiArgs, json: bool) -> Result<ExitCode> {
    let (host, user) = (a.node.host()?, a.node.user()?);
    let tokens = Tokens::load()?;
    let Some(t) = tokens.get(&host, &user) else {
        anyhow::bail!(
            "not logged in to {host} as {user}: run `spawngrid login{}`",
            a.node.flags()
        );
    };
    if json {
        print_json(&serde_json::json!({
            "host": host,
            "user": user,
            "issued": (t.issued > 0).then_some(t.issued),
            "expires": t.expires,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = runtime::state::now();
    let issued = match t.issued {
        0 => "logged in at an unknown time".to_string(),
        at => format!("logged in {} ago", age(now.saturating_sub(at))),
    };
    let expiry = match t.expires.checked_sub(now) {
        Some(left) if left > 0 => format!("token expires in {}", age(left)),
        _ => format!(
            "token expired {} ago: run `spawngrid login{}`",
            age(now.saturating_sub(t.expires)),
            a.node.flags()
        ),
    };
    println!("{user} on {host} ({issued}; {expiry})");
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid passwd`.
#[derive(Args)]
pub struct PasswdArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Whose password (default: yours; others' only for admins).
    #[arg(value_name = "USER")]
    whose: Option<String>,
    /// Read the passwords from stdin: the current one on the first line (when changing your
    /// own), the new one on the next.
    #[arg(long)]
    password_stdin: bool,
}

/// `spawngrid key`.
#[derive(Args)]
pub struct KeyArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Whose keys (default: yours; others' only for admins).
    #[arg(long, value_name = "USER")]
    of: Option<String>,
    #[command(subcommand)]
    action: KeyAction,
}

/// `spawngrid passwd`.
pub fn passwd(a: PasswdArgs, json: bool) -> Result<ExitCode> {
    let me = a.node.user()?;
    let user = a.whose.clone().unwrap_or_else(|| me.clone());
    let current = if user == me {
        Some(if a.password_stdin {
            super::read_password_line(&mut std::io::stdin().lock())?
        } else {
            super::prompt_password(&format!("current password for {me}: "))?
        })
    } else {
        None
    };
    let password = new_password(&user, a.password_stdin)?;
    let req = api::PasswordRequest { password, current };
    let r: api::UserResponse = call(&a.node, "POST", &routes::password(&user), Some(&req))?;
    if json {
        print_json(&r)?;
    } else if user == me {
        println!(
            "changed the password of {}: log in again (`spawngrid login{}`)",
            r.user,
            a.node.flags()
        );
    } else {
        println!("changed the password of {} (their sessions ended)", r.user);
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid key`.
pub fn key(a: KeyArgs, json: bool) -> Result<ExitCode> {
    let user = match &a.of {
        Some(u) => u.clone(),
        None => a.node.user()?,
    };
    match &a.action {
        KeyAction::Add { file } => {
            let req = api::KeyRequest {
                line: KeyAction::read_line(file)?,
            };
            let k: api::KeyEntry = call(&a.node, "POST", &routes::keys(&user), Some(&req))?;
            if json {
                print_json(&k)?;
            } else {
                println!("added key {} for {user}", k.fingerprint);
            }
        }
        KeyAction::Ls => {
            let keys: Vec<api::KeyEntry> = call(&a.node, "GET", &routes::keys(&user), None::<&()>)?;
            print_keys(&keys, json)?;
        }
        KeyAction::Rm { key } => {
            let r: api::UserResponse =
                call(&a.node, "DELETE", &routes::key(&user, key), None::<&()>)?;
            if json {
                print_json(&r)?;
            } else {
                println!("removed key {key} of {}", r.user);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

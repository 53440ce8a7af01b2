//! `spawngrid user add USER`: user accounts, offline on a node's data directory (writes its
//! catalog directly; the node reads it on every login).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// Arguments of `spawngrid user`.
#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    data: crate::DataDir,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (asks for the password twice on the terminal, or reads one line of stdin).
    Add {
        /// The user name (letters, digits, `. _ - : @`).
        user: String,
        /// The user may manage users and import snapshots for others.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Runs `spawngrid user ...`.
pub fn run(args: UserArgs, json: bool) -> Result<ExitCode> {
    match args.command {
        UserCommand::Add {
            user,
            admin,
            password_stdin,
        } => {
            catalog::check_owner(&user)?;
            let password = if password_stdin {
                crate::client::read_password_line(&mut std::io::stdin().lock())?
            } else {
                let first = crate::client::prompt_password(&format!("password for {user}: "))?;
                let again = crate::client::prompt_password("again: ")?;
                if first != again {
                    bail!("the passwords differ; nothing changed");
                }
                first
            };
            std::fs::create_dir_all(&args.data.path)?;
            let cat = catalog::Catalog::open(args.data.path.join("catalog.db"))?;
            cat.add_user(&user, &password, admin)?;
            if json {
                println!("{}", serde_json::json!({"user": user, "admin": admin}));
            } else {
                let role = if admin { "admin " } else { "" };
                println!("added {role}user {user}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

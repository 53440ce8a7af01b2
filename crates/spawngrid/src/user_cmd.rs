//! `spawngrid user add|passwd|del|key`: user accounts, offline on a node's data directory
//! (root on the node: writes its catalog directly; the node reads it on every request). A
//! logged-in user changes their own password and keys from anywhere with the client commands
//! `spawngrid passwd` and `spawngrid key`, which admins also use for any user.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::Read;
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
    /// Set a user's password (asked twice on the terminal, or one line of stdin); every token
    /// of theirs stops working.
    Passwd {
        /// The user.
        user: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user: their tokens, SSH keys and the shares made to them go; their names stay
    /// theirs (names are forever), spawnable only by those they were shared with; the user
    /// name is never given out again. Refused while they have envs on this node.
    Del {
        /// The user.
        user: String,
    },
    /// Manage a user's SSH public keys (for the SSH gateway).
    Key {
        /// The user.
        user: String,
        #[command(subcommand)]
        action: KeyAction,
    },
}

/// What to do with a user's SSH keys (shared with the client's `spawngrid key`).
#[derive(Subcommand, Clone)]
pub enum KeyAction {
    /// Register a public key: a `.pub` file, or `-` for one line of stdin.
    Add {
        /// The public key file (`-`: stdin).
        file: String,
    },
    /// List the keys with their fingerprints (as `ssh-keygen -lf` prints them).
    Ls,
    /// Remove the keys whose fingerprint (`SHA256:...`) or comment is KEY.
    Rm {
        /// A fingerprint or comment.
        key: String,
    },
}

impl KeyAction {
    /// The public key line of `add FILE`: the first non-empty line of the file or stdin.
    pub fn read_line(file: &str) -> Result<String> {
        let text = if file == "-" {
            let mut s = String::new();
            std::io::stdin()
                .lock()
                .take(64 << 10)
                .read_to_string(&mut s)
                .context("reading the public key from stdin")?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        };
        match text.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => Ok(line.to_string()),
            None => bail!("{file} holds no public key line"),
        }
    }
}

/// Prints keys as a table or JSON.
pub fn print_keys(keys: &[api::KeyEntry], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(keys)?);
        return Ok(());
    }
    println!("{:<51} {:<20} COMMENT", "FINGERPRINT", "TYPE");
    for k in keys {
        let mut parts = k.line.splitn(3, ' ');
        let kind = parts.next().unwrap_or("");
        let comment = parts.nth(1).unwrap_or("");
        println!("{:<51} {kind:<20} {comment}", k.fingerprint);
    }
    Ok(())
}

/// A new password for `user`: one line of stdin, or asked twice on the terminal.
pub fn new_password(user: &str, from_stdin: bool) -> Result<String> {
    if from_stdin {
        return crate::client::read_password_line(&mut std::io::stdin().lock());
    }
    let first = crate::client::prompt_password(&format!("new password for {user}: "))?;
    let again = crate::client::prompt_password("again: ")?;
    if first != again {
        bail!("the passwords differ; nothing changed");
    }
    Ok(first)
}

/// Runs `spawngrid user ...`.
pub fn run(args: UserArgs, json: bool) -> Result<ExitCode> {
    let store = args.data.store()?;
    let open = || store.catalog();
    let done = |what: &str, user: &str| {
        if json {
            println!("{}", serde_json::json!({"user": user, "done": what}));
        } else {
            println!("{what} {user}");
        }
    };
    match args.command {
        UserCommand::Add {
            user,
            admin,
            password_stdin,
        } => {
            catalog::check_owner(&user)?;
            let password = new_password(&user, password_stdin)?;
            open()?.add_user(&user, &password, admin)?;
            if json {
                println!("{}", serde_json::json!({"user": user, "admin": admin}));
            } else {
                let role = if admin { "admin " } else { "" };
                println!("added {role}user {user}");
            }
        }
        UserCommand::Passwd {
            user,
            password_stdin,
        } => {
            let cat = open()?;
            if cat.user(&user)?.is_none() {
                bail!("no user {user} (add one with `spawngrid user add`)");
            }
            let password = new_password(&user, password_stdin)?;
            cat.set_password(&user, &password)?;
            done("set the password of", &user);
        }
        UserCommand::Del { user } => {
            let exe = std::env::current_exe().context("finding this executable")?;
            let rt = runtime::Runtime::new(store.data().root(), exe)?;
            node::users::delete_user(&rt, &open()?, &user)?;
            done("deleted user", &user);
        }
        UserCommand::Key { user, action } => {
            let cat = open()?;
            match action {
                KeyAction::Add { file } => {
                    let key = cat.add_key(&user, &KeyAction::read_line(&file)?)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"user": user, "fingerprint": key.fingerprint})
                        );
                    } else {
                        println!("added key {} for {user}", key.fingerprint);
                    }
                }
                KeyAction::Ls => {
                    if cat.user(&user)?.is_none() {
                        bail!("no user {user} (add one with `spawngrid user add`)");
                    }
                    let keys: Vec<api::KeyEntry> = cat
                        .keys(&user)?
                        .into_iter()
                        .map(node::users::key_entry)
                        .collect();
                    print_keys(&keys, json)?;
                }
                KeyAction::Rm { key } => {
                    if !cat.remove_key(&user, &key)? {
                        bail!("{user} has no key {key} (list them with `spawngrid user key {user} ls`)");
                    }
                    done(&format!("removed key {key} of"), &user);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

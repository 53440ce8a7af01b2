//! `spawngrid`: the one binary of Spawngrid. This file parses the command line and reports
//! errors; each command family lives in its own module.

mod client;
mod cpu_cmd;
mod env_cmd;
mod lib_cmd;
mod mount_cmd;
mod progress;
mod stdio_relay;
mod term;
mod up_cmd;
mod user_cmd;

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
    /// Run a node: the HTTPS API on port 16998 and the SSH gateway on 16999 (root).
    Serve(ServeArgs),
    /// One command to a working node (root): data dir, admin user, a base snapshot, then serve.
    Up(up_cmd::UpArgs),
    /// Manage users offline on a node's data directory (root, on the node): add, passwd, del,
    /// key. Users manage their own password and keys remotely with `passwd` and `key`.
    User(user_cmd::UserArgs),
    /// Log in to a node and store a token for -h HOST / -u USER.
    #[command(disable_help_flag = true)]
    Login(client::LoginArgs),
    /// Log out of a node: it revokes the stored token, which is forgotten here.
    #[command(disable_help_flag = true)]
    Logout(client::LogoutArgs),
    /// List the names you may spawn.
    #[command(disable_help_flag = true)]
    Scores(client::ScoresArgs),
    /// Spawn an env from a name; prints how to attach.
    #[command(disable_help_flag = true)]
    Spawn(client::SpawnArgs),
    /// Run one command in an env; its output and exit code are the command's.
    #[command(disable_help_flag = true)]
    Exec(client::ExecArgs),
    /// An interactive shell (or `-- CMD...`) in an env on a terminal; exits with its code.
    /// Works through pipes too (stdin goes in, its end is sent as ^D).
    #[command(disable_help_flag = true)]
    Cpu(client::cpu::CpuArgs),
    /// Copy files and directories in or out of an env: SRC and DST are local paths or
    /// ENV:PATH (one of each; `-` is a tar stream on stdin/stdout). Modes and mtimes are kept.
    #[command(disable_help_flag = true)]
    Cp(client::cp::CpArgs),
    /// Save an env's state as a new name (the env keeps running).
    #[command(disable_help_flag = true, visible_alias = "savedisk")]
    Save(client::SaveArgs),
    /// Save a running env once as the new name PREFIX and spawn N copies of it, envs
    /// PREFIX-1 … PREFIX-N (a copy that fails booms the ones before it; the save stays).
    #[command(disable_help_flag = true)]
    Fork(client::fork::ForkArgs),
    /// Serve a port of an env at an HTTPS preview URL on its node (https://NODE/preview/ID/,
    /// WebSockets too): private (your token, or the signed link printed) unless --public.
    #[command(disable_help_flag = true)]
    Expose(client::expose::ExposeArgs),
    /// Stop serving a port of an env (PORT, or the preview's URL): its URL and links stop working.
    #[command(disable_help_flag = true)]
    Unexpose(client::expose::UnexposeArgs),
    /// Show or change what a running env (spawned with --net nat) may connect to: DEFAULT
    /// internet or none, and --allow/--deny lists of networks and domain names. Replaced
    /// whole; new connections follow it at once.
    #[command(disable_help_flag = true)]
    Egress(client::egress::EgressArgs),
    /// Destroy an env (its names stay).
    #[command(disable_help_flag = true)]
    Boom(client::BoomArgs),
    /// List your envs on every node of the grid, with their node.
    #[command(disable_help_flag = true)]
    Status(client::StatusArgs),
    /// List the grid's nodes: address, up or down, envs, room, labels, certificate.
    #[command(disable_help_flag = true)]
    Nodes(client::NodesArgs),
    /// Invite USER to their own copy of NAME with an account for them inside (passwd,
    /// shadow, group, home), bound to USER as their name once they accept; `invite list`,
    /// `invite accept NAME`, `invite refuse NAME`: the invites waiting for you.
    #[command(disable_help_flag = true)]
    Invite(client::invite::InviteArgs),
    /// Share one of your names with another user (they spawn it as YOU/NAME).
    #[command(disable_help_flag = true)]
    Share(client::share::ShareArgs),
    /// Stop sharing one of your names with a user.
    #[command(disable_help_flag = true)]
    Unshare(client::share::ShareArgs),
    /// Who commands to a node act as: the user (-u, else the node's last login, else $USER),
    /// the node, and the stored token's age and expiry.
    #[command(disable_help_flag = true)]
    Whoami(client::account::WhoamiArgs),
    /// Print a shell completion script for bash, zsh or fish (e.g.
    /// `spawngrid completions bash > /etc/bash_completion.d/spawngrid`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Change your password on the node (admins: anyone's); you log in again afterwards.
    #[command(disable_help_flag = true)]
    Passwd(client::account::PasswdArgs),
    /// Manage your SSH public keys on the node (admins: anyone's, with --of USER).
    #[command(disable_help_flag = true)]
    Key(client::account::KeyArgs),
    /// The seed's gridorc: an interactive loop of scores, spawn, save, invite, boom, status, help, exit
    /// (also run as `gridorc`, e.g. through a symlink of that name).
    #[command(disable_help_flag = true, visible_alias = "gridorc")]
    Orc(client::orc::OrcArgs),
}

/// Arguments of `spawngrid serve` (and of `spawngrid up`, which serves when set up).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The configuration file (TOML; see docs/node.md). Default: built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// The data directory (overrides the configuration's `data`).
    #[arg(long, env = "SPAWNGRID_DATA", value_name = "DIR")]
    data: Option<std::path::PathBuf>,
    /// Address and port to listen on (overrides the configuration's `listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// Address and port of the SSH gateway: shells, commands, built-in SFTP (scp, sftp), and
    /// `ssh -L`/`-R`/`-A` forwarding as the configuration's `[ssh]` table allows (overrides
    /// the configuration's `ssh_listen`; port 0 picks a free one, printed at start).
    #[arg(long, value_name = "ADDR:PORT")]
    ssh_listen: Option<std::net::SocketAddr>,
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    node::run(serve_config(&args)?)?;
    Ok(ExitCode::SUCCESS)
}

/// The node configuration: the file's (or the defaults) with the command line's overrides.
pub fn serve_config(args: &ServeArgs) -> anyhow::Result<node::Config> {
    let mut config = match &args.config {
        Some(path) => node::Config::load(path)?,
        None => node::Config::default(),
    };
    if let Some(d) = &args.data {
        config.data = d.clone();
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if args.ssh_listen.is_some() {
        config.ssh_listen = args.ssh_listen;
    }
    Ok(config)
}

/// `--data DIR`, which every command working on a node's data directory takes.
#[derive(clap::Args)]
pub struct DataDir {
    /// The node's data directory (`library/`, `catalog.db`, `envs/`, `mounts/`).
    #[arg(
        id = "data",
        long = "data",
        value_name = "DIR",
        env = "SPAWNGRID_DATA",
        default_value = "/var/lib/spawngrid",
        global = true
    )]
    pub path: std::path::PathBuf,
}

impl DataDir {
    /// The store of this data directory (as its node recorded it; else the embedded one).
    pub fn store(&self) -> anyhow::Result<store::Store> {
        store::Store::open(store::DataDir::new(&self.path))
    }
}

/// `spawngrid completions SHELL`: the completion script on stdout.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "spawngrid",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// The command line, with `orc` put in front of the arguments when the binary runs under the
/// name `gridorc` (the seed's name for the loop).
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    let name = args.first().map(std::path::Path::new);
    if name.and_then(|n| n.file_name()) == Some("gridorc".as_ref()) {
        args.insert(1, "orc".into());
    }
    args
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
    let cli = Cli::parse_from(args());
    // The daemon logs each request (info); commands only warnings.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Up(_) => "info",
        _ => "warn",
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPAWNGRID_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let daemon = match &cli.command {
        Command::Serve(_) | Command::Up(_) => true,
        Command::Lib(args) => args.keeps_a_mount(),
        _ => false,
    };
    if daemon {
        subscriber.init();
    } else {
        subscriber.without_time().init();
    }
    let json = cli.json;
    let result = match cli.command {
        Command::Lib(args) => lib_cmd::run(args, json),
        Command::Env(args) => env_cmd::run(args, json),
        Command::Serve(args) => serve(args),
        Command::Up(args) => up_cmd::run(args),
        Command::User(args) => user_cmd::run(args, json),
        Command::Login(a) => client::login(a, json),
        Command::Logout(a) => client::logout(a, json),
        Command::Scores(a) => client::scores(a, json),
        Command::Spawn(a) => client::spawn(a, json),
        Command::Exec(a) => client::exec(a, json),
        Command::Cpu(a) => client::cpu::cpu(a),
        Command::Cp(a) => client::cp::cp(a, json),
        Command::Save(a) => client::save(a, json),
        Command::Fork(a) => client::fork::fork(a, json),
        Command::Expose(a) => client::expose::expose(a, json),
        Command::Egress(a) => client::egress::egress(a, json),
        Command::Unexpose(a) => client::expose::unexpose(a, json),
        Command::Boom(a) => client::boom(a, json),
        Command::Status(a) => client::status(a, json),
        Command::Nodes(a) => client::nodes(a, json),
        Command::Invite(a) => client::invite::invite(a, json),
        Command::Share(a) => client::share::share(a, json),
        Command::Unshare(a) => client::share::unshare(a, json),
        Command::Whoami(a) => client::account::whoami(a, json),
        Command::Completions { shell } => completions(shell),
        Command::Passwd(a) => client::account::passwd(a, json),
        Command::Key(a) => client::account::key(a, json),
        Command::Orc(a) => client::orc::run(a, json),
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

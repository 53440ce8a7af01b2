//! The client commands: `login`, `scores`, `spawn`, `exec`, `save` (`savedisk`), `boom`,
//! `status`, `nodes` (and in submodules `fork`, `cp`, `cpu`, `whoami`, ...). Each talks to one node's HTTPS API (`-h HOST`, default
//! `$SPAWNGRID_HOST`, else `localhost:16998`) as one user (`-u USER`, default: the user who
//! logged in to that node last, else `$USER`) with the token `login` stored; that node sends
//! requests for envs on other nodes on to them. `whoami` says who that is.

pub mod account;
pub mod cp;
pub mod cpu;
pub mod egress;
pub mod expose;
pub mod fork;
pub mod grid;
pub mod http;
pub mod invite;
pub mod ndb;
pub mod orc;
pub mod share;
pub mod store;

use anyhow::{bail, Context, Result};
use api::routes;
use clap::Args;
use human::age;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::process::ExitCode;
use store::{StoredToken, Tokens};

/// The default node.
const DEFAULT_HOST: &str = "localhost:16998";

/// Which node and user (every client command takes these; `-h` is the host, so help is
/// `--help` only).
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// The node: a `sys` name from the grid file, HOST or HOST:PORT (default port 16998;
    /// default node: $SPAWNGRID_HOST, else localhost). Given, `spawn` runs there; not given,
    /// the node places the env on the grid.
    #[arg(short = 'h', long = "host")]
    pub host: Option<String>,
    /// The user (default: the one who logged in to the node last, else $USER).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl NodeArgs {
    /// The `HOST:PORT` to connect to (a grid file's `sys` name resolved), the key of pins
    /// and tokens.
    fn host(&self) -> Result<String> {
        grid::resolve(&self.named())
    }

    /// The node as the user named it: `-h`, else `$SPAWNGRID_HOST`, else the default.
    fn named(&self) -> String {
        self.host
            .clone()
            .or_else(|| {
                std::env::var("SPAWNGRID_HOST")
                    .ok()
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_HOST.to_string())
    }

    /// The user: `-u`, else the default ([`NodeArgs::default_user`]).
    fn user(&self) -> Result<String> {
        match &self.user {
            Some(u) => Ok(u.clone()),
            None => self.default_user(),
        }
    }

    /// The user without `-u`: the one who logged in to the node last, else `$USER` (or
    /// `$LOGNAME`).
    fn default_user(&self) -> Result<String> {
        if let Some(u) = Tokens::load()?.last_user(&self.host()?) {
            return Ok(u.to_string());
        }
        let env = ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
        match env {
            Some(u) => Ok(u),
            None => bail!("no user: pass -u USER (or set $USER), or log in first"),
        }
    }

    /// `-h`/`-u` as they must be repeated in a printed command (only when not the defaults).
    fn flags(&self) -> String {
        let mut s = String::new();
        let host = self.named();
        if http::normalize_host(&host) != http::normalize_host(DEFAULT_HOST) {
            s.push_str(&format!(" -h {host}"));
        }
        if let Some(u) = &self.user {
            if self.default_user().ok().as_deref() != Some(u.as_str()) {
                s.push_str(&format!(" -u {u}"));
            }
        }
        s
    }
}

/// `spawngrid login`.
#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
}

/// `spawngrid logout`.
#[derive(Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// `spawngrid scores`.
#[derive(Args)]
pub struct ScoresArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Only names matching this (a glob with `*` and `?`, else a substring).
    pattern: Option<String>,
}

/// `spawngrid spawn`.
#[derive(Args)]
pub struct SpawnArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The name to spawn from.
    name: String,
    /// A 1 GiB disk-backed write layer instead of 100 MiB of RAM.
    #[arg(long)]
    disk: bool,
    /// The env's name (default: NAME), so one name can back several envs.
    #[arg(long = "as", value_name = "ENV")]
    as_env: Option<String>,
    /// Memory limit (e.g. 512M, 2G; default: the node's).
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// Cpu limit: this many cpus' worth of time, on as many cpus rounded up (e.g. 0.5, 2; from
    /// 0.01 to the node's cpus; default: none).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// The env's network: none (loopback only, the default) or nat (its own address,
    /// outbound through the node; implied by --egress, --allow and --deny).
    #[arg(long, value_parser = parse_net)]
    net: Option<api::Net>,
    /// Where the env's connections go that neither --allow nor --deny names: internet (what
    /// the node lets envs reach, the default) or none (only the allow list). Change it later
    /// with `spawngrid egress`.
    #[arg(long, value_name = "DEFAULT", value_parser = egress::parse_default)]
    egress: Option<api::EgressDefault>,
    #[command(flatten)]
    lists: egress::Lists,
    /// Spawn on this node of the grid (by name).
    #[arg(long = "node", value_name = "NODE")]
    on: Option<String>,
    /// Spawn on NODE if it has room, else on the node sharing most labels with it.
    #[arg(long, value_name = "NODE")]
    near: Option<String>,
    /// Spawn only on a node with this label (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// End the env after this long (e.g. 30m, 2h, 1h30m), whatever it is doing.
    #[arg(long, value_name = "DURATION", value_parser = seconds)]
    ttl: Option<u64>,
    /// What ends the env when its ttl or the node's idle timeout is up: boom, or save (as
    /// ENV@TIME, a new name of yours) then boom (default: the node's, normally boom).
    #[arg(long, value_name = "WHAT", value_parser = parse_expire)]
    on_expire: Option<api::Expire>,
}

/// `--ttl` and `--timeout`: a duration of at least a second (`30s`, `2h`), in seconds.
pub(crate) fn seconds(s: &str) -> Result<u64, human::ParseError> {
    human::parse_timeout(s).map(|d| d.as_secs())
}

/// `--on-expire boom|save`.
fn parse_expire(s: &str) -> Result<api::Expire> {
    match s {
        "boom" => Ok(api::Expire::Boom),
        "save" => Ok(api::Expire::Save),
        _ => bail!("want boom or save"),
    }
}

impl SpawnArgs {
    /// Where the env goes: `None` (the node asked) when `-h` is given and nothing else;
    /// otherwise placed on the grid by the node asked.
    fn placement(&self) -> Option<api::Placement> {
        let place = api::Placement {
            node: self.on.clone(),
            near: self.near.clone(),
            labels: self.labels.clone(),
        };
        (self.node.host.is_none() || place != api::Placement::default()).then_some(place)
    }
}

/// `--net none|nat`.
fn parse_net(s: &str) -> Result<api::Net> {
    match s {
        "none" => Ok(api::Net::None),
        "nat" => Ok(api::Net::Nat),
        _ => anyhow::bail!("unknown network {s:?}: want none or nat"),
    }
}

/// `spawngrid exec`.
#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Send this command's stdin to the command (read to its end first; at most ~700 KiB).
    #[arg(long)]
    stdin: bool,
    /// Kill the command (its process group) after this long (`30s`, `5m`); the node's own
    /// timeout, if shorter, wins.
    #[arg(long, value_parser = seconds)]
    timeout: Option<u64>,
    /// The env.
    env: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// `spawngrid save` (and `savedisk`).
#[derive(Args)]
pub struct SaveArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The env.
    env: String,
    /// The new name (bound once, forever).
    new_name: String,
}

/// `spawngrid boom`.
#[derive(Args)]
pub struct BoomArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The env.
    env: String,
}

/// `spawngrid status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// Calls the API as `node`'s user with their stored token; an error answer becomes its
/// one-line message.
fn call<T: DeserializeOwned>(
    node: &NodeArgs,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T> {
    let (host, token) = auth(node)?;
    let bytes = body.map(serde_json::to_vec).transpose()?;
    let resp = http::request(&host, method, path, Some(&token), bytes.as_deref())?;
    decode(&host, resp)
}

/// Makes writes to a connection the node closed (or to a closed stdout) errors with a message
/// rather than a silent death by SIGPIPE (which `main` restores for tools used in pipes):
/// for the streaming commands, whose node may stop reading mid-way.
fn ignore_sigpipe() {
    // SAFETY: changing a signal's disposition; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The node (`HOST:PORT`) of `node` and its user's stored token there, or how to log in.
fn auth(node: &NodeArgs) -> Result<(String, String)> {
    let (host, user) = (node.host()?, node.user()?);
    let tokens = Tokens::load()?;
    let Some(token) = tokens.get(&host, &user) else {
        bail!(
            "not logged in to {host} as {user}: run `spawngrid login{}`",
            node.flags()
        );
    };
    Ok((host, token.token.clone()))
}

/// A 2xx body as `T`, or the error body's message.
fn decode<T: DeserializeOwned>(host: &str, resp: http::Response) -> Result<T> {
    if (200..300).contains(&resp.status) {
        return serde_json::from_slice(&resp.body)
            .with_context(|| format!("{host} answered something that is not the API's JSON"));
    }
    match serde_json::from_slice::<api::ErrorBody>(&resp.body) {
        Ok(e) => bail!("{}", e.error),
        Err(_) => bail!("{host} answered HTTP {}", resp.status),
    }
}

/// Prints `value` as one line of JSON.
fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// `spawngrid login`: asks for the password, stores the token.
pub fn login(a: LoginArgs, json: bool) -> Result<ExitCode> {
    let (host, user) = (a.node.host()?, a.node.user()?);
    let password = if a.password_stdin {
        read_password_line(&mut std::io::stdin().lock())?
    } else {
        prompt_password(&format!("password for {user} on {host}: "))?
    };
    let req = api::LoginRequest {
        user: user.clone(),
        password,
    };
    let body = serde_json::to_vec(&req)?;
    let resp = http::request(&host, "POST", routes::LOGIN, None, Some(&body))?;
    let r: api::LoginResponse = decode(&host, resp)?;
    let mut tokens = Tokens::load()?;
    tokens.set(
        &host,
        &user,
        StoredToken {
            token: r.token,
            expires: r.expires,
            issued: runtime::state::now(),
        },
    )?;
    if json {
        print_json(&serde_json::json!({"host": host, "user": user, "expires": r.expires}))?;
    } else {
        let days = r.expires.saturating_sub(runtime::state::now()) / 86_400;
        println!("logged in to {host} as {user} (token valid for {days} days)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid logout`: the node revokes the stored token, which is then forgotten here. A
/// node that cannot be reached leaves the token forgotten but valid until it expires: said,
/// with a non-zero exit.
pub fn logout(a: LogoutArgs, json: bool) -> Result<ExitCode> {
    let (host, user) = (a.node.host()?, a.node.user()?);
    let mut tokens = Tokens::load()?;
    let Some(stored) = tokens.get(&host, &user).cloned() else {
        bail!("not logged in to {host} as {user}: nothing to log out of");
    };
    let revoked =
        http::request(&host, "POST", routes::LOGOUT, Some(&stored.token), None).and_then(|resp| {
            match resp.status {
                // Already revoked or expired: nothing more to do on the node.
                401 => Ok(()),
                _ => decode::<api::LogoutResponse>(&host, resp).map(|_| ()),
            }
        });
    tokens.remove(&host, &user)?;
    if let Err(e) = revoked {
        bail!(
            "forgot the token for {user} on {host} here, but the node did not revoke it ({e:#}); \
             it stays valid until it expires: log out again when the node is reachable, or \
             change your password there"
        );
    }
    if json {
        print_json(&serde_json::json!({"host": host, "user": user}))?;
    } else {
        println!("logged out of {host} as {user} (the token no longer works)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid scores`.
pub fn scores(a: ScoresArgs, json: bool) -> Result<ExitCode> {
    let path = routes::scores(a.pattern.as_deref());
    let list: Vec<api::ScoreEntry> = call(&a.node, "GET", &path, None::<&()>)?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = runtime::state::now();
    let me = a.node.user()?;
    println!("{:<32} {:<16} {:>10} {:>6}", "NAME", "SCORE", "SIZE", "AGE");
    for s in list {
        println!(
            "{:<32} {:<16} {:>10} {:>6}",
            // Names shared with you are shown as you spawn them: OWNER/NAME.
            catalog::shares::address(&me, &s.owner, &s.name),
            &s.score[..s.score.len().min(16)],
            megabytes(s.size),
            age(now.saturating_sub(s.created))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid spawn`.
pub fn spawn(a: SpawnArgs, json: bool) -> Result<ExitCode> {
    let mem = a.mem.as_deref().map(human::parse_size).transpose()?;
    let egress = (a.egress.is_some() || a.lists.given())
        .then(|| a.lists.policy(a.egress.unwrap_or_default()));
    let net = match (a.net, &egress) {
        (Some(api::Net::None), Some(_)) => {
            bail!("--egress, --allow and --deny filter a network: spawn with --net nat")
        }
        (Some(net), _) => net,
        (None, Some(_)) => api::Net::Nat,
        (None, None) => api::Net::None,
    };
    let req = api::SpawnRequest {
        name: a.name.clone(),
        disk: a.disk,
        as_env: a.as_env.clone(),
        mem,
        cpus: a.cpus,
        net,
        egress,
        place: a.placement(),
        ttl: a.ttl,
        on_expire: a.on_expire,
    };
    let info: api::EnvInfo = call(&a.node, "POST", routes::ENVS, Some(&req))?;
    if json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("spawned {} from {} on {}", info.env, a.name, info.node);
    println!("  {}", info.attach.ssh);
    println!("  {}{}", info.attach.cpu, a.node.flags());
    let size = megabytes(Some(info.write_size));
    if info.disk {
        println!("  write layer: {size} on disk");
    } else {
        println!(
            "  write layer: {size} of RAM (counts in its memory); a bigger one on disk: --disk"
        );
    }
    if let Some(e) = &info.expiry {
        println!("  ends {}", expiry_text(e, runtime::state::now()));
    }
    if let Some(e) = &info.egress {
        println!("  egress: {}", egress::text(e));
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid exec`: prints the command's stdout and stderr, exits with its code.
pub fn exec(a: ExecArgs, json: bool) -> Result<ExitCode> {
    let stdin = if a.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .take(api::MAX_BODY as u64)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        Some(api::b64::encode(&buf))
    } else {
        None
    };
    let req = api::ExecRequest {
        argv: a.cmd.clone(),
        stdin,
        timeout: a.timeout,
    };
    let r: api::ExecResponse = call(&a.node, "POST", &routes::exec(&a.env), Some(&req))?;
    if json {
        print_json(&r)?;
    } else {
        let out = api::b64::decode(&r.stdout).map_err(anyhow::Error::msg)?;
        let err = api::b64::decode(&r.stderr).map_err(anyhow::Error::msg)?;
        std::io::stdout().write_all(&out)?;
        std::io::stdout().flush()?;
        std::io::stderr().write_all(&err)?;
        if r.truncated {
            eprintln!(
                "spawngrid: output cut at {} bytes per stream",
                api::MAX_EXEC_OUTPUT
            );
        }
        if let Some(hint) = &r.hint {
            eprintln!("spawngrid: {hint}");
        }
    }
    Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8))
}

/// `spawngrid save` / `savedisk`.
pub fn save(a: SaveArgs, json: bool) -> Result<ExitCode> {
    let req = api::SaveRequest {
        name: a.new_name.clone(),
    };
    let r: api::SaveResponse = call(&a.node, "POST", &routes::save(&a.env), Some(&req))?;
    if json {
        print_json(&r)?;
    } else {
        println!(
            "saved {} as {} = {} ({:.0} ms)",
            r.env,
            r.name,
            r.score,
            r.seconds * 1e3
        );
        for w in &r.warnings {
            eprintln!("spawngrid: warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid boom`.
pub fn boom(a: BoomArgs, json: bool) -> Result<ExitCode> {
    let r: api::BoomResponse = call(&a.node, "DELETE", &routes::env(&a.env), None::<&()>)?;
    if json {
        print_json(&r)?;
    } else {
        println!("boomed {}", r.env);
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid status`.
pub fn status(a: StatusArgs, json: bool) -> Result<ExitCode> {
    let list: Vec<api::EnvInfo> = call(&a.node, "GET", routes::ENVS, None::<&()>)?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<20} {:<12} {:<12} {:>7} {:>8} {:>15} {:<20}  ATTACH",
        "ENV", "FROM", "SNAPSHOT", "NODE", "AGE", "MEM", "WRITE", "ENDS"
    );
    let now = runtime::state::now();
    let mut exposed = Vec::new();
    let mut policies = Vec::new();
    for e in list {
        let snapshot = e.snapshot.as_deref().map_or("-", |s| &s[..s.len().min(12)]);
        let state = match (e.node_up, e.running) {
            (false, _) => " (its node is down)",
            (true, false) => " (dead: boom it)",
            (true, true) => "",
        };
        println!(
            "{:<20} {:<20} {:<12} {:<12} {:>7} {:>8} {:>15} {:<20}  {}{state}",
            e.env,
            e.from.as_deref().unwrap_or("-"),
            snapshot,
            e.node,
            age(e.age),
            megabytes(e.memory),
            format!(
                "{}/{}",
                megabytes(e.write_used),
                megabytes(Some(e.write_size))
            ),
            e.expiry
                .as_ref()
                .map_or("-".to_string(), |x| expiry_text(x, now)),
            e.attach.ssh
        );
        exposed.extend(e.exposures);
        if let Some(p) = e.egress.filter(|p| *p != api::Egress::default()) {
            policies.push((e.env, p));
        }
    }
    if !policies.is_empty() {
        println!("\n{:<20} EGRESS", "ENV");
        for (env, p) in policies {
            println!("{env:<20} {}", egress::text(&p));
        }
    }
    if !exposed.is_empty() {
        println!("\n{:<20} {:>5} {:<8} PREVIEW URL", "ENV", "PORT", "ACCESS");
        for x in exposed {
            let access = if x.public { "public" } else { "private" };
            println!("{:<20} {:>5} {access:<8} {}", x.env, x.port, x.url);
        }
    }
    // What the node did unasked (evictions) in the last week.
    let notices: Vec<api::Notice> = call(&a.node, "GET", routes::NOTICES, None::<&()>)?;
    for n in notices {
        println!(
            "note ({} ago): {}",
            age(now.saturating_sub(n.at)),
            n.message
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid nodes`.
#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// `spawngrid nodes`: the grid's nodes, up or down, with their room and fingerprint.
pub fn nodes(a: NodesArgs, json: bool) -> Result<ExitCode> {
    let list: Vec<api::NodeEntry> = call(&a.node, "GET", routes::NODES, None::<&()>)?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12} {:<22} {:<5} {:>5} {:>6} {:>9} {:<20} FINGERPRINT",
        "NODE", "ADDRESS", "STATE", "ENVS", "ROOM", "MEM ROOM", "LABELS"
    );
    for n in list {
        let state = if n.up {
            "up".to_string()
        } else {
            format!("down ({} silent)", age(n.silent))
        };
        println!(
            "{:<12} {:<22} {:<5} {:>5} {:>6} {:>9} {:<20} {}",
            n.name,
            n.address,
            state,
            n.envs,
            n.room_envs,
            megabytes(Some(n.room_mem)),
            if n.labels.is_empty() {
                "-".to_string()
            } else {
                n.labels.join(",")
            },
            n.fingerprint
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// When and how an env ends: `in 29m (ttl; boom)`, `in 2h (idle; save)`.
fn expiry_text(e: &api::Expiry, now: u64) -> String {
    let cause = match e.cause {
        api::ExpiryCause::Ttl => "ttl",
        api::ExpiryCause::Idle => "idle",
    };
    let then = match e.then {
        api::Expire::Boom => "boom",
        api::Expire::Save => "save",
    };
    format!("in {} ({cause}; {then})", age(e.at.saturating_sub(now)))
}

/// A size (`12.3M`), or `-` when unknown.
fn megabytes(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_string(), human::size)
}

/// The first line of `r`, without its line ending.
pub fn read_password_line(r: &mut impl std::io::BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line).context("reading the password")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

/// Asks for a password on the terminal without echoing it.
pub fn prompt_password(prompt: &str) -> Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for a password on (use --password-stdin)")?;
    let saved = tcgetattr(&tty).context("reading the terminal's mode")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    (&tty).write_all(prompt.as_bytes())?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet).context("turning off echo")?;
    let line = read_password_line(&mut std::io::BufReader::new(&tty));
    let _ = tcsetattr(&tty, OptionalActions::Flush, &saved);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines() {
        assert_eq!(
            read_password_line(&mut &b"pw word\r\nnext"[..]).unwrap(),
            "pw word"
        );
        assert!(read_password_line(&mut &b"\n"[..]).is_err());
    }
}

//! `spawngrid env ...`: root-only local commands that drive the runtime on a node's data
//! directory: spawn, exec, save, boom, ls. (The node daemon will serve the same operations.)

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use library::{Library, LocalBackend, Score};
use runtime::cgroup::Limits;
use runtime::{Runtime, SpawnOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `spawngrid env`.
#[derive(Args)]
pub struct EnvArgs {
    /// The node's data directory (holds `library/`, `catalog.db`, `envs/`, `mounts/`).
    #[arg(
        long,
        env = "SPAWNGRID_DATA",
        default_value = "/var/lib/spawngrid",
        global = true
    )]
    data: PathBuf,
    /// The user whose names are read and bound.
    #[arg(long, default_value = "admin", global = true)]
    owner: String,
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Spawn an env from a name (mounted lazily with snapfs) or from a directory.
    Spawn {
        /// A snapshot name or score, or a directory holding a root filesystem.
        source: String,
        /// Disk-backed 1 GiB write layer instead of a 100 MiB tmpfs.
        #[arg(long)]
        disk: bool,
        /// The env's name (default: the snapshot name or the directory's name).
        #[arg(long = "as")]
        as_env: Option<String>,
        /// Memory limit (e.g. 512M, 2G).
        #[arg(long, default_value = "512M")]
        mem: String,
        /// Maximum number of processes.
        #[arg(long, default_value_t = 1024)]
        pids: u64,
    },
    /// Run a command inside an env; its stdout, stderr and exit code are the command's.
    Exec {
        /// The env.
        env: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// An interactive shell (or CMD) on a terminal inside an env; its exit code is ours.
    Cpu {
        /// The env.
        env: String,
        /// A command to run instead of a login shell (after `--`).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Save an env's state as the new name NEWNAME; the env keeps running.
    Save {
        /// The env.
        env: String,
        /// The new name (bound once, forever).
        new_name: String,
    },
    /// Destroy an env: every process, mount, cgroup and file of it.
    Boom {
        /// The env.
        env: String,
    },
    /// List envs and whether they are running.
    Ls,
}

/// Runs `spawngrid env ...`.
pub fn run(args: EnvArgs, json: bool) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let rt = Runtime::new(&args.data, &exe)?;
    match args.command {
        EnvCommand::Spawn {
            source,
            disk,
            as_env,
            mem,
            pids,
        } => {
            let limits = Limits {
                memory: crate::mount_cmd::parse_size(&mem)?,
                pids,
                ..Limits::default()
            };
            spawn(&rt, &args.owner, &source, disk, as_env, limits, json)
        }
        EnvCommand::Exec { env, cmd } => {
            let st = runtime::state::load(&rt, &env)?;
            // Through the env's init: our own stdin, stdout and stderr are the command's.
            let stdio = [
                rustix::stdio::stdin(),
                rustix::stdio::stdout(),
                rustix::stdio::stderr(),
            ];
            let code = runtime::service::start(&rt, &st, &cmd, &[], stdio)?.wait()?;
            Ok(ExitCode::from(code as u8))
        }
        EnvCommand::Cpu { env, cmd } => {
            let st = runtime::state::load(&rt, &env)?;
            crate::cpu_cmd::cpu(&rt, &st, cmd)
        }
        EnvCommand::Save { env, new_name } => {
            let lib = open_library(&args.data)?;
            let cat = catalog::Catalog::open(args.data.join("catalog.db"))?;
            let start = Instant::now();
            let imp = runtime::save::save(&rt, &env, &lib, &cat, &args.owner, &new_name)?;
            let secs = start.elapsed().as_secs_f64();
            if json {
                println!(
                    "{}",
                    json!({"env": env, "name": new_name, "score": imp.score.to_hex(), "seconds": secs})
                );
            } else {
                println!(
                    "saved {env} as {new_name} = {} ({:.0} ms)",
                    imp.score,
                    secs * 1e3
                );
            }
            for w in &imp.warnings {
                eprintln!("spawngrid: warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Boom { env } => {
            runtime::boom::boom(&rt, &env)?;
            if !json {
                println!("boomed {env}");
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Ls => ls(&rt, json),
    }
}

fn spawn(
    rt: &Runtime,
    owner: &str,
    source: &str,
    disk: bool,
    as_env: Option<String>,
    limits: Limits,
    json: bool,
) -> Result<ExitCode> {
    let start = Instant::now();
    let dir = Path::new(source);
    let (mut opts, shown) = if dir.is_dir() {
        let name = dir
            .canonicalize()?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let env = as_env.or(name).context("give the env a name with --as")?;
        let lower = dir
            .canonicalize()
            .with_context(|| format!("resolving {source}"))?;
        (SpawnOptions::new(&env, owner, &lower), source.to_string())
    } else {
        let score = resolve(&rt.data, owner, source)?;
        let lower = mount_snapshot(rt, score)?;
        let mut opts = SpawnOptions::new(as_env.as_deref().unwrap_or(source), owner, &lower);
        opts.snapshot = Some(score);
        opts.lower_shifted = true;
        (opts, score.short())
    };
    opts.disk = disk;
    opts.limits = limits;
    let st = runtime::spawn::spawn(rt, &opts)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let data = rt.data.display();
    if json {
        println!(
            "{}",
            json!({"env": st.name, "from": shown, "init_pid": st.init_pid, "ms": ms})
        );
    } else {
        println!("spawned {} from {shown} in {ms:.1} ms", st.name);
        println!("  attach: spawngrid env --data {data} cpu {}", st.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// A name of `owner`, or a literal score.
fn resolve(data: &Path, owner: &str, name: &str) -> Result<Score> {
    if let Ok(s) = name.parse::<Score>() {
        return Ok(s);
    }
    let cat = catalog::Catalog::open(data.join("catalog.db"))?;
    cat.resolve(owner, name)
        .with_context(|| format!("{name} is neither a directory nor a name of {owner}"))
}

/// Mounts `score` once per node at `DATA/mounts/<score>/root` with snapfs, owners shifted into
/// the node's id range (`spawngrid lib mount ... --uid-offset`); an existing mount is reused.
fn mount_snapshot(rt: &Runtime, score: Score) -> Result<PathBuf> {
    if rt.ids.host_uid != rt.ids.host_gid {
        bail!("snapfs shifts uids and gids by one offset; the node's uid and gid ranges differ");
    }
    let dir = rt.data.join("mounts").join(score.to_hex()).join("root");
    // Already served: no second process (what every spawn after the first one sees).
    let served = snapfs::mount::Registry::new(&rt.data)
        .get(&dir)
        .filter(|r| {
            r.score == score.to_hex()
                && r.id_offset == rt.ids.host_uid
                && snapfs::mount::running(r.pid)
        });
    if served.is_some() && snapfs::mount::state(&dir) == snapfs::mount::State::Live {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new(std::env::current_exe()?)
        .args(["lib", "--data"])
        .arg(&rt.data)
        .args(["mount", &score.to_hex()])
        .arg(&dir)
        .args(["--uid-offset", &rt.ids.host_uid.to_string()])
        .output()
        .context("running spawngrid lib mount")?;
    if !out.status.success() {
        bail!(
            "mounting snapshot {score}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(dir)
}

fn open_library(data: &Path) -> Result<Library> {
    let root = data.join("library");
    let backend = LocalBackend::open(&root)
        .with_context(|| format!("opening library in {}", root.display()))?;
    Ok(Library::open(Arc::new(backend))?)
}

fn ls(rt: &Runtime, json: bool) -> Result<ExitCode> {
    let envs = runtime::state::list(rt)?;
    if json {
        let rows: Vec<_> = envs
            .iter()
            .map(|e| {
                json!({"env": e.name, "owner": e.owner, "running": e.alive(), "snapshot": e.snapshot,
                       "init_pid": e.init_pid, "disk": e.disk, "created": e.created})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<10} {:<8} {:<8} {:>8}  FROM",
        "ENV", "OWNER", "STATE", "INIT", "AGE"
    );
    let now = runtime::state::now();
    for e in envs {
        let state = if e.alive() { "running" } else { "dead" };
        let from = e
            .snapshot
            .as_deref()
            .map(|s| &s[..12])
            .unwrap_or_else(|| "-");
        let from = if from == "-" {
            e.lower.display().to_string()
        } else {
            from.to_string()
        };
        let age = now.saturating_sub(e.created);
        println!(
            "{:<24} {:<10} {:<8} {:<8} {:>7}s  {from}",
            e.name, e.owner, state, e.init_pid, age
        );
    }
    Ok(ExitCode::SUCCESS)
}

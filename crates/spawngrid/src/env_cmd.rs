//! `spawngrid env ...`: root-only local commands that drive the runtime on a node's data
//! directory: spawn, exec, save, boom, ls. (The node daemon will serve the same operations.)

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use runtime::cgroup::Limits;
use runtime::{Runtime, SpawnOptions};
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `spawngrid env`.
#[derive(Args)]
pub struct EnvArgs {
    #[command(flatten)]
    data: crate::DataDir,
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
        /// Cpu limit: this many cpus' worth of time, on as many cpus rounded up (e.g. 0.5, 2;
        /// default: none).
        #[arg(long, value_name = "N")]
        cpus: Option<f64>,
        /// Maximum number of processes.
        #[arg(long, default_value_t = 1024)]
        pids: u64,
        /// Network: `none` (loopback only) or `nat` (an address of its own, outbound access
        /// through the host).
        #[arg(long, default_value = "none")]
        net: runtime::Network,
        /// Size of the write layer (e.g. 500M, 4G; default 100M, or 1G with --disk).
        #[arg(long)]
        size: Option<String>,
    },
    /// Run a command inside an env; its stdout, stderr and exit code are the command's (relayed
    /// through pipes: nothing in the env gets our terminal).
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
    let exe = runtime::helper::self_exe();
    let rt = Runtime::new(&args.data.path, &exe)?;
    match args.command {
        EnvCommand::Spawn {
            source,
            disk,
            as_env,
            mem,
            cpus,
            pids,
            net,
            size,
        } => {
            let limits = Limits {
                memory: human::parse_size(&mem)?,
                pids,
                cpus,
                ..Limits::default()
            };
            let write_size = size.as_deref().map(human::parse_size).transpose()?;
            let shape = |o: &mut SpawnOptions| {
                o.write_size = write_size;
                o.disk = disk;
                o.limits = limits;
                o.network = net;
            };
            spawn(&rt, &args.owner, &source, as_env, shape, json)
        }
        EnvCommand::Exec { env, cmd } => {
            let st = runtime::state::load(&rt, &env)?;
            let code = crate::stdio_relay::exec(&rt, &st, &cmd)?;
            Ok(ExitCode::from(code as u8))
        }
        EnvCommand::Cpu { env, cmd } => {
            let st = runtime::state::load(&rt, &env)?;
            crate::cpu_cmd::cpu(&rt, &st, cmd)
        }
        EnvCommand::Save { env, new_name } => {
            let store = args.data.store()?;
            let (lib, cat) = (store.library()?, store.catalog()?);
            catalog::check_name(&new_name)?;
            if cat.resolve(&args.owner, &new_name).is_ok() {
                bail!("name {new_name} is already bound (names are bound once)");
            }
            let start = Instant::now();
            let saved = runtime::save::save(&rt, &env, &lib)?;
            library::faults::point(library::faults::BEFORE_BIND);
            // On a grid, under the save's lease: refused if it expired or a pack it wrote
            // was swept meanwhile.
            let score = saved.imported.score;
            store::bind_written(&cat, &lib, &saved.lease, &args.owner, &new_name, score)?;
            let imp = saved.imported;
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
    as_env: Option<String>,
    shape: impl FnOnce(&mut SpawnOptions),
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
        let cat = store::Store::open(store::DataDir::new(&rt.data))?.catalog()?;
        let score = node::snapshots::resolve(&cat, owner, source, true).with_context(|| {
            format!("{source} is neither a directory nor a name or score of {owner}")
        })?;
        let lower = node::snapshots::mount(rt, score, || None)?;
        let mut opts = SpawnOptions::new(as_env.as_deref().unwrap_or(source), owner, &lower);
        opts.snapshot = Some(score);
        opts.lower_shifted = true;
        (opts, score.short())
    };
    shape(&mut opts);
    let st = match runtime::spawn::spawn(rt, &opts) {
        Ok(st) => st,
        Err(e) => {
            // A failed spawn leaves nothing: not the snapshot mount it made either.
            if let Some(score) = opts.snapshot {
                if let Err(u) = node::snapshots::unmount_unused(rt, score) {
                    eprintln!("spawngrid: {u:#}");
                }
            }
            return Err(e.into());
        }
    };
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

//! `spawngrid lib ...`: offline work on a node's data directory (library + catalog).

use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use catalog::Catalog;
use clap::{Args, Subcommand};
use library::import::{ImportOptions, Imported};
use library::lease::{Lease, LeaseKind};
use library::{Library, Score, Snapshot};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

/// Arguments of `spawngrid lib`.
#[derive(Args)]
pub struct LibArgs {
    #[command(flatten)]
    data: crate::DataDir,
    /// The user whose names are read and bound.
    #[arg(long, default_value = "admin", global = true)]
    owner: String,
    #[command(subcommand)]
    command: LibCommand,
}

impl LibArgs {
    /// Whether this command is a mount's keeper or server: a long-lived process whose log
    /// (the mount's) is read later, so its lines carry the time.
    pub fn keeps_a_mount(&self) -> bool {
        match &self.command {
            LibCommand::Mount(m) => m.is_keeper_or_server(),
            LibCommand::Standby(_) => true,
            _ => false,
        }
    }
}

#[derive(Subcommand)]
enum LibCommand {
    /// Store a directory, a tar (.tar, .tar.gz, .tar.zst, or - for stdin) or a container image
    /// as snapshot NAME.
    ///
    /// An image is a `docker save`/`podman save` archive (docker-archive), an OCI archive or an
    /// OCI layout directory: its layers are applied in order (whiteouts and opaque directories
    /// as overlayfs applies them), each checked against its digest, and the image's tag,
    /// entrypoint, cmd, env, user and working directory go into the snapshot's note.
    Import {
        /// The new name (bound once, forever).
        name: String,
        /// A directory, a tar file, an image archive or layout, or - to read a tar from stdin.
        path: String,
        /// A note recorded in the snapshot.
        #[arg(long)]
        note: Option<String>,
        /// Record this name (or score) as the new snapshot's parent.
        #[arg(long)]
        parent: Option<String>,
        /// Keep character and block device nodes (dropped by default, each named in the
        /// report; envs and mounts never open them either way: they are mounted nodev).
        #[arg(long)]
        allow_devices: bool,
    },
    /// Write snapshot NAME to DEST: a new directory, a .tar/.tar.gz/.tar.zst file, or - (tar).
    ///
    /// A directory export copies file contents from the node-local file cache (DATA/cache, the
    /// one `lib mount` fills: whole files, decompressed) where it holds them, with
    /// copy_file_range, instead of decompressing the library's objects. The cache gets warm
    /// when a mount reads the files, or with --fill-cache. Cached files are checked: one with
    /// the wrong size is ignored, and one's bytes are re-hashed against the file's score before
    /// they are copied (a mismatch is ignored too, with a warning); the library is read instead.
    Export(ExportArgs),
    /// Show the history of NAME: the snapshot and its ancestors.
    Log {
        /// A name or a score.
        name: String,
    },
    /// List paths added (+), removed (-) and changed (M) from A to B.
    Diff {
        /// The older snapshot: a name or a score.
        a: String,
        /// The newer snapshot: a name or a score.
        b: String,
    },
    /// Retire NAME: it stops resolving and is never bound again; gc may then reclaim its data.
    Retire {
        /// The name to retire.
        name: String,
    },
    /// Re-hash every stored object; exit non-zero and list damaged snapshots on corruption.
    Verify,
    /// Delete what no name can reach.
    ///
    /// On one machine (a local library, SQLite catalog) gc waits for in-progress imports and
    /// saves, then deletes at once. On a grid (a library on S3 or a PostgreSQL catalog) one gc
    /// runs at a time grid-wide (a second one says who runs) and never stops saves: each run
    /// sweeps packs that an earlier run condemned at least --grace ago if they are still
    /// unreachable and no write older than their condemnation is in progress, then condemns
    /// (marks) what is unreachable now, copying the live objects of partly dead packs first.
    /// The report (and --json) says how many packs were marked, swept, revived (found live
    /// again) and kept because of a lease.
    Gc {
        /// On a grid: how long a condemned pack waits before a later run may delete it
        /// (seconds, or with a unit: 90s, 15m, 2h).
        #[arg(long, default_value = "1h", value_parser = human::parse_duration)]
        grace: Duration,
    },
    /// Logical and stored bytes, dedup ratio, objects, packs.
    Stats,
    /// Mount snapshot NAME read-only at DIR (lazy: file data is fetched when first opened).
    Mount(crate::mount_cmd::MountArgs),
    /// Unmount a snapshot mounted with `lib mount`, and wait for its server to exit.
    Umount(crate::mount_cmd::UmountArgs),
    /// Replace the server of a mount with one started from the spawngrid binary now on disk
    /// (after an upgrade); the mount, its envs and their open files carry on.
    Restart(crate::mount_cmd::RestartArgs),
    /// A mount keeper started before its mount is known (internal: a node keeps one ahead).
    #[command(hide = true)]
    Standby(crate::mount_cmd::StandbyArgs),
}

/// Arguments of `lib export`.
#[derive(Args)]
struct ExportArgs {
    /// A name or a score.
    name: String,
    /// Destination directory, tar file, or - for stdout.
    dest: String,
    /// The file cache to copy file contents from (default DATA/cache, used if it exists).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Read every file from the library; do not use the file cache.
    #[arg(long, conflicts_with = "fill_cache")]
    no_cache: bool,
    /// Also fetch every file the cache lacks into it (verified, as a mount would), so that
    /// the next export, or a mount, finds it warm.
    #[arg(long)]
    fill_cache: bool,
    /// Limit of the file cache when filling it (least recently used files are evicted).
    #[arg(long, default_value = "10G")]
    cache_size: String,
}

/// The node-local file cache as a source of file contents for `lib export`.
struct CacheSource {
    cache: Arc<snapfs::Cache>,
    /// Fetch missing files into the cache (verified) instead of only reading what is there.
    fill: bool,
}

impl library::export::dir::FileSource for CacheSource {
    fn open(
        &self,
        lib: &Library,
        score: &Score,
        data: &library::FileData,
    ) -> Option<library::export::dir::Materialized> {
        if !self.fill {
            let file = self.cache.open_existing(score)?;
            return Some(library::export::dir::Materialized {
                file,
                verified: false,
            });
        }
        match self.cache.acquire(lib, *score, data) {
            Ok(file) => {
                // Unpinned at once: evicting unlinks the file, which stays readable here.
                self.cache.release(score);
                Some(library::export::dir::Materialized {
                    file,
                    verified: true,
                })
            }
            Err(e) => {
                tracing::warn!(%score, "filling the file cache: {e}");
                None
            }
        }
    }
}

/// Runs a `lib` subcommand.
pub fn run(args: LibArgs, json: bool) -> Result<ExitCode> {
    let ctx = Ctx {
        store: args.data.store()?,
        owner: args.owner,
        json,
    };
    match args.command {
        LibCommand::Import {
            name,
            path,
            note,
            parent,
            allow_devices,
        } => ctx.import(&name, &path, note, parent, allow_devices),
        LibCommand::Export(a) => ctx.export(&a),
        LibCommand::Log { name } => ctx.log(&name),
        LibCommand::Diff { a, b } => ctx.diff(&a, &b),
        LibCommand::Retire { name } => ctx.retire(&name),
        LibCommand::Verify => ctx.verify(),
        LibCommand::Gc { grace } => ctx.gc(grace),
        LibCommand::Stats => ctx.stats(),
        LibCommand::Mount(m) => crate::mount_cmd::mount(&ctx.store, &ctx.owner, m),
        LibCommand::Umount(u) => crate::mount_cmd::umount(ctx.store.data().root(), u),
        LibCommand::Restart(r) => crate::mount_cmd::restart(ctx.store.data().root(), r),
        LibCommand::Standby(s) => crate::mount_cmd::standby(&ctx.store, &ctx.owner, s),
    }
}

/// Imports `path` as `owner`'s name `name` in `store`'s library (what `lib import` does,
/// with its progress bar and report, device nodes dropped; used by `spawngrid up`).
pub fn import(store: &Store, owner: &str, name: &str, path: &Path, note: String) -> Result<()> {
    let ctx = Ctx {
        store: store.clone(),
        owner: owner.to_string(),
        json: false,
    };
    let path = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    ctx.import(name, path, Some(note), None, false)?;
    Ok(())
}

struct Ctx {
    store: Store,
    owner: String,
    json: bool,
}

fn print_json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
}

impl Ctx {
    fn library(&self, create: bool) -> Result<Library> {
        match create {
            true => self.store.library_or_init(),
            false => self.store.library(),
        }
    }

    fn catalog(&self) -> Result<Catalog> {
        self.store.catalog()
    }

    /// Tells a human why we wait (not in --json mode).
    fn on_wait(&self) -> impl Fn(&str) {
        let json = self.json;
        move |msg: &str| {
            if !json {
                eprintln!("spawngrid: {msg}");
            }
        }
    }

    fn lease(&self, lib: &Library, kind: LeaseKind) -> Result<Lease> {
        Ok(lib.lease(kind, LEASE_WAIT, &self.on_wait())?)
    }

    fn write_lease(&self, lib: &Library, base: Option<&Score>) -> Result<Lease> {
        Ok(lib.write_lease(base, LEASE_WAIT, &self.on_wait())?)
    }

    /// A name of this owner, or a literal score.
    fn resolve(&self, cat: &Catalog, lib: &Library, name: &str) -> Result<(Score, Snapshot)> {
        let score = match name.parse::<Score>() {
            Ok(s) => s,
            Err(_) => cat.resolve(&self.owner, name)?,
        };
        let snap = lib
            .snapshot(&score)
            .with_context(|| format!("reading snapshot {name}"))?;
        Ok((score, snap))
    }

    fn import(
        &self,
        name: &str,
        path: &str,
        note: Option<String>,
        parent: Option<String>,
        allow_devices: bool,
    ) -> Result<ExitCode> {
        catalog::check_name(name)?;
        let cat = self.catalog()?;
        if let Ok(s) = cat.resolve(&self.owner, name) {
            bail!("name {name} is already bound to {s} (names are immutable; choose another)");
        }
        let lib = self.library(true)?;
        let parent = parent
            .map(|p| self.resolve(&cat, &lib, &p).map(|(s, _)| s))
            .transpose()?;
        let lease = self.write_lease(&lib, parent.as_ref())?;
        let before = lib.stored_bytes();
        let bar = Bar::new("importing", self.json);
        let opts = ImportOptions {
            author: self.owner.clone(),
            note: note.unwrap_or_else(|| format!("import of {path}")),
            parent,
            progress: &bar,
            allow_devices,
        };
        let start = Instant::now();
        let imported = import_source(&lib, path, &opts)?;
        library::faults::point(library::faults::BEFORE_BIND);
        store::bind_written(&cat, &lib, &lease, &self.owner, name, imported.score)?;
        drop(lease);
        drop(bar);
        let secs = start.elapsed().as_secs_f64();
        self.report_import(name, &imported, lib.stored_bytes() - before, secs);
        Ok(ExitCode::SUCCESS)
    }

    fn report_import(&self, name: &str, imp: &Imported, added: u64, secs: f64) {
        let bytes = imp.snapshot.bytes();
        for w in &imp.warnings {
            eprintln!("spawngrid: warning: {w}");
        }
        if self.json {
            print_json(json!({
                "name": name, "owner": self.owner, "score": imp.score.to_hex(),
                "bytes": bytes, "entries": imp.snapshot.entries(), "stored_bytes_added": added,
                "seconds": secs, "warnings": imp.warnings,
            }));
        } else {
            println!(
                "imported {name} = {}: {} entries, {}, {} new in the library ({secs:.2} s, {:.0} MB/s)",
                imp.score,
                imp.snapshot.entries(),
                human::size(bytes),
                human::size(added),
                bytes as f64 / 1e6 / secs.max(1e-9)
            );
        }
    }

    /// The file cache `lib export` reads (and, with --fill-cache, fills), if it is used.
    fn export_cache(&self, a: &ExportArgs) -> Result<Option<CacheSource>> {
        let dir = a.cache.clone().unwrap_or_else(|| self.store.data().cache());
        if a.no_cache {
            return Ok(None);
        }
        if !a.fill_cache {
            // Reading only: a cache of another format (or none) is left alone, not emptied.
            let version = std::fs::read_to_string(dir.join("VERSION")).unwrap_or_default();
            if version.trim() != snapfs::cache::VERSION {
                return Ok(None);
            }
        }
        let limit = human::parse_size(&a.cache_size).context("--cache-size")?;
        let cache = Arc::new(
            snapfs::Cache::open(&dir, limit)
                .with_context(|| format!("opening the file cache {}", dir.display()))?,
        );
        if a.fill_cache {
            cache.start_scan();
        }
        Ok(Some(CacheSource {
            cache,
            fill: a.fill_cache,
        }))
    }

    fn export(&self, a: &ExportArgs) -> Result<ExitCode> {
        let (name, dest) = (a.name.as_str(), a.dest.as_str());
        let (cat, lib) = (self.catalog()?, self.library(false)?);
        let (_, snap) = self.resolve(&cat, &lib, name)?;
        let bar = Bar::new("exporting", self.json);
        let start = Instant::now();
        let is_tar = dest == "-"
            || [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|s| dest.ends_with(s));
        let source = self.export_cache(a)?;
        let source = source
            .as_ref()
            .map(|s| s as &dyn library::export::dir::FileSource);
        let (entries, cached) = if is_tar {
            let cached = export_tar_to(&lib, &snap, dest, &bar, source)?;
            (snap.entries(), cached)
        } else {
            let done =
                library::export::dir::export_dir_from(&lib, &snap, Path::new(dest), &bar, source)?;
            (done.entries, done.bytes_from_source)
        };
        drop(bar);
        let secs = start.elapsed().as_secs_f64();
        if self.json {
            print_json(json!({
                "name": name, "dest": dest, "entries": entries, "bytes": snap.bytes(),
                "bytes_from_cache": cached, "seconds": secs,
            }));
        } else if dest != "-" {
            println!(
                "exported {name} to {dest}: {entries} entries, {} ({} from the file cache) ({secs:.2} s)",
                human::size(snap.bytes()),
                human::size(cached)
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    fn log(&self, name: &str) -> Result<ExitCode> {
        let (cat, lib) = (self.catalog()?, self.library(false)?);
        let (mut score, mut snap) = self.resolve(&cat, &lib, name)?;
        let mut rows = Vec::new();
        loop {
            let names: Vec<String> = cat
                .names_of(&score)?
                .into_iter()
                .map(|(o, n)| format!("{o}/{n}"))
                .collect();
            rows.push(json!({
                "score": score.to_hex(), "tree": snap.tree().to_hex(), "names": names, "author": snap.author, "time_ns": snap.time_ns,
                "note": snap.note, "bytes": snap.bytes(), "entries": snap.entries(),
            }));
            match snap.parent {
                Some(p) => {
                    score = p;
                    snap = lib.snapshot(&p)?;
                }
                None => break,
            }
        }
        if self.json {
            print_json(json!(rows));
            return Ok(ExitCode::SUCCESS);
        }
        for r in rows {
            let secs = r["time_ns"].as_i64().unwrap_or(0) / 1_000_000_000;
            println!(
                "{}  {}  {}  {}",
                r["score"].as_str().unwrap_or(""),
                fmt_time(secs),
                r["author"].as_str().unwrap_or(""),
                human::size(r["bytes"].as_u64().unwrap_or(0))
            );
            println!(
                "    names: {}",
                r["names"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            );
            println!("    {}", r["note"].as_str().unwrap_or(""));
        }
        Ok(ExitCode::SUCCESS)
    }

    fn diff(&self, a: &str, b: &str) -> Result<ExitCode> {
        let (cat, lib) = (self.catalog()?, self.library(false)?);
        let ((_, sa), (_, sb)) = (self.resolve(&cat, &lib, a)?, self.resolve(&cat, &lib, b)?);
        let changes = library::diff::diff(&lib, &sa, &sb)?;
        let mut out = std::io::stdout().lock();
        if self.json {
            let rows: Vec<_> = changes
                .iter()
                .map(|(c, p)| json!({"change": c, "path": String::from_utf8_lossy(p)}))
                .collect();
            print_json(json!(rows));
        } else {
            for (c, p) in &changes {
                writeln!(out, "{} {}", c.mark(), shown_path(p))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn retire(&self, name: &str) -> Result<ExitCode> {
        let score = self.catalog()?.retire(&self.owner, name)?;
        if self.json {
            print_json(
                json!({"name": name, "owner": self.owner, "score": score.to_hex(), "retired": true}),
            );
        } else {
            println!("retired {name} (was {score}); run `spawngrid lib gc` to reclaim space");
        }
        Ok(ExitCode::SUCCESS)
    }

    fn roots(&self) -> Result<Vec<(String, Score)>> {
        Ok(self
            .catalog()?
            .all_scores()?
            .into_iter()
            .map(|(o, n, s)| (format!("{o}/{n}"), s))
            .collect())
    }

    fn verify(&self) -> Result<ExitCode> {
        let lib = self.library(false)?;
        let _lease = self.lease(&lib, LeaseKind::Shared)?;
        let roots = self.roots()?;
        let bar = Bar::new("verifying", self.json);
        let report = library::verify::verify(&lib, &roots, &bar)?;
        drop(bar);
        if self.json {
            print_json(serde_json::to_value(&report)?);
        } else {
            print!("{report}");
        }
        Ok(if report.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    fn gc(&self, grace: Duration) -> Result<ExitCode> {
        let lib = self.library(false)?;
        if lib.coordinator().ledger().is_some() {
            return self.grid_gc(&lib, grace);
        }
        let _lease = self.lease(&lib, LeaseKind::Exclusive)?;
        let roots: Vec<Score> = self.roots()?.into_iter().map(|(_, s)| s).collect();
        let bar = Bar::new("collecting", self.json);
        let report = library::gc::gc(&lib, &roots, &bar)?;
        drop(bar);
        if self.json {
            print_json(serde_json::to_value(&report)?);
        } else {
            print!("{report}");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// gc on a grid: one mark-and-sweep run (see `library::gc::grid`).
    fn grid_gc(&self, lib: &Library, grace: Duration) -> Result<ExitCode> {
        let bar = Bar::new("collecting", self.json);
        let start = Instant::now();
        let report = library::gc::grid::collect(lib, grace, &bar)?;
        drop(bar);
        let secs = start.elapsed().as_secs_f64();
        if self.json {
            let mut v = serde_json::to_value(&report)?;
            v["seconds"] = json!(secs);
            v["grace_seconds"] = json!(grace.as_secs());
            print_json(v);
        } else {
            print!("{report}");
            println!("({secs:.2} s; grace {} s)", grace.as_secs());
        }
        Ok(ExitCode::SUCCESS)
    }

    fn stats(&self) -> Result<ExitCode> {
        let lib = self.library(false)?;
        let roots: Vec<Score> = self.roots()?.into_iter().map(|(_, s)| s).collect();
        let stats = library::stats::stats(&lib, &roots)?;
        if self.json {
            print_json(serde_json::to_value(&stats)?);
        } else {
            print!("{stats}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// How long a command waits for a conflicting lease.
const LEASE_WAIT: Duration = Duration::from_secs(600);

/// Imports `path`: a container image (docker-archive, oci-archive or OCI layout), a directory,
/// a tar file (any supported compression), or `-` for stdin.
fn import_source(lib: &Library, path: &str, opts: &ImportOptions) -> Result<Imported> {
    if path == "-" {
        if std::io::stdin().is_terminal() {
            bail!("refusing to read a tar from a terminal; pipe one in or give a path");
        }
        return Ok(library::import::tar::import_tar(
            lib,
            std::io::stdin().lock(),
            opts,
        )?);
    }
    let p = Path::new(path);
    let md = std::fs::metadata(p).with_context(|| format!("reading {path}"))?;
    if let Some(image) = library::import::oci::Image::find(p)? {
        return Ok(image.import(lib, opts)?);
    }
    if md.is_dir() {
        return Ok(library::import::dir::import_dir(lib, p, opts)?);
    }
    opts.progress.total(md.len());
    let f = std::fs::File::open(p).with_context(|| format!("opening {path}"))?;
    Ok(library::import::tar::import_tar(
        lib,
        std::io::BufReader::with_capacity(1 << 20, f),
        opts,
    )?)
}

/// Writes a tar of `snap` to `dest` (`-` for stdout), compressed by the file's extension,
/// taking file contents from `source` where it has them; returns the bytes taken from there.
/// A file is written under a temporary name and renamed when complete.
fn export_tar_to(
    lib: &Library,
    snap: &Snapshot,
    dest: &str,
    bar: &Bar,
    source: Option<&dyn library::export::dir::FileSource>,
) -> Result<u64> {
    let tar = |w: &mut dyn std::io::Write| {
        library::export::tar::export_tar_from(lib, snap, w, bar, source)
    };
    if dest == "-" {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        return Ok(tar(&mut out)?);
    }
    let tmp = format!("{dest}.partial");
    let write = || -> Result<u64> {
        let f = std::fs::File::create(&tmp).with_context(|| format!("creating {tmp}"))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        let cached;
        if dest.ends_with(".tar.zst") {
            let mut z = zstd::Encoder::new(w, 3)?;
            cached = tar(&mut z)?;
            z.finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
        } else if dest.ends_with(".gz") || dest.ends_with(".tgz") {
            let mut z = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            cached = tar(&mut z)?;
            z.finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
        } else {
            let mut w = w;
            cached = tar(&mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, dest).with_context(|| format!("renaming {tmp} to {dest}"))?;
        Ok(cached)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A snapshot path for a terminal: printable as is, otherwise escaped.
fn shown_path(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("{:?}", String::from_utf8_lossy(p)),
    }
}

/// UTC time as `YYYY-MM-DD HH:MM:SS`.
fn fmt_time(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

//! `spawngrid up`: a working single-node grid in one command. Creates the data directory, an
//! admin user (password printed once, or taken from `SPAWNGRID_ADMIN_PASSWORD`), a base
//! snapshot named `base` (a given directory or tar, else a debootstrap of Debian bookworm when
//! debootstrap and a mirror work, else a busybox root made from the host's static busybox)
//! shared with every user (`ADMIN/base`), then serves. Idempotent: what exists is kept, so running it again just serves.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Arguments of `spawngrid up`.
#[derive(Args)]
pub struct UpArgs {
    /// The admin user to create (if missing); the password is printed once, or read from
    /// $SPAWNGRID_ADMIN_PASSWORD.
    #[arg(long, default_value = "admin", value_name = "USER")]
    admin: String,
    /// The base snapshot's contents: a directory or a .tar/.tar.gz/.tar.zst (default: debootstrap
    /// bookworm if possible, else a busybox root).
    #[arg(long, value_name = "PATH")]
    base: Option<PathBuf>,
    /// Skip debootstrap: the default base is the busybox root.
    #[arg(long)]
    busybox: bool,
    /// Debian mirror for debootstrap.
    #[arg(
        long,
        env = "SPAWNGRID_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    mirror: String,
    /// Set everything up, then exit instead of serving.
    #[arg(long)]
    no_serve: bool,
    #[command(flatten)]
    serve: crate::ServeArgs,
}

/// The name of the base snapshot.
const BASE: &str = "base";

/// Runs `spawngrid up`.
pub fn run(args: UpArgs) -> Result<ExitCode> {
    if !rustix::process::geteuid().is_root() {
        bail!("spawngrid up runs the node and its envs: run it as root (sudo spawngrid up)");
    }
    let config = crate::serve_config(&args.serve)?;
    let data = config.data.clone();
    let store = store::Store::for_node(store::DataDir::new(&data), config.store.as_ref())?;
    let cat = store.catalog()?;
    ensure_admin(&cat, &args.admin)?;
    if cat.resolve(&args.admin, BASE).is_ok() {
        eprintln!(
            "spawngrid up: {} already has the snapshot {BASE}",
            args.admin
        );
    } else {
        drop(cat);
        let (root, note, _tmp) = base_root(&args, &data)?;
        eprintln!("spawngrid up: importing {} as {BASE}", root.display());
        crate::lib_cmd::import(&store, &args.admin, BASE, &root, note)?;
        let cat = store.catalog()?;
        // Every user, present and future, may spawn it as ADMIN/base.
        cat.share(&args.admin, BASE, catalog::shares::EVERYONE)?;
    }
    let host = match config.listen.ip() {
        ip if ip.is_unspecified() => "localhost".to_string(),
        ip => ip.to_string(),
    };
    let port = config.listen.port();
    eprintln!(
        "spawngrid up: ready. Log in and spawn:\n  spawngrid login -h {host}:{port} -u {admin}\n  \
         spawngrid spawn -h {host}:{port} -u {admin} {BASE}\n  spawngrid cpu -h {host}:{port} -u {admin} {BASE}\n\
         Or in a browser: https://{host}:{port}/ (a self-signed certificate: check its SHA-256 \
         against the one `serve` prints).\n\
         Add users with `spawngrid user add USER`; they spawn {admin}/{BASE}.",
        admin = args.admin
    );
    if args.no_serve {
        return Ok(ExitCode::SUCCESS);
    }
    node::run(config)?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the admin user if missing and prints its password once.
fn ensure_admin(cat: &catalog::Catalog, admin: &str) -> Result<()> {
    catalog::check_owner(admin)?;
    if cat.user(admin)?.is_some() {
        eprintln!("spawngrid up: user {admin} exists (password unchanged)");
        return Ok(());
    }
    let (password, generated) = match std::env::var("SPAWNGRID_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (random_password()?, true),
    };
    cat.add_user(admin, &password, true)?;
    if generated {
        // stdout, not the log: the one place the password is ever shown.
        println!("admin user {admin}, password {password}  (shown once; change it with `spawngrid user passwd {admin}`)");
    } else {
        eprintln!("spawngrid up: created admin user {admin} with the password from $SPAWNGRID_ADMIN_PASSWORD");
    }
    Ok(())
}

/// 20 random characters from an alphabet without look-alikes (~114 bits).
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let chars: String = bytes
        .iter()
        .filter(|b| (**b as usize) < limit)
        .take(20)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    if chars.len() < 20 {
        return random_password();
    }
    Ok(chars)
}

/// A directory removed (with everything in it) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tree to import as the base snapshot, its note, and the scratch directory holding it.
fn base_root(args: &UpArgs, data: &Path) -> Result<(PathBuf, String, Option<Scratch>)> {
    if let Some(p) = &args.base {
        return Ok((p.clone(), format!("base from {}", p.display()), None));
    }
    // One fixed place: an interrupted run's leftovers are removed by the next one.
    let tmp = Scratch(data.join("up-base.tmp"));
    if tmp.0.exists() {
        drop(Scratch(tmp.0.clone()));
    }
    let root = tmp.0.join("root");
    if !args.busybox && which("debootstrap").is_some() {
        eprintln!(
            "spawngrid up: debootstrap of Debian bookworm from {} (a few minutes; --busybox skips it)",
            args.mirror
        );
        let status = Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg(&args.mirror)
            .stdin(Stdio::null())
            .status()
            .context("running debootstrap")?;
        if status.success() {
            return Ok((root, "debootstrap minbase bookworm".into(), Some(tmp)));
        }
        eprintln!("spawngrid up: debootstrap failed ({status}); making a busybox root instead");
        // debootstrap may leave mounts (proc, sys) behind in a failed root.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(&root)
            .stderr(Stdio::null())
            .status();
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("removing the failed root {}", root.display()))?;
    }
    busybox_root(&root)?;
    Ok((root, "busybox root".into(), Some(tmp)))
}

/// The path of `cmd` in `$PATH`.
fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// A tiny root at `root`: the host's static busybox with its applets, /etc/passwd and
/// /etc/group with root, and the usual directories.
pub fn busybox_root(root: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| is_static(p))
        .context("no static busybox on this host: install busybox-static (apt-get install busybox-static) or pass --base PATH")?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "tmp", "dev", "proc", "sys",
        "run", "var/tmp",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    use std::os::unix::fs::PermissionsExt;
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777))?;
    }
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))?;
    std::fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join(applet);
        if applet == "bin/busybox" || link.symlink_metadata().is_ok() {
            continue;
        }
        symlink("/bin/busybox", &link).with_context(|| format!("linking {applet}"))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n")?;
    std::fs::set_permissions(
        root.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )?;
    Ok(())
}

/// Whether `path` is an ELF executable without an interpreter (statically linked).
fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    // ELF64 little-endian: program headers at e_phoff (0x20), e_phentsize (0x36), e_phnum (0x38).
    if bytes.len() < 0x40 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        // PT_INTERP = 3.
        bytes.get(o..o + 4).is_some_and(|t| t != [3, 0, 0, 0])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() && !"l1IoO0".contains(c)));
    }

    #[test]
    fn dynamic_executables_are_not_static() {
        // This test binary is dynamically linked (glibc).
        assert!(!is_static(&std::env::current_exe().unwrap()));
        assert!(!is_static(Path::new("/etc/passwd")));
    }
}

//! `spawngrid cp SRC DST`: files and directories in and out of an env, one side `ENV:PATH`,
//! as a tar stream through the node (`GET`/`PUT /api/envs/{env}/files`, tar inside the env).
//!
//! Like `cp -r`: a destination that is a directory receives the source inside it under its
//! own name; otherwise the destination's parent must be a directory and the source becomes
//! the destination. A source ending in `/.` copies its contents. Modes and mtimes are kept
//! both ways (directories' too), except setuid and setgid bits on the way out; symlinks are
//! copied as symlinks; files copied in are owned by root inside the env, files copied out by
//! whoever runs `cp`. `-` as the local side is a tar
//! stream on stdin or stdout.

use super::{auth, decode, http, print_json, NodeArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `spawngrid cp`.
#[derive(Args)]
pub struct CpArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// What to copy: a local path, `ENV:PATH` in one of your envs, or `-` (a tar on stdin).
    src: String,
    /// Where to: `ENV:PATH`, a local path, or `-` (a tar on stdout). One side must be an env.
    dst: String,
}

/// A side of a copy: `ENV:PATH` when what comes before the first `:` is a possible env name
/// (so `./a:b` is local), else a local path.
fn remote(side: &str) -> Option<(&str, &str)> {
    let (env, path) = side.split_once(':')?;
    catalog::check_name(env).ok()?;
    Some((env, path))
}

/// `spawngrid cp`.
pub fn cp(a: CpArgs, json: bool) -> Result<ExitCode> {
    super::ignore_sigpipe();
    match (remote(&a.src), remote(&a.dst)) {
        (Some(_), Some(_)) => bail!("both sides are envs: copy through a local directory"),
        (None, None) => bail!(
            "neither side is an env: write one as ENV:PATH (a local path with a colon: ./{})",
            a.src
        ),
        (Some((env, path)), None) => copy_out(&a.node, env, path, &a.dst)?,
        (None, Some((env, path))) => {
            let r = copy_in(&a.node, &a.src, env, path)?;
            if json {
                print_json(&r)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies `path` of `env` to local `dst`.
fn copy_out(node: &NodeArgs, env: &str, path: &str, dst: &str) -> Result<()> {
    let (host, token) = auth(node)?;
    let (_, name) = node::files::split_path(path).map_err(anyhow::Error::msg)?;
    let route = api::routes::files(env, path);
    if dst == "-" {
        let resp = http::download(&host, &route, &token, |body| {
            let mut out = std::io::stdout().lock();
            std::io::copy(body, &mut out).context("writing the archive to stdout")?;
            out.flush()?;
            Ok(())
        })?;
        return check(&host, resp);
    }
    let dst = Path::new(dst);
    let (into, rename) = if dst.is_dir() {
        (dst.to_path_buf(), None)
    } else {
        if dst.as_os_str().to_string_lossy().ends_with('/') {
            bail!("no such directory: {}", dst.display());
        }
        let parent = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            bail!("no such directory: {}", parent.display());
        }
        if name == "." {
            std::fs::create_dir(dst).with_context(|| format!("creating {}", dst.display()))?;
            (dst.to_path_buf(), None)
        } else {
            let temp = Scratch::new(parent)?;
            (temp.0.clone(), Some((temp, dst)))
        }
    };
    let resp = http::download(&host, &route, &token, |body| {
        unpack(body, &into).with_context(|| format!("unpacking into {}", into.display()))
    })?;
    check(&host, resp)?;
    if let Some((temp, dst)) = rename {
        let from = temp.0.join(&name);
        std::fs::rename(&from, dst).with_context(|| {
            format!(
                "putting {name} in place as {} (a directory cannot replace a file)",
                dst.display()
            )
        })?;
    }
    Ok(())
}

/// Setuid and setgid bits, never unpacked: an env's archive must not give whoever runs `cp`
/// (root, often) a program that runs as them.
const SET_ID_BITS: u32 = 0o6000;

/// Unpacks a tar stream into `into` with the tar crate's checks (entries with `..` are
/// skipped, nothing is written through a symlink out of `into`), keeping modes (but not
/// [`SET_ID_BITS`]) and mtimes: directories' at the end, innermost first, as their entries
/// change them meanwhile (and a read-only one would refuse them).
fn unpack(body: &mut dyn std::io::Read, into: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Archive::new(body);
    archive.set_preserve_permissions(true);
    archive.set_mask(SET_ID_BITS);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let mut dirs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let mode = entry.header().mode()? & 0o7777 & !SET_ID_BITS;
        let mtime = entry.header().mtime()?;
        let is_dir = entry.header().entry_type().is_dir();
        if !entry.unpack_in(into)? || !is_dir {
            continue;
        }
        let Some(rel) = node::files::clean_name(&name) else {
            continue;
        };
        let dir = into.join(rel);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700))?;
        dirs.push((dir, mode, mtime));
    }
    for (dir, mode, mtime) in dirs.iter().rev() {
        let at = rustix::fs::Timespec {
            tv_sec: *mtime as i64,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: at,
            last_modification: at,
        };
        rustix::fs::utimensat(rustix::fs::CWD, dir, &times, rustix::fs::AtFlags::empty())
            .with_context(|| format!("setting the mtime of {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// Copies local `src` (or a tar on stdin, for `-`) to `path` in `env`.
fn copy_in(node: &NodeArgs, src: &str, env: &str, path: &str) -> Result<api::FilesResponse> {
    let (host, token) = auth(node)?;
    let route = api::routes::files(env, path);
    let resp = if src == "-" {
        http::upload(&host, "PUT", &route, &token, "application/x-tar", |w| {
            std::io::copy(&mut std::io::stdin().lock(), w).context("reading stdin")?;
            Ok(())
        })?
    } else {
        let meta = std::fs::symlink_metadata(src)
            .with_context(|| format!("no such file or directory: {src}"))?;
        let (_, name) = node::files::split_path(src).map_err(anyhow::Error::msg)?;
        http::upload(&host, "PUT", &route, &token, "application/x-tar", |w| {
            let mut archive = tar::Builder::new(w);
            archive.follow_symlinks(false);
            // The node refuses GNU sparse entries (its filter reads archives raw, bounded).
            archive.sparse(false);
            let added = match meta.is_dir() {
                true => archive.append_dir_all(&name, src),
                false => archive.append_path_with_name(src, &name),
            };
            added.with_context(|| format!("archiving {src}"))?;
            archive.finish().context("sending the archive")?;
            Ok(())
        })?
    };
    decode(&host, resp)
}

/// An error answer's message; nothing for a 2xx one.
fn check(host: &str, resp: http::Response) -> Result<()> {
    if (200..300).contains(&resp.status) {
        return Ok(());
    }
    decode::<serde::de::IgnoredAny>(host, resp).map(|_| ())
}

/// A scratch directory next to a copy's destination (same filesystem, so the copy is renamed
/// into place whole), removed with whatever is left in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Scratch> {
        let dir = parent.join(format!(".spawngrid-cp-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile env's tar might send: `..`, an absolute name, and a write through a
    /// symlink to a directory outside.
    fn hostile(outside: &Path) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let entries = [
            ("top", tar::EntryType::Directory, ""),
            ("top/ok", tar::EntryType::Regular, ""),
            ("../escaped", tar::EntryType::Regular, ""),
            ("/absolute", tar::EntryType::Regular, ""),
            ("top/l", tar::EntryType::Symlink, outside.to_str().unwrap()),
            ("top/l/through", tar::EntryType::Regular, ""),
        ];
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o644);
            // Raw names: the builder would refuse `..` and absolute ones.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            let data: &[u8] = if kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_hostile_archive_writes_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (into, outside) = (tmp.path().join("into"), tmp.path().join("outside"));
        std::fs::create_dir(&into).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let err = unpack(&mut &hostile(&outside)[..], &into).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside of destination"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!tmp.path().join("escaped").exists() && !Path::new("/absolute").exists());
        assert!(into.join("top/ok").exists());
    }

    /// Run as root (as the tests are), `cp` out of a hostile env must not leave a setuid or
    /// setgid file or directory on the host (owned by root, as everything unpacked is).
    #[test]
    fn setuid_and_setgid_bits_are_stripped() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode) in [
            ("top", tar::EntryType::Directory, 0o2775),
            ("top/suid", tar::EntryType::Regular, 0o4755),
            ("top/sgid", tar::EntryType::Regular, 0o2711),
            ("top/sticky", tar::EntryType::Directory, 0o1777),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(0);
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, &b""[..]).unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        unpack(&mut &b.into_inner().unwrap()[..], tmp.path()).unwrap();
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::symlink_metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            [
                mode("top"),
                mode("top/suid"),
                mode("top/sgid"),
                mode("top/sticky")
            ],
            [0o775, 0o755, 0o711, 0o1777]
        );
    }

    #[test]
    fn sides_are_envs_or_local() {
        assert_eq!(remote("web:/etc"), Some(("web", "/etc")));
        assert_eq!(remote("web:"), Some(("web", "")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("/tmp/x"), None);
        assert_eq!(remote("-"), None);
        assert_eq!(remote("a/b:c"), None);
    }
}

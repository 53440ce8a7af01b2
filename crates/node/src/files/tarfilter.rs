//! The `cp` upload filter ([`filter`]): a tar archive copied entry by entry into a fresh one
//! that the env's tar may extract, with names checked, headers bounded and owners dropped.
//! Only `std` and `tar`, so the fuzz target `cp_filter` (fuzz/) compiles this file as it is;
//! `fuzz` is its harness (replayed over `fuzz/corpus/cp_filter` by the tests).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Component, PathBuf};

/// Why [`filter`] stopped.
#[derive(Debug)]
pub enum FilterError {
    /// The archive is malformed or has an entry that may not be extracted (one line).
    Refused(String),
    /// Writing to tar failed (it exited early; its own message says why).
    Output(io::Error),
}

/// An entry's name made safe to extract: `.` components dropped; `None` for an absolute name
/// or one with `..`.
pub fn clean_name(name: &std::path::Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Copies a tar archive from `input` to `output` entry by entry, as a fresh GNU archive:
///
/// - names are checked ([`clean_name`]), and an entry below a symlink that the archive made
///   is refused, so nothing lands outside the destination directory;
/// - with `rename`, the archive must have one top-level entry, which is renamed to it;
///   without, an entry naming the destination itself (`.`) is skipped;
/// - regular files, directories, symlinks, hard links (to names checked the same way) and
///   FIFOs pass; device nodes and other types are refused; owners become root;
/// - directories are repeated at the end, innermost first, so that tars which set a
///   directory's mtime when they create it (busybox) end with the archive's mtimes too.
///
/// The first refused entry ends the copy with [`FilterError::Refused`] before anything of it
/// is written, and without the end-of-archive blocks, so tar fails rather than finish.
pub fn filter(
    input: impl Read,
    output: impl Write,
    rename: Option<&str>,
) -> Result<(), FilterError> {
    let refused = |m: String| FilterError::Refused(m);
    let malformed = |e: io::Error| refused(format!("malformed tar archive: {e}"));
    let mut archive = tar::Archive::new(input);
    let mut out = tar::Builder::new(output);
    let mut top: Option<OsString> = None;
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    // Maps a name of the archive to where it is extracted, checking it.
    let mut place = |raw: &std::path::Path, symlinks: &HashSet<PathBuf>| {
        let unsafe_name = || {
            refused(format!(
                "unsafe entry {raw:?} in the archive (absolute, with .., or below a symlink): nothing more was extracted"
            ))
        };
        let rel = clean_name(raw).ok_or_else(unsafe_name)?;
        let mapped = match rename {
            None => rel,
            Some(new) => {
                let mut parts = rel.iter();
                let first = parts.next().map(OsString::from).unwrap_or_default();
                match &top {
                    None => top = Some(first),
                    Some(t) if *t == first => {}
                    Some(_) => {
                        return Err(refused(
                            "the archive has more than one top-level entry: copy into an existing directory instead"
                                .into(),
                        ))
                    }
                }
                std::iter::once(std::ffi::OsStr::new(new))
                    .chain(parts)
                    .collect()
            }
        };
        if mapped.ancestors().skip(1).any(|a| symlinks.contains(a)) {
            return Err(unsafe_name());
        }
        Ok(mapped)
    };
    // Raw: long names and PAX records are read here, bounded, not whole by the tar crate.
    let mut meta = Meta::default();
    let mut kept = 0usize;
    for entry in archive.entries().map_err(malformed)?.raw(true) {
        let mut entry = entry.map_err(malformed)?;
        if meta.take(&mut entry)? {
            continue;
        }
        let (raw, link) = meta.names(&entry).map_err(malformed)?;
        let path = place(&raw, &symlinks)?;
        if path.as_os_str().is_empty() {
            continue;
        }
        let h = entry.header();
        let (mode, mtime) = (
            h.mode().map_err(malformed)? & 0o7777,
            h.mtime().map_err(malformed)?,
        );
        let kind = h.entry_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        let written = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                out.append_data(&mut header, &path, &mut entry)
            }
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                keep(&mut kept, &path)?;
                dirs.push((path.clone(), mode, mtime));
                out.append_data(&mut header, &path, io::empty())
            }
            tar::EntryType::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                out.append_data(&mut header, &path, io::empty())
            }
            tar::EntryType::Symlink => {
                let target = link.unwrap_or_default();
                keep(&mut kept, &path)?;
                symlinks.insert(path.clone());
                header.set_entry_type(tar::EntryType::Symlink);
                out.append_link(&mut header, &path, target)
            }
            tar::EntryType::Link => {
                let target = place(&link.unwrap_or_default(), &symlinks)?;
                header.set_entry_type(tar::EntryType::Link);
                out.append_link(&mut header, &path, target)
            }
            other => {
                return Err(refused(format!(
                    "entry {raw:?} of the archive is a {other:?}, which cp cannot copy (only files, directories, symlinks, hard links and FIFOs)"
                )))
            }
        };
        // An entry's data that cannot be read is the archive's fault, not tar's.
        written.map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => FilterError::Output(e),
            _ => malformed(e),
        })?;
    }
    for (path, mode, mtime) in dirs.iter().rev() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_mtime(*mtime);
        header.set_size(0);
        out.append_data(&mut header, path, io::empty())
            .map_err(FilterError::Output)?;
    }
    out.finish().map_err(FilterError::Output)
}

/// The longest GNU long name or link, or PAX header, an upload may have.
pub const MAX_META: u64 = 64 << 10;

/// Bytes of directory and symlink names an upload's [`filter`] keeps (to repeat directories
/// at the end, and to refuse entries below symlinks).
pub const MAX_KEPT: usize = 16 << 20;

/// Counts `path` (and some overhead) against [`MAX_KEPT`].
fn keep(kept: &mut usize, path: &std::path::Path) -> Result<(), FilterError> {
    *kept += path.as_os_str().len() + 64;
    if *kept > MAX_KEPT {
        return Err(FilterError::Refused(format!(
            "the archive has more directories and symlinks than cp keeps track of ({} MiB of \
             names): copy it in parts",
            MAX_KEPT >> 20
        )));
    }
    Ok(())
}

/// A GNU long name or link, or PAX path and linkpath, waiting for the entry they describe.
#[derive(Default)]
struct Meta {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl Meta {
    /// Takes in `entry` if it describes the next one (true), after checking its size
    /// against [`MAX_META`]; refuses entry kinds a raw reading cannot follow.
    fn take(&mut self, entry: &mut tar::Entry<'_, impl Read>) -> Result<bool, FilterError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::GNUSparse {
            return Err(FilterError::Refused(
                "the archive has a GNU sparse entry, which cp cannot copy: archive without \
                 --sparse"
                    .into(),
            ));
        }
        if !matches!(
            kind,
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader
        ) {
            return Ok(false);
        }
        if entry.size() > MAX_META {
            return Err(FilterError::Refused(format!(
                "the archive has a {kind:?} header of {} bytes, over cp's limit of {} KiB: \
                 nothing more was extracted",
                entry.size(),
                MAX_META >> 10
            )));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| FilterError::Refused(format!("malformed tar archive: {e}")))?;
        let trimmed = |mut d: Vec<u8>| {
            while d.last() == Some(&0) {
                d.pop();
            }
            d
        };
        match kind {
            T::GNULongName => self.name = Some(trimmed(data)),
            T::GNULongLink => self.link = Some(trimmed(data)),
            T::XHeader => {
                for ext in tar::PaxExtensions::new(&data) {
                    let ext = ext.map_err(|e| {
                        FilterError::Refused(format!("malformed PAX header in the archive: {e}"))
                    })?;
                    match ext.key_bytes() {
                        b"path" => self.name = Some(ext.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(ext.value_bytes().to_vec()),
                        b"size" => {
                            return Err(FilterError::Refused(
                                "the archive has a PAX size record, which cp does not take: \
                                 archive with a GNU or ustar tar"
                                    .into(),
                            ))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// The entry's name and link target, as the records before it said, else its header.
    fn names(
        &mut self,
        entry: &tar::Entry<'_, impl Read>,
    ) -> io::Result<(PathBuf, Option<PathBuf>)> {
        use std::os::unix::ffi::OsStringExt;
        let bytes = |b: Vec<u8>| PathBuf::from(OsString::from_vec(b));
        let name = match self.name.take() {
            Some(n) => bytes(n),
            None => entry.path()?.into_owned(),
        };
        let link = match self.link.take() {
            Some(l) => Some(bytes(l)),
            None => entry.link_name()?.map(|l| l.into_owned()),
        };
        Ok((name, link))
    }
}

/// The fuzz harness: any bytes are filtered or refused without a panic, into a bounded
/// output; what passes has only clean names and passes the filter again, renamed or not.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    for rename in [None, Some("top")] {
        let mut out = Vec::new();
        if filter(data, &mut out, rename).is_err() {
            continue;
        }
        let mut names = tar::Archive::new(&out[..]);
        for entry in names.entries().expect("a filtered archive reads") {
            let entry = entry.expect("a filtered entry reads");
            let path = entry.path().expect("a filtered name");
            assert!(clean_name(&path).is_some(), "unsafe name {path:?} passed");
        }
        filter(&out[..], io::sink(), None).expect("a filtered archive passes again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        let c = |p: &str| clean_name(std::path::Path::new(p));
        assert_eq!(c("./a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(c(".").unwrap(), PathBuf::new());
        assert!(c("/etc/passwd").is_none());
        assert!(c("a/../../b").is_none());
    }

    /// An archive of (name, kind, data or link target).
    fn archive(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o640);
            h.set_mtime(1_000_000_000);
            // Raw names: the builder would refuse `..` and absolute ones.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_link_name(data).unwrap();
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// The names, kinds and data of a filtered archive.
    fn listing(bytes: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = String::new();
                e.read_to_string(&mut data).unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    link.unwrap_or(data),
                )
            })
            .collect()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn safe_archives_pass_and_directories_come_again_at_the_end() {
        let input = archive(&[
            (".", D, ""),
            ("./d", D, ""),
            ("./d/f", F, "data"),
            ("./d/l", L, "/etc"),
            ("./d/h", H, "./d/f"),
        ]);
        let mut out = Vec::new();
        filter(&input[..], &mut out, None).unwrap();
        let names: Vec<_> = listing(&out)
            .into_iter()
            .map(|(n, k, d)| format!("{n} {k:?} {d}"))
            .collect();
        assert_eq!(
            names,
            [
                "d Directory ",
                "d/f Regular data",
                "d/l Symlink /etc",
                "d/h Link d/f",
                "d Directory "
            ]
        );
    }

    #[test]
    fn the_top_entry_is_renamed() {
        let input = archive(&[("a", D, ""), ("a/f", F, "x"), ("a/h", H, "a/f")]);
        let mut out = Vec::new();
        filter(&input[..], &mut out, Some("b")).unwrap();
        let names: Vec<_> = listing(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["b", "b/f", "b/h", "b"]);
        let h = listing(&out).into_iter().find(|e| e.0 == "b/h").unwrap();
        assert_eq!(h.2, "b/f");
        let two = archive(&[("a", F, "1"), ("b", F, "2")]);
        let err = filter(&two[..], io::sink(), Some("c")).unwrap_err();
        assert!(matches!(err, FilterError::Refused(m) if m.contains("more than one")));
    }

    #[test]
    fn hostile_archives_are_refused_before_the_bad_entry() {
        for bad in [
            vec![("ok", F, "1"), ("../escape", F, "x")],
            vec![("/etc/passwd", F, "x")],
            vec![("a/../../x", F, "x")],
            vec![("l", L, "/etc"), ("l/passwd", F, "x")],
            vec![("d", D, ""), ("d/l", L, ".."), ("d/l/x", F, "x")],
            vec![("h", H, "/etc/shadow")],
            vec![("h", H, "../x")],
            vec![("dev", tar::EntryType::Char, "")],
        ] {
            let input = archive(&bad);
            let mut out = Vec::new();
            let err = filter(&input[..], &mut out, None).unwrap_err();
            assert!(matches!(err, FilterError::Refused(_)), "{bad:?}");
            // What was written holds only the entries before the bad one, and no end
            // blocks: a tar reading it fails.
            let written = listing(&out);
            assert!(written.len() < bad.len(), "{bad:?}: {written:?}");
            assert!(written.iter().all(|(n, _, _)| !n.contains("..")));
        }
        let err = filter(&b"not a tar archive at all"[..], io::sink(), None).unwrap_err();
        assert!(matches!(err, FilterError::Refused(m) if m.starts_with("malformed")));
    }

    /// A GNU long-name header announcing `size` bytes of name.
    fn long_name_header(size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn long_names_are_followed_and_bounded() {
        let name = "d/".to_string() + &"n".repeat(300);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(F);
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &name, &b"x"[..]).unwrap();
        let mut out = Vec::new();
        filter(&b.into_inner().unwrap()[..], &mut out, None).unwrap();
        assert_eq!(listing(&out), [(name, F, "x".to_string())]);
        // A bomb: a long name bigger than the limit is refused from its header alone (the
        // reader holds only that header).
        let bomb = long_name_header(300 << 20);
        let err = filter(&bomb[..], io::sink(), None).unwrap_err();
        assert!(
            matches!(&err, FilterError::Refused(m) if m.contains("over cp's limit of 64 KiB")),
            "{err:?}"
        );
        let mut kept = 0;
        let long = PathBuf::from("k".repeat(4000));
        let refused = (0..MAX_KEPT / 4000 + 1).find_map(|_| keep(&mut kept, &long).err());
        assert!(
            matches!(&refused, Some(FilterError::Refused(m)) if m.contains("copy it in parts")),
            "{refused:?}"
        );
    }

    /// Every input of the committed corpus passes the harness.
    #[test]
    fn fuzz_corpus_replays() {
        api::fuzzing::replay_corpus("cp_filter", fuzz);
    }
}

//! Directory trees: the canonical, deterministic encoding of a directory's entries and metadata.
//!
//! A tree object lists a directory's children sorted by name (raw bytes, strictly ascending).
//! Each entry carries full POSIX metadata and its content: a file's data, a subdirectory's tree
//! score, a symlink's target or a device number. See `docs/architecture.md` for the byte layout.

use crate::codec::{Reader, Writer};
use crate::{Error, Result, Score};

const TREE_MAGIC: &[u8; 4] = b"SGT1";

/// Metadata common to every entry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a regular file's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileData {
    /// The file is empty.
    Empty,
    /// One blob object holds the whole file.
    Blob(Score),
    /// A chunk-list object lists the file's chunks in order.
    Chunks(Score),
}

/// What an entry is, with its type-specific content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A regular file of `size` bytes.
    File {
        /// Length in bytes.
        size: u64,
        /// Where the bytes are.
        data: FileData,
    },
    /// A directory.
    Dir {
        /// Score of the directory's tree object.
        tree: Score,
        /// Total bytes of regular files below this directory.
        bytes: u64,
        /// Total number of entries below this directory.
        entries: u64,
    },
    /// A symbolic link and its target (never followed by the library).
    Symlink(Vec<u8>),
    /// A character device and its `rdev`.
    CharDev(u64),
    /// A block device and its `rdev`.
    BlockDev(u64),
    /// A named pipe.
    Fifo,
}

impl Content {
    fn code(&self) -> u8 {
        match self {
            Content::File { .. } => 1,
            Content::Dir { .. } => 2,
            Content::Symlink(_) => 3,
            Content::CharDev(_) => 4,
            Content::BlockDev(_) => 5,
            Content::Fifo => 6,
        }
    }

    /// The `S_IF*` file-type bits for this content.
    pub fn file_type_bits(&self) -> u32 {
        match self {
            Content::File { .. } => libc::S_IFREG,
            Content::Dir { .. } => libc::S_IFDIR,
            Content::Symlink(_) => libc::S_IFLNK,
            Content::CharDev(_) => libc::S_IFCHR,
            Content::BlockDev(_) => libc::S_IFBLK,
            Content::Fifo => libc::S_IFIFO,
        }
    }

    /// Logical bytes of file data in this entry (a directory's total includes its subtree).
    pub fn bytes(&self) -> u64 {
        match self {
            Content::File { size, .. } => *size,
            Content::Dir { bytes, .. } => *bytes,
            _ => 0,
        }
    }

    /// Number of entries this entry stands for: itself plus, for a directory, its subtree.
    pub fn entries(&self) -> u64 {
        match self {
            Content::Dir { entries, .. } => 1 + entries,
            _ => 1,
        }
    }
}

/// One named entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name within its directory: non-empty, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// Owner, mode, time and xattrs.
    pub meta: Meta,
    /// Type and content.
    pub content: Content,
    /// Hardlink group: entries (anywhere in one snapshot) with the same tag are one inode.
    pub link: Option<[u8; 16]>,
}

/// A directory's entries, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    /// The entries, strictly ascending by name.
    pub entries: Vec<Entry>,
}

/// Checks that `name` may be an entry name.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::BadInput(format!(
            "invalid file name {:?}: names must be non-empty without '/' or NUL and not . or ..",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

impl Tree {
    /// Sorts entries into canonical order and checks names are valid and unique.
    pub fn canonicalize(&mut self) -> Result<()> {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in &mut self.entries {
            check_name(&e.name)?;
            e.meta.xattrs.sort();
        }
        if let Some(w) = self.entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::BadInput(format!(
                "duplicate entry {:?} in one directory",
                String::from_utf8_lossy(&w[0].name)
            )));
        }
        Ok(())
    }

    /// Finds an entry by name.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Total file bytes and entry count of this tree's whole subtree.
    pub fn totals(&self) -> (u64, u64) {
        self.entries.iter().fold((0, 0), |(b, n), e| {
            (b + e.content.bytes(), n + e.content.entries())
        })
    }

    /// The canonical encoding. The tree must already be canonical ([`Tree::canonicalize`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(TREE_MAGIC);
        w.varint(self.entries.len() as u64);
        for e in &self.entries {
            encode_entry(&mut w, e);
        }
        w.buf
    }

    /// Decodes a tree, rejecting any non-canonical encoding.
    pub fn decode(data: &[u8]) -> Result<Tree> {
        let mut r = Reader::with_magic(data, TREE_MAGIC, "tree")?;
        let n = r.varint()?;
        let mut entries = Vec::with_capacity(n.min(65536) as usize);
        for _ in 0..n {
            let e = decode_entry(&mut r)?;
            if let Some(prev) = entries.last() {
                let prev: &Entry = prev;
                if prev.name >= e.name {
                    return Err(r.err("entries out of order"));
                }
            }
            entries.push(e);
        }
        r.finish()?;
        Ok(Tree { entries })
    }
}

/// Encodes one entry (also used for a snapshot's root entry).
pub(crate) fn encode_entry(w: &mut Writer, e: &Entry) {
    w.bytes(&e.name);
    w.u8(e.content.code());
    w.varint(u64::from(e.meta.mode));
    w.varint(u64::from(e.meta.uid));
    w.varint(u64::from(e.meta.gid));
    w.zigzag(e.meta.mtime_sec);
    w.varint(u64::from(e.meta.mtime_nsec));
    match &e.content {
        Content::File { size, data } => {
            w.varint(*size);
            match data {
                FileData::Empty => w.u8(0),
                FileData::Blob(s) => {
                    w.u8(1);
                    w.score(s)
                }
                FileData::Chunks(s) => {
                    w.u8(2);
                    w.score(s)
                }
            }
        }
        Content::Dir {
            tree,
            bytes,
            entries,
        } => {
            w.score(tree);
            w.varint(*bytes);
            w.varint(*entries);
        }
        Content::Symlink(t) => w.bytes(t),
        Content::CharDev(d) | Content::BlockDev(d) => w.varint(*d),
        Content::Fifo => {}
    }
    match &e.link {
        None => w.u8(0),
        Some(tag) => {
            w.u8(1);
            w.buf.extend_from_slice(tag);
        }
    }
    w.varint(e.meta.xattrs.len() as u64);
    for (k, v) in &e.meta.xattrs {
        w.bytes(k);
        w.bytes(v);
    }
}

/// Decodes one entry; `root` allows the empty name of a snapshot's root.
pub(crate) fn decode_entry_named(r: &mut Reader<'_>, root: bool) -> Result<Entry> {
    let name = r.bytes()?.to_vec();
    if !(root && name.is_empty()) {
        check_name(&name).map_err(|_| r.err("invalid entry name"))?;
    }
    let code = r.u8()?;
    let mode = r.u32()?;
    if mode & !0o7777 != 0 {
        return Err(r.err("mode has type bits"));
    }
    let (uid, gid) = (r.u32()?, r.u32()?);
    let mtime_sec = r.zigzag()?;
    let mtime_nsec = r.u32()?;
    if mtime_nsec >= 1_000_000_000 {
        return Err(r.err("nanoseconds out of range"));
    }
    let content = match code {
        1 => {
            let size = r.varint()?;
            let data = match r.u8()? {
                0 if size == 0 => FileData::Empty,
                1 if size > 0 => FileData::Blob(r.score()?),
                2 if size > 0 => FileData::Chunks(r.score()?),
                _ => return Err(r.err("bad file data")),
            };
            Content::File { size, data }
        }
        2 => Content::Dir {
            tree: r.score()?,
            bytes: r.varint()?,
            entries: r.varint()?,
        },
        3 => Content::Symlink(r.bytes()?.to_vec()),
        4 => Content::CharDev(r.varint()?),
        5 => Content::BlockDev(r.varint()?),
        6 => Content::Fifo,
        _ => return Err(r.err("unknown entry type")),
    };
    let link = match r.u8()? {
        0 => None,
        1 => {
            let mut tag = [0u8; 16];
            for b in &mut tag {
                *b = r.u8()?;
            }
            Some(tag)
        }
        _ => return Err(r.err("bad link flag")),
    };
    let nx = r.varint()?;
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..nx {
        let k = r.bytes()?.to_vec();
        let v = r.bytes()?.to_vec();
        if k.is_empty() || k.contains(&0) || xattrs.last().is_some_and(|(p, _)| *p >= k) {
            return Err(r.err("xattrs not canonical"));
        }
        xattrs.push((k, v));
    }
    Ok(Entry {
        name,
        meta: Meta {
            mode,
            uid,
            gid,
            mtime_sec,
            mtime_nsec,
            xattrs,
        },
        content,
        link,
    })
}

fn decode_entry(r: &mut Reader<'_>) -> Result<Entry> {
    decode_entry_named(r, false)
}

/// Computes the hardlink tag of a group from its first member's path and its own encoding.
///
/// Including the encoded content means a stale tag left in an older part of the tree can only
/// collide with a new group whose content and metadata are identical.
pub fn link_tag(first_path: &[u8], entry: &Entry) -> [u8; 16] {
    let mut w = Writer::default();
    let mut unnamed = entry.clone();
    unnamed.name.clear();
    unnamed.link = None;
    encode_entry(&mut w, &unnamed);
    let mut h = blake3::Hasher::new();
    h.update(b"spawngrid link tag v1\0");
    h.update(first_path);
    h.update(&[0]);
    h.update(&w.buf);
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&h.finalize().as_bytes()[..16]);
    tag
}

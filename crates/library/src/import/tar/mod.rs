//! Importing a tar stream (plain, gzip or zstd) as a snapshot, keeping every piece of metadata.
//!
//! The stream is framed here rather than by the `tar` crate's entry iterator, whose PAX parser
//! (tar 0.4) splits records on newlines, misreading paths and xattr values that contain one,
//! and which takes a stream ending at a header boundary for a complete archive. Header fields
//! are still decoded by [`tar::Header`].
//!
//! One thread reads the stream and cuts file data into exactly the pieces
//! [`crate::file::store_file`] would (so a file has the same score whether imported from a directory
//! or a tar); rayon hashes, compresses and stores the pieces, with at most [`IN_FLIGHT`] bytes
//! read but not yet stored.

use super::{ImportOptions, Imported};
use crate::build::{Dir, Node};
use crate::tree::{Content, FileData, Meta};
use crate::{Error, Library, Result};
use std::collections::HashSet;
use std::io::{self, Read};
use tar::EntryType;

mod budget;
mod member;

use budget::Store;
use member::{next_member, split_path, Member, Stream};

/// A result whose error is the reason an archive is refused, to be prefixed with where.
type Why<T> = std::result::Result<T, String>;
/// A PAX record's key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Size of a tar block.
const BLOCK: u64 = 512;
/// The most file bytes read from the stream but not yet stored.
pub const IN_FLIGHT: u64 = 256 << 20;
/// The largest PAX or GNU long-name header body accepted.
const MAX_EXTENSION: u64 = 1 << 20;
/// The longest name of one path component.
const NAME_MAX: usize = 255;

/// Imports a tar stream (plain, gzip or zstd, detected by magic bytes) as a new snapshot.
///
/// Paths that are absolute or contain `..`, hardlinks to anything but an earlier
/// non-directory entry, and truncated or corrupt streams are errors, and then no snapshot is
/// committed. Duplicate entries are resolved as GNU tar extracts them (the last one wins) with
/// a warning; entry types the library cannot hold, and device nodes unless
/// `opts.allow_devices`, are skipped with a warning.
pub fn import_tar(lib: &Library, reader: impl Read, opts: &ImportOptions) -> Result<Imported> {
    let mut stream = Stream::new(decompressed(reader)?);
    let store = Store::new(lib, opts.progress);
    let mut tree = TarTree::new(opts.allow_devices);
    opts.progress.phase("reading tar");
    rayon::in_place_scope(|scope| tree.read_all(&mut stream, &store, scope))?;
    super::commit(lib, &tree.root, opts, opts.parent, tree.warnings)
}

/// Imports image layers as one snapshot, applying them in order as overlayfs stacks them (the
/// OCI image layer rules): an entry of a later layer replaces the same path of the layers
/// below; `DIR/.wh.NAME` deletes `DIR/NAME` (and all below it) of the layers below;
/// `DIR/.wh..wh..opq` hides everything the layers below have in `DIR`. Each layer is a tar
/// stream (already decompressed) read to its end, so a caller's digest check sees every byte;
/// it comes with a name for messages, which prefixes any error about its content.
pub fn import_layers<'r>(
    lib: &Library,
    layers: impl IntoIterator<Item = Result<(String, Box<dyn Read + 'r>)>>,
    opts: &ImportOptions,
) -> Result<Imported> {
    let store = Store::new(lib, opts.progress);
    let mut tree = TarTree::new(opts.allow_devices);
    for layer in layers {
        let (what, reader) = layer?;
        opts.progress.phase(&format!("reading {what}"));
        let mut stream = Stream::new(reader);
        tree.layer = Some(HashSet::new());
        rayon::in_place_scope(|scope| tree.read_all(&mut stream, &store, scope)).map_err(|e| {
            match e {
                Error::BadInput(why) => Error::BadInput(format!("{what}: {why}")),
                e => e,
            }
        })?;
    }
    super::commit(lib, &tree.root, opts, opts.parent, tree.warnings)
}

/// Wraps `reader` in a gzip or zstd decoder if it starts with that format's magic bytes.
///
/// Anything else is passed through unchanged (and read as a plain tar).
pub fn decompressed<'a>(mut reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e)),
        }
    }
    let r = io::Cursor::new(head).take(n as u64).chain(reader);
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(stream_err)?)
        }
        _ => Box::new(r),
    })
}

fn stream_err(e: io::Error) -> Error {
    Error::BadInput(format!("tar stream: {e}"))
}

/// An error about one entry: `tar entry "PATH": WHAT`, on one line.
fn bad(path: &[u8], what: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("tar entry {}: {what}", shown(path)))
}

fn shown(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

/// The tree being built from the archive, with what is needed to resolve hardlinks and
/// duplicates.
struct TarTree {
    root: Dir,
    /// Directories that had an entry of their own (not just implied by their children).
    explicit: HashSet<Vec<u8>>,
    groups: u64,
    /// Whether device nodes are kept ([`ImportOptions::allow_devices`]).
    allow_devices: bool,
    warnings: Vec<String>,
    /// When reading image layers: the paths the current layer made, and every directory above
    /// them (what a whiteout in this layer leaves alone, and where a second entry is a
    /// duplicate rather than an upper layer's replacement).
    layer: Option<HashSet<Vec<u8>>>,
}

/// A directory implied by a path below it, or an archive without a root entry.
fn implicit_dir() -> Dir {
    Dir::new(Meta {
        mode: 0o755,
        ..Meta::default()
    })
}

impl TarTree {
    fn new(allow_devices: bool) -> TarTree {
        TarTree {
            root: implicit_dir(),
            explicit: HashSet::new(),
            groups: 0,
            allow_devices,
            warnings: Vec::new(),
            layer: None,
        }
    }

    fn read_all<'s, R: Read>(
        &mut self,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<()> {
        while let Some(m) = next_member(s)? {
            let comps = split_path(&m.path).map_err(|why| bad(&m.path, why))?;
            if self.whiteout(&comps) {
                continue;
            }
            if let Some(node) = self.node(&m, s, store, scope)? {
                self.place(&m.path, &comps, node)?;
            }
        }
        s.finish()
    }

    /// In a layer, applies a whiteout entry (and says so); false for any other entry.
    fn whiteout(&mut self, comps: &[Vec<u8>]) -> bool {
        let Some(made) = &self.layer else {
            return false;
        };
        let Some((name, dirs)) = comps.split_last() else {
            return false;
        };
        let Some(hidden) = name.strip_prefix(WHITEOUT) else {
            return false;
        };
        let at = dirs.join(&b'/');
        if let Some(dir) = dir_at(&mut self.root, dirs) {
            if hidden == OPAQUE {
                keep_only(dir, &at, made);
            } else if !made.contains(&child_path(&at, hidden)) {
                dir.children.remove(hidden);
            }
        }
        true
    }

    /// Whether a second entry for `path` deserves a warning: always in a plain archive; in a
    /// layer only when the same layer made it (an upper layer replacing a lower is the point).
    fn repeated(&self, path: &[u8]) -> bool {
        self.layer.as_ref().is_none_or(|made| made.contains(path))
    }

    fn warn(&mut self, line: String) {
        tracing::info!("{line}");
        self.warnings.push(line);
    }

    /// Turns a member into a node; `None` for members that are skipped.
    fn node<'s, R: Read>(
        &mut self,
        m: &Member,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<Option<Node>> {
        let leaf = |content| Some(Node::leaf(m.meta.clone(), content));
        Ok(match m.kind {
            EntryType::Directory => Some(Node::Dir(Dir::new(m.meta.clone()))),
            EntryType::Regular if m.path.ends_with(b"/") => {
                Some(Node::Dir(Dir::new(m.meta.clone())))
            }
            EntryType::Regular | EntryType::Continuous if !m.sparse => {
                self.file(m, s, store, scope)?
            }
            EntryType::Symlink => leaf(Content::Symlink(m.link.clone())),
            EntryType::Link => Some(self.hardlink(m)?),
            EntryType::Char | EntryType::Block if !self.allow_devices => {
                let kind = match m.kind {
                    EntryType::Block => "block",
                    _ => "character",
                };
                let path = String::from_utf8_lossy(&m.path).into_owned();
                self.warn(super::dropped_device(&path, kind, m.rdev));
                None
            }
            EntryType::Char => leaf(Content::CharDev(m.rdev)),
            EntryType::Block => leaf(Content::BlockDev(m.rdev)),
            EntryType::Fifo => leaf(Content::Fifo),
            kind => {
                let what = if m.sparse {
                    "sparse file".to_string()
                } else {
                    type_name(kind)
                };
                self.warn(format!(
                    "tar entry {}: skipped ({what} is not supported)",
                    shown(&m.path)
                ));
                None
            }
        })
    }

    fn file<'s, R: Read>(
        &mut self,
        m: &Member,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<Option<Node>> {
        let meta = m.meta.clone();
        if m.size == 0 {
            let content = Content::File {
                size: 0,
                data: FileData::Empty,
            };
            return Ok(Some(Node::leaf(meta, content)));
        }
        let slot = store.file(scope, s, m.size).map_err(|e| bad(&m.path, e))?;
        Ok(Some(Node::File {
            meta,
            slot,
            group: None,
        }))
    }

    /// A new name for an earlier non-directory member, in its hardlink group.
    fn hardlink(&mut self, m: &Member) -> Result<Node> {
        let target = split_path(&m.link).map_err(|why| {
            bad(
                &m.path,
                format!("hard link target {}: {why}", shown(&m.link)),
            )
        })?;
        let next = self.groups;
        let missing = || {
            let t = shown(&m.link);
            bad(
                &m.path,
                format!("hard link target {t} is not an earlier non-directory entry"),
            )
        };
        let (group, node) = match find(&mut self.root, &target).ok_or_else(missing)? {
            Node::File { meta, slot, group } => {
                let g = *group.get_or_insert(next);
                (
                    g,
                    Node::File {
                        meta: meta.clone(),
                        slot: slot.clone(),
                        group: Some(g),
                    },
                )
            }
            Node::Leaf { entry, group } => {
                let g = *group.get_or_insert(next);
                (
                    g,
                    Node::Leaf {
                        entry: entry.clone(),
                        group: Some(g),
                    },
                )
            }
            Node::Dir(_) | Node::Stored(_) => return Err(missing()),
        };
        if group == next {
            self.groups += 1;
        }
        Ok(node)
    }

    /// Puts a node at its path, creating missing parents and resolving duplicates.
    fn place(&mut self, path: &[u8], comps: &[Vec<u8>], node: Node) -> Result<()> {
        let Some((name, dirs)) = comps.split_last() else {
            return match node {
                Node::Dir(d) => {
                    self.root.meta = d.meta;
                    Ok(())
                }
                _ => Err(bad(path, "the archive root must be a directory")),
            };
        };
        let mut lines = Vec::new();
        let key = comps.join(&b'/');
        let repeated = self.repeated(&key);
        let dirs_repeated = self.repeated(&dirs.join(&b'/'));
        if let Some(made) = &mut self.layer {
            for end in (0..=comps.len()).rev() {
                if !made.insert(comps[..end].join(&b'/')) {
                    break;
                }
            }
        }
        let dir = parent(&mut self.root, dirs, path, &mut lines);
        if !dirs_repeated {
            lines.clear(); // an upper layer's directory over a lower layer's file
        }
        let first_dir = matches!(node, Node::Dir(_)) && self.explicit.insert(key);
        match (dir.children.get_mut(name), node) {
            (None, node) => {
                dir.children.insert(name.clone(), node);
            }
            (Some(Node::Dir(old)), Node::Dir(new)) => {
                old.meta = new.meta;
                if !first_dir && repeated {
                    lines.push(duplicate(path));
                }
            }
            (Some(old), node) if !repeated => *old = node,
            (Some(old), node) => {
                lines.push(match old {
                    Node::Dir(d) if !d.children.is_empty() && !matches!(node, Node::Dir(_)) => {
                        format!(
                            "tar entry {}: replaces a non-empty directory (the last entry wins)",
                            shown(path)
                        )
                    }
                    _ => duplicate(path),
                });
                *old = node;
            }
        }
        lines.into_iter().for_each(|l| self.warn(l));
        Ok(())
    }
}

fn duplicate(path: &[u8]) -> String {
    format!(
        "tar entry {}: appears more than once (the last one wins)",
        shown(path)
    )
}

/// The directory at `dirs` below `root`, created as needed; non-directories in the way are
/// replaced (with a warning line).
fn parent<'d>(
    root: &'d mut Dir,
    dirs: &[Vec<u8>],
    path: &[u8],
    lines: &mut Vec<String>,
) -> &'d mut Dir {
    let mut dir = root;
    for c in dirs {
        let node = dir
            .children
            .entry(c.clone())
            .or_insert_with(|| Node::Dir(implicit_dir()));
        if !matches!(node, Node::Dir(_)) {
            let what = format!(
                "replaces the non-directory {} on its path with a directory",
                shown(c)
            );
            lines.push(format!("tar entry {}: {what}", shown(path)));
            *node = Node::Dir(implicit_dir());
        }
        let Node::Dir(d) = node else {
            unreachable!("just made a directory")
        };
        dir = d;
    }
    dir
}

/// The prefix of a whiteout entry's name.
const WHITEOUT: &[u8] = b".wh.";
/// The name (after [`WHITEOUT`]) of an opaque-directory marker.
const OPAQUE: &[u8] = b".wh..opq";

/// `dir/name` as a path key (`name` alone at the root).
fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// Removes from `dir` (at path `at`) everything the current layer did not make.
fn keep_only(dir: &mut Dir, at: &[u8], made: &HashSet<Vec<u8>>) {
    dir.children.retain(|name, node| {
        let path = child_path(at, name);
        let keep = made.contains(&path);
        if let (true, Node::Dir(d)) = (keep, node) {
            keep_only(d, &path, made);
        }
        keep
    });
}

/// The directory at `comps` below `root` (the root itself for none), if it is one.
fn dir_at<'d>(root: &'d mut Dir, comps: &[Vec<u8>]) -> Option<&'d mut Dir> {
    let mut dir = root;
    for c in comps {
        match dir.children.get_mut(c)? {
            Node::Dir(d) => dir = d,
            _ => return None,
        }
    }
    Some(dir)
}

/// The node at `comps` below `root`, if every parent is a directory.
fn find<'d>(root: &'d mut Dir, comps: &[Vec<u8>]) -> Option<&'d mut Node> {
    let (last, dirs) = comps.split_last()?;
    dir_at(root, dirs)?.children.get_mut(last)
}

fn type_name(kind: EntryType) -> String {
    format!("entry type {:?}", kind.as_byte() as char)
}

//! An in-memory, mutable directory tree that is turned into stored tree objects bottom-up.
//!
//! Importers (directory, tar) fill a [`Dir`] and then call [`Dir::store`]; the overlay
//! diff-apply starts from stored entries of a parent snapshot and replaces only what changed.

use crate::tree::{link_tag, Content, Entry, FileData, Meta, Tree};
use crate::{Library, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

/// A file's data, stored by a job that may still be running when the tree is built.
pub type FileSlot = Arc<OnceLock<Result<(u64, FileData)>>>;

/// One node of an in-memory tree.
#[derive(Debug)]
pub enum Node {
    /// A directory being built.
    Dir(Dir),
    /// A non-directory entry whose content is final (symlink, device, fifo, or a known file).
    Leaf {
        /// The entry (its name is ignored; the parent's key is the name).
        entry: Entry,
        /// Hardlink group within this build, if the inode has several names in the tree.
        group: Option<u64>,
    },
    /// A regular file whose data a job is storing.
    File {
        /// Owner, mode, time, xattrs.
        meta: Meta,
        /// Filled by the storing job.
        slot: FileSlot,
        /// Hardlink group within this build.
        group: Option<u64>,
    },
    /// An entry kept unchanged from a stored tree (a whole subtree, for a directory).
    Stored(Entry),
}

impl Node {
    /// A final non-directory entry outside any hardlink group.
    pub fn leaf(meta: Meta, content: Content) -> Node {
        Node::Leaf {
            entry: Entry {
                name: Vec::new(),
                meta,
                content,
                link: None,
            },
            group: None,
        }
    }
}

/// A directory being built: its metadata and children by name.
#[derive(Debug, Default)]
pub struct Dir {
    /// The directory's own metadata.
    pub meta: Meta,
    /// Children, in canonical (byte) order.
    pub children: BTreeMap<Vec<u8>, Node>,
}

impl Dir {
    /// A directory with `meta` and no children.
    pub fn new(meta: Meta) -> Dir {
        Dir {
            meta,
            children: BTreeMap::new(),
        }
    }

    /// A directory holding the entries of a stored tree, each kept as [`Node::Stored`].
    pub fn from_tree(meta: Meta, tree: Tree) -> Dir {
        let children = tree
            .entries
            .into_iter()
            .map(|e| (e.name.clone(), Node::Stored(e)))
            .collect();
        Dir { meta, children }
    }

    /// Stores every tree below and including this one; returns this directory as a root entry.
    ///
    /// All file jobs must have finished. Hardlink groups with at least two members in this
    /// tree get a tag derived from their first member's path; singletons get none.
    pub fn store(&self, lib: &Library) -> Result<Entry> {
        let mut counts = HashMap::new();
        self.count_groups(&mut counts);
        let mut tags = HashMap::new();
        let content = self.store_dir(lib, &mut Vec::new(), &counts, &mut tags)?;
        Ok(Entry {
            name: Vec::new(),
            meta: self.meta.clone(),
            content,
            link: None,
        })
    }

    fn count_groups(&self, counts: &mut HashMap<u64, u32>) {
        for node in self.children.values() {
            match node {
                Node::Dir(d) => d.count_groups(counts),
                Node::Leaf { group: Some(g), .. } | Node::File { group: Some(g), .. } => {
                    *counts.entry(*g).or_default() += 1
                }
                _ => {}
            }
        }
    }

    fn store_dir(
        &self,
        lib: &Library,
        path: &mut Vec<u8>,
        counts: &HashMap<u64, u32>,
        tags: &mut HashMap<u64, [u8; 16]>,
    ) -> Result<Content> {
        let mut entries = Vec::with_capacity(self.children.len());
        for (name, node) in &self.children {
            let len = path.len();
            path.push(b'/');
            path.extend_from_slice(name);
            let (mut entry, group) = match node {
                Node::Dir(d) => {
                    let content = d.store_dir(lib, path, counts, tags)?;
                    (
                        Entry {
                            name: Vec::new(),
                            meta: d.meta.clone(),
                            content,
                            link: None,
                        },
                        None,
                    )
                }
                Node::Leaf { entry, group } => (entry.clone(), *group),
                Node::File { meta, slot, group } => {
                    let (size, data) = match slot.get() {
                        Some(Ok(v)) => *v,
                        Some(Err(e)) => return Err(e.duplicate()),
                        None => unreachable!("file jobs finish before store"),
                    };
                    let content = Content::File { size, data };
                    (
                        Entry {
                            name: Vec::new(),
                            meta: meta.clone(),
                            content,
                            link: None,
                        },
                        *group,
                    )
                }
                Node::Stored(e) => (e.clone(), None),
            };
            if let Some(g) = group.filter(|g| counts.get(g).copied().unwrap_or(0) > 1) {
                let tag = *tags.entry(g).or_insert_with(|| link_tag(path, &entry));
                entry.link = Some(tag);
            }
            entry.name = name.clone();
            path.truncate(len);
            entries.push(entry);
        }
        let tree = Tree { entries };
        let (bytes, n) = tree.totals();
        Ok(Content::Dir {
            tree: lib.put_tree(&tree)?,
            bytes,
            entries: n,
        })
    }
}

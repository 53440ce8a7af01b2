//! Node ids and lazily decoded directories.
//!
//! A node id is `1 +` the entry's position in the snapshot's canonical depth-first order (the
//! root is 1). Child `i` of directory `N` has id `N + 1 + Σ entries()` of its earlier siblings,
//! so any id can be resolved from the snapshot alone by walking down from the root with the
//! per-directory subtree counts: a restarted server answers for ids the kernel already holds.
//! Decoded trees are cached in memory (bounded, least recently used dropped first).
//!
//! Hardlinks: every member of a link group is one node (one kernel inode, one page cache)
//! whose id is derived from the group's tag with bit 63 set, where no positional id can be.
//! Those ids are remembered in memory when first handed out (fuser gives the kernel the same
//! number as node id and `st_ino`, so members must share a node id to share an inode number);
//! a restarted server that is asked for one it never handed out walks the whole snapshot once
//! to find every link group.

use library::{Content, Entry, Library, Score, Tree};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How many decoded directories are kept in memory.
const DIR_CACHE: usize = 8192;
/// How many resolved nodes are remembered before the memo is cleared.
const NODE_MEMO: usize = 1 << 20;

/// The root's node id (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;
/// Bit set in the node id of every hardlink group.
pub const LINK_BIT: u64 = 1 << 63;

/// The node id of the hardlink group with tag `tag`.
pub fn link_id(tag: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&tag[..8]);
    u64::from_le_bytes(b) | LINK_BIT
}

/// One resolved entry of the snapshot and its node id.
#[derive(Debug)]
pub struct Node {
    /// The node id the kernel knows it by.
    pub id: u64,
    /// The entry itself (the root's name is empty). For a hardlink group, the entry of the
    /// member seen first: take names from the directory, never from here.
    pub entry: Entry,
}

/// A decoded directory: its tree and, for each child, the offset of its node id from the
/// directory's own id.
#[derive(Debug)]
pub struct Dir {
    /// The directory's entries, sorted by name.
    pub tree: Tree,
    /// `rel[i]`: child `i`'s id minus the directory's id.
    pub rel: Vec<u64>,
}

impl Dir {
    fn new(tree: Tree) -> Dir {
        let mut next = 1;
        let rel = tree
            .entries
            .iter()
            .map(|e| {
                let r = next;
                next += e.content.entries();
                r
            })
            .collect();
        Dir { tree, rel }
    }
}

/// Why a node could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such entry (or the id is outside the snapshot).
    #[error("no such entry")]
    NotFound,
    /// A hardlink node id that is in no link group of the snapshot.
    #[error("stale node id")]
    Stale,
    /// The id or name is not a directory where one is needed.
    #[error("not a directory")]
    NotDir,
    /// The library could not produce a tree.
    #[error(transparent)]
    Library(#[from] library::Error),
}

#[derive(Default)]
struct DirCache {
    map: HashMap<Score, (Arc<Dir>, u64)>,
    tick: u64,
}

/// The snapshot's namespace: resolves node ids and names to entries, decoding trees on demand.
pub struct Nodes {
    lib: Arc<Library>,
    root: Arc<Node>,
    dirs: Mutex<DirCache>,
    memo: Mutex<HashMap<u64, Arc<Node>>>,
    links: Mutex<HashMap<u64, Arc<Node>>>,
    /// Whether every link group has been found (see [`Nodes::find_links`]).
    all_links: AtomicBool,
}

impl Nodes {
    /// A namespace rooted at `root` (a snapshot's root entry). Decodes nothing yet.
    pub fn new(lib: Arc<Library>, root: Entry) -> Nodes {
        Nodes {
            lib,
            root: Arc::new(Node {
                id: ROOT,
                entry: root,
            }),
            dirs: Mutex::default(),
            memo: Mutex::default(),
            links: Mutex::default(),
            all_links: AtomicBool::new(false),
        }
    }

    /// The root node.
    pub fn root(&self) -> &Arc<Node> {
        &self.root
    }

    /// Total number of node ids (entries including the root).
    pub fn count(&self) -> u64 {
        self.root.entry.content.entries()
    }

    /// The decoded directory of `node`.
    pub fn dir(&self, node: &Node) -> Result<Arc<Dir>, NodeError> {
        let Content::Dir { tree, .. } = &node.entry.content else {
            return Err(NodeError::NotDir);
        };
        {
            let mut c = self.dirs.lock().expect("dir cache");
            c.tick += 1;
            let tick = c.tick;
            if let Some((d, t)) = c.map.get_mut(tree) {
                *t = tick;
                return Ok(d.clone());
            }
        }
        let dir = Arc::new(Dir::new(self.lib.tree(tree)?));
        let mut c = self.dirs.lock().expect("dir cache");
        if c.map.len() >= DIR_CACHE {
            // Drop the older half: amortized O(1) per insert.
            let mut ticks: Vec<u64> = c.map.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            c.map.retain(|_, (_, t)| *t > cut);
        }
        let tick = c.tick;
        c.map.insert(*tree, (dir.clone(), tick));
        Ok(dir)
    }

    /// The `i`th child of directory `parent` (whose decoded tree is `dir`).
    pub fn child(&self, parent: &Node, dir: &Dir, i: usize) -> Arc<Node> {
        let entry = &dir.tree.entries[i];
        if let Some(tag) = &entry.link {
            let id = link_id(tag);
            let mut links = self.links.lock().expect("links");
            let node = links.entry(id).or_insert_with(|| {
                Arc::new(Node {
                    id,
                    entry: entry.clone(),
                })
            });
            return node.clone();
        }
        let id = parent.id + dir.rel[i];
        if let Some(n) = self.memo.lock().expect("memo").get(&id) {
            return n.clone();
        }
        let node = Arc::new(Node {
            id,
            entry: dir.tree.entries[i].clone(),
        });
        self.remember(&node);
        node
    }

    fn remember(&self, node: &Arc<Node>) {
        let mut m = self.memo.lock().expect("memo");
        if m.len() >= NODE_MEMO {
            m.clear();
        }
        m.insert(node.id, node.clone());
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: &Node, name: &[u8]) -> Result<Arc<Node>, NodeError> {
        let dir = self.dir(parent)?;
        let i = dir
            .tree
            .entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .map_err(|_| NodeError::NotFound)?;
        Ok(self.child(parent, &dir, i))
    }

    /// Registers every hardlink group of the snapshot by walking all of its directories (what
    /// a restarted server does the first time the kernel names a group it did not hand out).
    fn find_links(&self) -> Result<(), NodeError> {
        let mut stack = vec![self.root.clone()];
        while let Some(node) = stack.pop() {
            let dir = self.dir(&node)?;
            for (i, e) in dir.tree.entries.iter().enumerate() {
                if e.link.is_some() {
                    self.child(&node, &dir, i);
                } else if matches!(e.content, Content::Dir { .. }) {
                    stack.push(Arc::new(Node {
                        id: node.id + dir.rel[i],
                        entry: e.clone(),
                    }));
                }
            }
        }
        self.all_links.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Resolves a node id, walking down from the root if it is not remembered.
    pub fn get(&self, id: u64) -> Result<Arc<Node>, NodeError> {
        if id == ROOT {
            return Ok(self.root.clone());
        }
        if id & LINK_BIT != 0 {
            let known = self.links.lock().expect("links").get(&id).cloned();
            if known.is_some() || self.all_links.load(Ordering::Relaxed) {
                return known.ok_or(NodeError::Stale);
            }
            self.find_links()?;
            let links = self.links.lock().expect("links");
            return links.get(&id).cloned().ok_or(NodeError::Stale);
        }
        if let Some(n) = self.memo.lock().expect("memo").get(&id) {
            return Ok(n.clone());
        }
        if id < ROOT || id >= ROOT + self.count() {
            return Err(NodeError::NotFound);
        }
        let mut node = self.root.clone();
        while node.id != id {
            let dir = self.dir(&node)?;
            // The last child whose id is <= the wanted one holds it in its subtree.
            let i = dir.rel.partition_point(|r| node.id + r <= id);
            if i == 0 || dir.tree.entries[i - 1].link.is_some() {
                return Err(NodeError::NotFound);
            }
            node = self.child(&node, &dir, i - 1);
        }
        Ok(node)
    }
}

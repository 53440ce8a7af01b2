//! The files nearly every first command needs, fetched while the env is still being made.
//!
//! A dynamically linked command cannot start before the dynamic loader, its cache and the C
//! library are read, and each is asked for only once the previous one runs: on a node that
//! has never seen the snapshot these were three to four fetches in a row from the remote
//! library after the spawn (most of a cross-node first command). A new server fetches them
//! into the file cache as soon as the mount is live, in parallel, while the node makes the
//! env; an `open` that comes first waits for the same fetch (the cache fetches a file once).
//! Paths the snapshot lacks are skipped; symlinks are followed inside the snapshot.

use crate::cache::Cache;
use crate::nodes::{Node, Nodes};
use library::{Content, Entry, FileData, Library};
use std::sync::Arc;

/// What is fetched ahead, relative to the snapshot's root: glibc's loader (x86-64 and
/// aarch64), its cache and the C library, musl's loader (also its libc), and the shell.
pub const FIRST_FILES: &[&str] = &[
    "etc/ld.so.cache",
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/ld-linux-aarch64.so.1",
    "lib/aarch64-linux-gnu/libc.so.6",
    "lib/ld-musl-x86_64.so.1",
    "lib/ld-musl-aarch64.so.1",
    "bin/sh",
];

/// How many symlinks one path may pass through (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Starts [`fetch`] on a thread of its own and returns at once.
pub fn start(lib: Arc<Library>, root: Entry, cache: Arc<Cache>) {
    let spawned = std::thread::Builder::new()
        .name("snapfs-warm".into())
        .spawn(move || fetch(&lib, root, &cache));
    if let Err(e) = spawned {
        tracing::debug!("fetching ahead: {e}");
    }
}

/// Fetches [`FIRST_FILES`] of the snapshot rooted at `root` into `cache`, one thread per
/// file, and returns when all are done. Failures are only logged: the `open` that needs the
/// file fetches it (and reports) itself.
pub fn fetch(lib: &Arc<Library>, root: Entry, cache: &Cache) {
    let nodes = Nodes::new(lib.clone(), root);
    std::thread::scope(|s| {
        for path in FIRST_FILES {
            let nodes = &nodes;
            s.spawn(move || {
                let Some(node) = resolve(nodes, path) else {
                    return;
                };
                let Content::File {
                    data: data @ (FileData::Blob(score) | FileData::Chunks(score)),
                    ..
                } = &node.entry.content
                else {
                    return;
                };
                match cache.acquire(lib, *score, data) {
                    Ok(_) => cache.release(score),
                    Err(e) => tracing::debug!(path, "fetching ahead: {e}"),
                }
            });
        }
    });
}

/// The node at `path` (relative to the root), following symlinks within the snapshot; `None`
/// if there is none.
pub fn resolve(nodes: &Nodes, path: &str) -> Option<Arc<Node>> {
    let mut todo: Vec<Vec<u8>> = split(path.as_bytes()).rev().collect();
    let mut stack = vec![nodes.root().clone()];
    let mut links = 0;
    while let Some(name) = todo.pop() {
        match name.as_slice() {
            b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let node = nodes.lookup(stack.last()?, &name).ok()?;
        if let Content::Symlink(target) = &node.entry.content {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            if target.starts_with(b"/") {
                stack.truncate(1);
            }
            todo.extend(split(target).rev());
            continue;
        }
        stack.push(node);
    }
    stack.pop()
}

fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
}

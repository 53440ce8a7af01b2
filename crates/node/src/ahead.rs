//! Reading ahead on the node: when a spawn needs a new mount of a snapshot in a remote
//! library and no mount keeper waits on standby, the node reads the snapshot and its root tree
//! into the node's block cache while the mount's keeper and server processes start; the server, which needs both before it
//! answers the kernel, then finds them there instead of asking the library's store in turn.
//! (Fetching the first command's files from here too was measured slower on two cores: see
//! bench/README.md, "Grid benchmark".)

use library::Score;
use std::time::Instant;

/// Starts reading `score` and its root tree from `store`'s library on a thread of its own if
/// the library is remote and the node keeps its pack index file, and returns at once. (Without
/// the file the library's index is rebuilt from the store, which the server does anyway: doing
/// it twice at once was measured slower.) Failures are only logged: the mount server reads
/// both itself (and reports what it cannot).
pub fn start(store: &store::Store, score: Score) {
    let remote = matches!(store.library_at(), store::LibraryAt::S3 { .. });
    if !remote || !store.data().pack_index().exists() {
        return;
    }
    let store = store.clone();
    let spawned = std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || {
            let began = Instant::now();
            let read = store.library_reader().and_then(|lib| {
                let snap = lib.snapshot(&score)?;
                if let library::Content::Dir { tree, .. } = &snap.root.content {
                    lib.tree(tree)?;
                }
                Ok(())
            });
            match read {
                Ok(()) => tracing::debug!(snapshot = %score, ms = began.elapsed().as_millis(), "read ahead"),
                Err(e) => tracing::debug!(snapshot = %score, "reading ahead: {e:#}"),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("reading ahead: {e}");
    }
}

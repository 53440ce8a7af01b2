//! Snapshots: an immutable filesystem state (a root directory entry) plus its history metadata.

use crate::codec::{Reader, Writer};
use crate::tree::{decode_entry_named, encode_entry, Content, Entry};
use crate::{Error, Result, Score};

const SNAPSHOT_MAGIC: &[u8; 4] = b"SGS1";

/// An immutable filesystem state. Its score is the score of its encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The root directory: metadata plus the score of its tree (name is empty).
    pub root: Entry,
    /// The snapshot this one was derived from, if any.
    pub parent: Option<Score>,
    /// Who made it.
    pub author: String,
    /// When it was made, nanoseconds since the epoch.
    pub time_ns: i64,
    /// A free-form note ("import of rootfs.tar", "save of env web").
    pub note: String,
}

impl Snapshot {
    /// The root tree's score.
    pub fn tree(&self) -> Score {
        match self.root.content {
            Content::Dir { tree, .. } => tree,
            _ => unreachable!("decode and constructors guarantee a directory root"),
        }
    }

    /// Logical bytes of all regular files in the snapshot.
    pub fn bytes(&self) -> u64 {
        self.root.content.bytes()
    }

    /// Number of entries below the root.
    pub fn entries(&self) -> u64 {
        self.root.content.entries() - 1
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(SNAPSHOT_MAGIC);
        encode_entry(&mut w, &self.root);
        match &self.parent {
            None => w.u8(0),
            Some(p) => {
                w.u8(1);
                w.score(p)
            }
        }
        w.bytes(self.author.as_bytes());
        w.zigzag(self.time_ns);
        w.bytes(self.note.as_bytes());
        w.buf
    }

    /// Decodes a snapshot object.
    pub fn decode(data: &[u8]) -> Result<Snapshot> {
        let mut r = Reader::with_magic(data, SNAPSHOT_MAGIC, "snapshot")?;
        let root = decode_entry_named(&mut r, true)?;
        if !root.name.is_empty() || !matches!(root.content, Content::Dir { .. }) {
            return Err(r.err("root is not an unnamed directory"));
        }
        let parent = match r.u8()? {
            0 => None,
            1 => Some(r.score()?),
            _ => return Err(r.err("bad parent flag")),
        };
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| Error::corrupt("snapshot", "text not UTF-8"))
        };
        let author = text(r.bytes()?)?;
        let time_ns = r.zigzag()?;
        let note = text(r.bytes()?)?;
        r.finish()?;
        Ok(Snapshot {
            root,
            parent,
            author,
            time_ns,
            note,
        })
    }
}

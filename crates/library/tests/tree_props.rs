//! Property tests for the canonical tree and snapshot encodings.

use library::tree::{Content, Entry, FileData, Meta, Tree};
use library::{Score, Snapshot};
use proptest::prelude::*;

fn score() -> impl Strategy<Value = Score> {
    any::<[u8; 32]>().prop_map(Score)
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn meta() -> impl Strategy<Value = Meta> {
    let xattr = (
        proptest::collection::vec(1u8..=255, 1..8),
        proptest::collection::vec(any::<u8>(), 0..8),
    );
    (
        0u32..0o10000,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        proptest::collection::btree_map(xattr.0, xattr.1, 0..3),
    )
        .prop_map(|(mode, uid, gid, mtime_sec, mtime_nsec, x)| Meta {
            mode,
            uid,
            gid,
            mtime_sec,
            mtime_nsec,
            xattrs: x.into_iter().collect(),
        })
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::File {
            size: 0,
            data: FileData::Empty
        }),
        (1u64.., score()).prop_map(|(size, s)| Content::File {
            size,
            data: FileData::Blob(s)
        }),
        (1u64.., score()).prop_map(|(size, s)| Content::File {
            size,
            data: FileData::Chunks(s)
        }),
        (score(), any::<u64>(), any::<u64>()).prop_map(|(tree, bytes, entries)| Content::Dir {
            tree,
            bytes,
            entries
        }),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Content::Symlink),
        any::<u64>().prop_map(Content::CharDev),
        any::<u64>().prop_map(Content::BlockDev),
        Just(Content::Fifo),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        name(),
        meta(),
        content(),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(name, meta, content, link)| Entry {
            name,
            meta,
            content,
            link,
        })
}

proptest! {
    #[test]
    fn tree_decode_inverts_encode_and_order_is_canonical(mut entries in proptest::collection::vec(entry(), 0..20)) {
        entries.reverse();
        let mut tree = Tree { entries };
        if tree.canonicalize().is_err() {
            // Duplicate names are refused; nothing more to check.
            return Ok(());
        }
        let bytes = tree.encode();
        let back = Tree::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &tree);
        prop_assert!(back.entries.windows(2).all(|w| w[0].name < w[1].name));
        // Any permutation of the same entries encodes to the same bytes.
        let mut shuffled = tree.clone();
        shuffled.entries.rotate_left(tree.entries.len() / 2);
        shuffled.canonicalize().unwrap();
        prop_assert_eq!(shuffled.encode(), bytes);
    }

    #[test]
    fn snapshot_decode_inverts_encode(meta in meta(), tree in score(), parent in proptest::option::of(score()), author in ".{0,10}", note in ".{0,30}", t in any::<i64>()) {
        let root = Entry { name: Vec::new(), meta, content: Content::Dir { tree, bytes: 5, entries: 2 }, link: None };
        let snap = Snapshot { root, parent, author, time_ns: t, note };
        prop_assert_eq!(Snapshot::decode(&snap.encode()).unwrap(), snap);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = b"SGT1".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = Tree::decode(&with_magic);
        let _ = Tree::decode(&bytes);
    }
}

#[test]
fn out_of_order_entries_are_rejected() {
    let e = |n: &[u8]| Entry {
        name: n.to_vec(),
        meta: Meta::default(),
        content: Content::Fifo,
        link: None,
    };
    let tree = Tree {
        entries: vec![e(b"b"), e(b"a")],
    };
    assert!(Tree::decode(&tree.encode()).is_err());
}

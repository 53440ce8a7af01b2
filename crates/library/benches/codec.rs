//! Micro-benchmarks of the library's hot codecs (criterion): content-defined chunking with
//! the library's parameters, pack encode (frames compressed and appended, trailer written)
//! and decode (trailer parsed, every object decompressed and checked), and the tree codec.
//! Run: `cargo bench -p spawngrid-library --bench codec`. The end-to-end comparisons with
//! restic and borg are bench/library.py's.

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use library::pack::{self, EncodedFrame, ObjectKind, PackBuilder};
use library::{Config, Content, Entry, FileData, Meta, Score, Tree};
use std::hint::black_box;

/// Bytes chunked and packed per iteration.
const DATA_LEN: usize = 16 << 20;

/// Data that compresses about as well as binaries and text mixed: random words from a small
/// vocabulary, with random bytes between them (xorshift, fixed seed, so every run is alike).
fn mixed(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 8] = [
        b"spawn ",
        b"snapshot ",
        b"library ",
        b"\x7fELF",
        b"env ",
        b"save ",
        b"\0\0\0\0",
        b"boom\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let r = next();
        match r % 4 {
            0 => out.extend_from_slice(&r.to_le_bytes()),
            _ => out.extend_from_slice(words[(r >> 8) as usize % words.len()]),
        }
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let cfg = Config::default();
    let data = mixed(DATA_LEN);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(DATA_LEN as u64));
    g.bench_function("fastcdc_v2020", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(&data, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max).count()
        })
    });
    g.finish();
}

/// The objects of `data` cut in 64 KiB pieces, each with its score.
fn objects(data: &[u8]) -> Vec<(Score, &[u8])> {
    data.chunks(64 << 10).map(|o| (Score::of(o), o)).collect()
}

/// A pack of `objects`, each in a frame of its own at the library's zstd level.
fn build_pack(objects: &[(Score, &[u8])], level: i32) -> Vec<u8> {
    let mut p = PackBuilder::default();
    for (score, plain) in objects {
        p.add(&EncodedFrame::single(
            *score,
            ObjectKind::Blob,
            plain,
            level,
        ));
    }
    p.finish().1
}

fn packs(c: &mut Criterion) {
    let level = Config::default().zstd_level;
    let data = mixed(DATA_LEN);
    let objects = objects(&data);
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(DATA_LEN as u64));
    g.sample_size(20);
    g.bench_function("encode", |b| {
        b.iter(|| build_pack(black_box(&objects), level))
    });
    let packed = build_pack(&objects, level);
    g.bench_function("decode", |b| {
        b.iter(|| {
            let tail = &packed[packed.len() - pack::TAIL_LEN..];
            let span = pack::trailer_span(packed.len() as u64, tail).expect("a trailer");
            let start = span.start as usize;
            let entries = pack::parse_trailer(
                &packed[start..start + span.len],
                packed.len() as u64,
                span.version,
            )
            .expect("entries");
            for e in &entries {
                let at = e.offset as usize;
                let stored = &packed[at..at + e.stored_len as usize];
                black_box(pack::decode_object(e, stored).expect("an object"));
            }
        })
    });
    g.finish();
}

/// A directory of `n` files and symlinks with xattrs on some, as a system directory has.
fn directory(n: usize) -> Tree {
    let entries = (0..n)
        .map(|i| Entry {
            name: format!("file-{i:06}.so").into_bytes(),
            meta: Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_sec: 1_700_000_000 + i as i64,
                mtime_nsec: 0,
                xattrs: match i % 10 {
                    0 => vec![(b"security.capability".to_vec(), vec![1; 20])],
                    _ => Vec::new(),
                },
            },
            content: match i % 5 {
                0 => Content::Symlink(format!("../lib/file-{i}.so.1").into_bytes()),
                _ => Content::File {
                    size: i as u64 * 100,
                    data: FileData::Blob(Score::of(&i.to_le_bytes())),
                },
            },
            link: None,
        })
        .collect();
    Tree { entries }
}

fn trees(c: &mut Criterion) {
    let tree = directory(2000);
    let encoded = tree.encode();
    let mut g = c.benchmark_group("tree");
    g.throughput(Throughput::Elements(tree.entries.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&tree).encode()));
    g.bench_function("decode", |b| {
        b.iter_batched(
            || encoded.clone(),
            |e| Tree::decode(&e).expect("a tree"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The benchmarks, in a private module: `criterion_group!` makes an undocumented public fn.
mod group {
    criterion::criterion_group!(benches, super::chunking, super::packs, super::trees);
}
criterion_main!(group::benches);

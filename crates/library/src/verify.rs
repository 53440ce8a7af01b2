//! Verify: re-hash every stored object and name the snapshots that are damaged.
//!
//! Every pack is read whole (in parallel): its BLAKE3 must equal its name, its records are
//! scanned, every object is decoded and re-hashed against its score, and the trailer must agree
//! with the records. A good copy is an intact object where readers find it: by the trailer,
//! or by the frames' own headers when the trailer is unreadable. Then every root snapshot is
//! walked (parent chain, trees, chunk lists, blobs; shared subtrees once) against the good
//! copies found, and a root is damaged when something it reaches has no good copy. A damaged copy of an object that also has a good copy
//! elsewhere is reported (its pack needs attention) but damages no snapshot.
//!
//! Verify only reads. A caller that must not see gc delete packs under it (and report them as
//! unreadable) holds a shared [`crate::lease::Lease`] while it runs.

use crate::pack::{self, ObjectKind, PackEntry};
use crate::progress::Progress;
use crate::reach::{Source, Walk};
use crate::stats::{ser_scored, ser_scores};
use crate::store::{pack_key, Location, PACKS};
use crate::{Error, Library, Result, Score};
use human::size as human;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What verify found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Packs read.
    pub packs: usize,
    /// Distinct objects found in them.
    pub objects: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Packs with any fault (contents not matching the name, bad records, bad trailer).
    #[serde(serialize_with = "ser_scored")]
    pub damaged_packs: Vec<(Score, String)>,
    /// Damaged copies of objects, with the pack they are in.
    #[serde(serialize_with = "ser_scored")]
    pub damaged_objects: Vec<(Score, String)>,
    /// Names of root snapshots that reach an object with no good copy.
    pub damaged_snapshots: Vec<String>,
    /// Objects the roots reach that are stored nowhere.
    #[serde(serialize_with = "ser_scores")]
    pub missing: Vec<Score>,
}

impl VerifyReport {
    /// Whether nothing at all is wrong.
    pub fn is_clean(&self) -> bool {
        self.damaged_packs.is_empty()
            && self.damaged_objects.is_empty()
            && self.damaged_snapshots.is_empty()
            && self.missing.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.is_clean() { "clean" } else { "DAMAGED" };
        writeln!(
            f,
            "verified {} packs, {} objects, {}: {verdict}",
            self.packs,
            self.objects,
            human(self.bytes)
        )?;
        for (s, why) in &self.damaged_packs {
            writeln!(f, "damaged pack {s}: {why}")?;
        }
        for (s, why) in &self.damaged_objects {
            writeln!(f, "damaged object {s}: {why}")?;
        }
        for s in &self.missing {
            writeln!(f, "missing object {s}")?;
        }
        for name in &self.damaged_snapshots {
            writeln!(f, "damaged snapshot {name}")?;
        }
        Ok(())
    }
}

/// Checks every pack and every object, then every root snapshot; `roots` are (name, score).
pub fn verify(
    lib: &Library,
    roots: &[(String, Score)],
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    progress.phase("checking packs");
    let packs: Vec<(Score, u64)> = lib
        .backend()
        .list(PACKS)?
        .into_iter()
        .filter_map(|(key, size)| Some((key.rsplit('/').next()?.parse().ok()?, size)))
        .collect();
    progress.total(packs.iter().map(|p| p.1).sum());
    let checks: Vec<PackCheck> = packs
        .par_iter()
        .map(|(name, size)| {
            let c = PackCheck::run(lib, *name);
            progress.bytes(*size);
            c
        })
        .collect();
    let copies = Copies::new(lib, &checks);
    progress.phase("checking snapshots");
    let walk = Walk::new(&copies);
    let scores: Vec<Score> = roots.iter().map(|r| r.1).collect();
    let good = walk.roots(&scores);
    let mut damaged_snapshots: Vec<String> = roots
        .iter()
        .zip(good)
        .filter(|(_, good)| !good)
        .map(|((name, _), _)| name.clone())
        .collect();
    damaged_snapshots.sort();
    let (_, broken) = walk.finish();
    let mut missing: Vec<Score> = broken
        .into_iter()
        .filter(|(_, e)| matches!(e, Error::Missing(_)))
        .map(|(s, _)| s)
        .collect();
    missing.sort();
    Ok(copies.report(&packs, damaged_snapshots, missing))
}

/// The outcome of checking one pack.
struct PackCheck {
    name: Score,
    problems: Vec<String>,
    good: Vec<PackEntry>,
    bad: Vec<(Score, String)>,
}

impl PackCheck {
    fn run(lib: &Library, name: Score) -> PackCheck {
        let mut c = PackCheck {
            name,
            problems: Vec::new(),
            good: Vec::new(),
            bad: Vec::new(),
        };
        match lib.backend().get(&pack_key(&name)) {
            Ok(data) => c.check(&data),
            Err(e) => c.problems.push(format!("unreadable: {e}")),
        }
        c
    }

    fn check(&mut self, data: &[u8]) {
        if Score::of(data) != self.name {
            self.problems
                .push("contents do not match the pack's name".into());
        }
        let (scanned, err) = pack::scan(data);
        if let Some(err) = err {
            self.problems.push(format!("records: {err}"));
        }
        let trailer = trailer_of(data);
        match &trailer {
            None => self.problems.push("trailer unreadable".into()),
            Some(t) if *t != scanned => self
                .problems
                .push("trailer disagrees with the records".into()),
            Some(_) => {}
        }
        // Readers locate objects by the trailer, by the frames only when it is unreadable: only
        // those entries can be good copies. The others are checked too, for the report.
        let readers: HashSet<PackEntry> = trailer
            .as_ref()
            .unwrap_or(&scanned)
            .iter()
            .copied()
            .collect();
        let mut decoded = None;
        for e in union(scanned, trailer.unwrap_or_default()) {
            let located = readers.contains(&e);
            self.check_object(data, e, located, &mut decoded);
        }
    }

    /// Checks one object, a good copy if intact and `located` by readers; `decoded` keeps the
    /// last shared frame decoded (offset, plain bytes or why not), so the objects of one frame
    /// decode it once.
    fn check_object(
        &mut self,
        data: &[u8],
        e: PackEntry,
        located: bool,
        decoded: &mut Option<(FrameKey, std::result::Result<Vec<u8>, String>)>,
    ) {
        let start = e.offset as usize;
        let stored = data.get(start..start + e.stored_len as usize);
        let result = match stored {
            Some(stored) if e.whole_frame() => pack::decode_object(&e, stored).map(drop),
            Some(stored) => {
                let key = (e.offset, e.stored_len, e.frame_len, e.encoding);
                if decoded.as_ref().is_none_or(|d| d.0 != key) {
                    let frame = pack::decode_frame(&e, stored).map_err(|err| reason(&err));
                    *decoded = Some((key, frame));
                }
                match &decoded.as_ref().expect("just decoded").1 {
                    Ok(frame) => pack::object_from_frame(&e, frame).map(drop),
                    Err(why) => Err(Error::corrupt("", why.clone())),
                }
            }
            None => Err(Error::corrupt("", "record out of bounds")),
        };
        match result {
            Ok(()) if located => self.good.push(e),
            Ok(()) => {}
            Err(err) => self
                .bad
                .push((e.score, format!("in pack {}: {}", self.name, reason(&err)))),
        }
    }
}

/// What tells a frame apart within a pack: offset, stored and plain lengths, encoding.
type FrameKey = (u32, u32, u32, pack::Encoding);

/// The trailer's entries, parsed from a whole pack in memory.
fn trailer_of(data: &[u8]) -> Option<Vec<PackEntry>> {
    let len = data.len() as u64;
    let tail = data.get(data.len().checked_sub(pack::TAIL_LEN)?..)?;
    let t = pack::trailer_span(len, tail)?;
    let body = data.get(t.start as usize..t.start as usize + t.len)?;
    pack::parse_trailer(body, len, t.version)
}

/// Scanned records plus every trailer entry the scan did not find as it is. A damaged frame
/// header or trailer entry (a flipped score, kind or length) makes the scan's entry and the
/// trailer's differ for the same place: both are checked, and the one readers use decides.
fn union(scanned: Vec<PackEntry>, trailer: Vec<PackEntry>) -> Vec<PackEntry> {
    let found: HashSet<PackEntry> = scanned.iter().copied().collect();
    let extra: Vec<PackEntry> = trailer.into_iter().filter(|e| !found.contains(e)).collect();
    scanned.into_iter().chain(extra).collect()
}

/// An error's detail without the "run verify" advice meant for other commands.
fn reason(e: &Error) -> String {
    match e {
        Error::Corrupt { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// The good copy of every object that has one, and every damaged copy.
struct Copies<'a> {
    lib: &'a Library,
    good: HashMap<Score, Location>,
    damaged: HashMap<Score, String>,
    damaged_objects: Vec<(Score, String)>,
    damaged_packs: Vec<(Score, String)>,
}

impl<'a> Copies<'a> {
    fn new(lib: &'a Library, checks: &[PackCheck]) -> Copies<'a> {
        let mut c = Copies {
            lib,
            good: HashMap::new(),
            damaged: HashMap::new(),
            damaged_objects: Vec::new(),
            damaged_packs: Vec::new(),
        };
        for check in checks {
            c.add(check);
        }
        c.damaged_objects.sort();
        c.damaged_packs.sort();
        c
    }

    fn add(&mut self, check: &PackCheck) {
        let pack = check.name;
        for entry in &check.good {
            self.good.insert(
                entry.score,
                Location {
                    pack,
                    entry: *entry,
                },
            );
        }
        for (score, why) in &check.bad {
            self.damaged.insert(*score, why.clone());
        }
        self.damaged_objects.extend(check.bad.iter().cloned());
        let mut problems = check.problems.clone();
        if !check.bad.is_empty() {
            problems.push(format!("{} damaged objects", check.bad.len()));
        }
        if !problems.is_empty() {
            self.damaged_packs.push((pack, problems.join("; ")));
        }
    }

    fn location(&self, score: &Score) -> Result<&Location> {
        self.good
            .get(score)
            .ok_or_else(|| match self.damaged.get(score) {
                Some(why) => Error::corrupt(format!("object {score}"), why.clone()),
                None => Error::Missing(*score),
            })
    }

    fn report(
        self,
        packs: &[(Score, u64)],
        snaps: Vec<String>,
        missing: Vec<Score>,
    ) -> VerifyReport {
        let distinct: HashSet<&Score> = self.good.keys().chain(self.damaged.keys()).collect();
        VerifyReport {
            packs: packs.len(),
            objects: distinct.len(),
            bytes: packs.iter().map(|p| p.1).sum(),
            damaged_packs: self.damaged_packs,
            damaged_objects: self.damaged_objects,
            damaged_snapshots: snaps,
            missing,
        }
    }
}

impl Source for Copies<'_> {
    /// Any kind serves: equal scores are equal bytes (see `Library::get_kind`).
    fn read(&self, score: &Score, _kind: ObjectKind) -> Result<Vec<u8>> {
        let loc = self.location(score)?;
        let e = loc.entry;
        let key = pack_key(&loc.pack);
        let stored = self
            .lib
            .backend()
            .get_range(&key, e.offset.into(), e.stored_len as usize)?;
        pack::decode_object(&e, &stored)
    }

    fn check_blob(&self, score: &Score) -> Result<()> {
        self.location(score).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{self, check};
    use crate::progress::Silent;

    fn named(roots: &[(&str, Score)]) -> Vec<(String, Score)> {
        roots.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn fresh_library_is_clean() {
        let (_d, lib) = fixture::library();
        assert!(verify(&lib, &[], &Silent).unwrap().is_clean());
        let a = fixture::snapshot(&lib, 1, 5);
        let b = fixture::snapshot_with(&lib, 2, 5, Some(a));
        let report = verify(&lib, &named(&[("a", a), ("b", b)]), &Silent).unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.objects, lib.object_count());
        assert_eq!(report.packs, lib.packs().len());
        assert!(report.to_string().contains("clean"));
    }

    #[test]
    fn flipped_byte_names_object_pack_and_snapshot() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 5);
        let b = fixture::snapshot(&lib, 2, 5);
        let c = fixture::snapshot_with(&lib, 3, 5, Some(b));
        let blob = fixture::blob_of(2, 5, 3);
        let pack = lib.locate(&blob).unwrap().pack;
        fixture::damage(dir.path(), &lib, &blob);
        let roots = named(&[("a", a), ("b", b), ("c", c)]);
        let report = verify(&lib, &roots, &Silent).unwrap();
        assert!(!report.is_clean());
        let objects: Vec<Score> = report.damaged_objects.iter().map(|d| d.0).collect();
        assert_eq!(objects, [blob], "{report}");
        assert_eq!(report.damaged_packs.len(), 1);
        assert_eq!(report.damaged_packs[0].0, pack);
        assert_eq!(report.damaged_snapshots, ["b", "c"]);
        assert!(report.missing.is_empty());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["damaged_objects"][0]["score"], blob.to_hex());
    }

    #[test]
    fn missing_objects_are_reported() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 2);
        let b = fixture::snapshot_with(&lib, 2, 2, Some(a));
        std::fs::remove_file(fixture::pack_file(dir.path(), &lib, &a)).unwrap();
        let report = verify(&lib, &named(&[("b", b)]), &Silent).unwrap();
        // `a` itself, and the chunk list of the file `b` shares with it.
        assert!(report.missing.contains(&a), "{report}");
        assert_eq!(report.missing.len(), 2, "{report}");
        assert_eq!(report.damaged_snapshots, ["b"]);
    }

    #[test]
    fn a_good_second_copy_keeps_the_snapshot_whole() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 4);
        let blob = fixture::blob_of(1, 4, 2);
        let damaged_pack = lib.locate(&blob).unwrap().pack;
        fixture::second_copy(&lib, &blob);
        fixture::damage(dir.path(), &lib, &blob);
        let report = verify(&lib, &named(&[("a", a)]), &Silent).unwrap();
        assert_eq!(report.damaged_packs[0].0, damaged_pack, "{report}");
        assert_eq!(report.damaged_objects.len(), 1);
        assert!(report.damaged_snapshots.is_empty(), "{report}");
    }

    #[test]
    fn a_flipped_score_in_a_frame_header_damages_the_pack_not_the_snapshot() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 5);
        let blob = fixture::blob_of(1, 5, 2);
        let loc = lib.locate(&blob).unwrap();
        let path = fixture::pack_file(dir.path(), &lib, &blob);
        let mut data = std::fs::read(&path).unwrap();
        let header = &data[..loc.entry.offset as usize];
        let at = header
            .windows(32)
            .rposition(|w| w == blob.as_bytes())
            .expect("the blob's score in its frame header");
        data[at + 7] ^= 0x01;
        std::fs::write(&path, data).unwrap();
        let lib = fixture::reopen(dir.path());
        check(&lib, &a, 1, 5);
        let report = verify(&lib, &named(&[("a", a)]), &Silent).unwrap();
        assert_eq!(report.damaged_packs.len(), 1, "{report}");
        assert_eq!(report.damaged_packs[0].0, loc.pack);
        assert!(
            report.damaged_packs[0].1.contains("trailer disagrees"),
            "{report}"
        );
        assert!(report.damaged_snapshots.is_empty(), "{report}");
        assert!(report.missing.is_empty(), "{report}");
    }

    /// Flips `mask` into the byte `at` bytes into the trailer entry of `blob` (snapshot 1, 5
    /// files), reopens the library, and returns it, the snapshot, the blob and verify's report.
    fn damage_trailer_entry(
        at: usize,
        mask: u8,
    ) -> (tempfile::TempDir, Library, Score, Score, VerifyReport) {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 5);
        let blob = fixture::blob_of(1, 5, 2);
        let path = fixture::pack_file(dir.path(), &lib, &blob);
        let mut data = std::fs::read(&path).unwrap();
        let entry = data
            .windows(32)
            .rposition(|w| w == blob.as_bytes())
            .expect("the blob's trailer entry");
        data[entry + at] ^= mask;
        std::fs::write(&path, data).unwrap();
        let lib = fixture::reopen(dir.path());
        let report = verify(&lib, &named(&[("a", a)]), &Silent).unwrap();
        assert_eq!(report.damaged_packs.len(), 1, "{report}");
        (dir, lib, a, blob, report)
    }

    #[test]
    fn a_flipped_score_in_the_trailer_damages_the_snapshot() {
        let (_dir, lib, _, blob, report) = damage_trailer_entry(7, 0x01);
        assert!(lib.get(&blob).is_err(), "readers find the blob");
        assert_eq!(report.damaged_snapshots, ["a"], "{report}");
    }

    #[test]
    fn a_blob_the_trailer_calls_a_tree_still_serves() {
        let (_dir, lib, a, _, report) = damage_trailer_entry(32, 0x02);
        check(&lib, &a, 1, 5);
        assert!(report.damaged_snapshots.is_empty(), "{report}");
    }

    #[test]
    fn truncated_trailer_is_rebuilt_by_scanning() {
        let (dir, lib) = fixture::library();
        let a = fixture::snapshot(&lib, 1, 5);
        let path = fixture::pack_file(dir.path(), &lib, &fixture::blob_of(1, 5, 4));
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 20]).unwrap();
        let lib = fixture::reopen(dir.path());
        check(&lib, &a, 1, 5);
        let report = verify(&lib, &named(&[("a", a)]), &Silent).unwrap();
        assert_eq!(report.damaged_packs.len(), 1, "{report}");
        assert!(report.damaged_objects.is_empty() && report.damaged_snapshots.is_empty());
    }
}

//! Statistics: logical bytes, stored bytes, dedup ratio, objects, packs.
//!
//! Also home to the small formatting helpers the maintenance reports share (human-readable
//! sizes, scores serialized as hex).

use crate::{Library, Result, Score};
use rayon::prelude::*;
use serde::{Serialize, Serializer};
use std::collections::BTreeSet;

/// What the library holds, and how well it deduplicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Sum of the file bytes of every distinct root snapshot (what exporting them all would write).
    pub logical_bytes: u64,
    /// Sum of the sizes of all packs.
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`; 0 for an empty library.
    pub dedup_ratio: f64,
    /// Distinct objects stored.
    pub objects: usize,
    /// Pack files.
    pub packs: usize,
    /// Distinct root snapshots counted.
    pub snapshots: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "snapshots: {}", self.snapshots)?;
        writeln!(f, "logical:   {}", human::size(self.logical_bytes))?;
        writeln!(f, "stored:    {}", human::size(self.stored_bytes))?;
        writeln!(f, "dedup:     {:.2}x", self.dedup_ratio)?;
        writeln!(f, "objects:   {} in {} packs", self.objects, self.packs)
    }
}

/// Computes statistics over the library, counting the snapshots in `roots` once each.
pub fn stats(lib: &Library, roots: &[Score]) -> Result<Stats> {
    let distinct: Vec<Score> = roots
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let sizes = distinct
        .par_iter()
        .map(|s| Ok(lib.snapshot(s)?.bytes()))
        .collect::<Result<Vec<u64>>>()?;
    let packs = lib.packs();
    let logical_bytes: u64 = sizes.iter().sum();
    let stored_bytes: u64 = packs.iter().map(|p| p.1).sum();
    let dedup_ratio = match stored_bytes {
        0 => 0.0,
        n => logical_bytes as f64 / n as f64,
    };
    Ok(Stats {
        logical_bytes,
        stored_bytes,
        dedup_ratio,
        objects: lib.object_count(),
        packs: packs.len(),
        snapshots: distinct.len(),
    })
}

/// Serializes scores as hex strings.
pub(crate) fn ser_scores<S: Serializer>(v: &[Score], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(Score::to_hex))
}

/// Serializes (score, reason) pairs as `{"score": hex, "reason": text}` objects.
pub(crate) fn ser_scored<S: Serializer>(v: &[(Score, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(score, reason)| serde_json::json!({"score": score.to_hex(), "reason": reason})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn stats_count_dedup() {
        let (_d, lib) = fixture::library();
        assert_eq!(stats(&lib, &[]).unwrap().dedup_ratio, 0.0);
        let a = fixture::snapshot(&lib, 1, 4);
        let again = fixture::snapshot(&lib, 1, 4);
        let b = fixture::snapshot(&lib, 2, 4);
        assert_eq!(a, again);
        let st = stats(&lib, &[a, again, b]).unwrap();
        let logical: usize = [1, 2]
            .iter()
            .flat_map(|s| fixture::files(*s, 4).into_values())
            .map(|f| f.len())
            .sum();
        assert_eq!(st.snapshots, 2);
        assert_eq!(st.logical_bytes, logical as u64);
        assert_eq!(st.objects, lib.object_count());
        assert!(st.stored_bytes > 0 && st.packs > 0);
        assert!((st.dedup_ratio - logical as f64 / st.stored_bytes as f64).abs() < 1e-9);
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["snapshots"], 2);
        assert!(st.to_string().contains("dedup"));
    }
}

//! Per-user library quotas (`[quota]` in the node's configuration): how many names a user may
//! have, and how many bytes their names' snapshots may hold (logical bytes, each snapshot
//! once however many of their names reach it). Checked by every save through the node (save,
//! fork, invites, a ttl's save): before saving for the names, and between writing the
//! snapshot and binding its name for the bytes, so a refused save binds nothing (what it
//! wrote is garbage for gc).

use crate::error::Error;
use crate::Node;
use human::parse_size;
use human::size as human;
use library::Score;
use serde::Deserialize;
use std::collections::HashSet;

/// The `[quota]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Names one user may have (default: no limit).
    pub names: Option<usize>,
    /// Bytes one user's names may hold (`10G`; default: no limit).
    pub bytes: Option<String>,
}

impl QuotaConfig {
    /// Checks the table (at load).
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(b) = &self.bytes {
            parse_size(b).map_err(|e| anyhow::anyhow!("[quota] bytes: {e}"))?;
        }
        Ok(())
    }

    fn max_bytes(&self) -> Option<u64> {
        self.bytes.as_deref().and_then(|b| parse_size(b).ok())
    }
}

/// Refuses `user`'s new name `name` past their quotas: with `adding` unknown (before a save),
/// the names quota and bytes already over; with `adding`, the bytes its snapshot brings too.
pub fn admit(node: &Node, user: &str, name: &str, adding: Option<&Score>) -> Result<(), Error> {
    let q = &node.config.quota;
    if q.names.is_none() && q.bytes.is_none() {
        return Ok(());
    }
    let names = node.cat.list(Some(user), None)?;
    if let Some(max) = q.names.filter(|m| names.len() >= *m) {
        return Err(Error::conflict(format!(
            "you have {} names, the node's limit per user ([quota] names = {max}): {name} was \
             not saved; ask the node's admin to retire names or raise the limit",
            names.len()
        )));
    }
    let Some(max) = q.max_bytes() else {
        return Ok(());
    };
    let scores: HashSet<Score> = names
        .iter()
        .map(|r| r.score)
        .chain(adding.copied())
        .collect();
    let used: u64 = scores.iter().filter_map(|s| node.sizes.size(s)).sum();
    if used > max {
        return Err(Error::conflict(format!(
            "your names would hold {} with {name}, over the node's library quota per user of \
             {} ([quota] bytes): {name} was not saved; ask the node's admin to retire names or \
             raise the quota",
            human(used),
            human(max)
        )));
    }
    Ok(())
}

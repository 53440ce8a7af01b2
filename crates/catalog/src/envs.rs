//! Envs (schema version 4): `envs(id, owner, env, node, name, snapshot, created)`, one row per
//! env a node spawned for a user: who owns it, on which node it runs, what it was spawned
//! from (the name as the user addressed it, `NAME` or `OWNER/NAME`, and its score). The node
//! writes a row when a spawn succeeds and deletes it when the env is boomed or evicted, and
//! reconciles its rows with the envs it finds at start. A row belongs to its node: another
//! node can neither take it over (recording the same id fails) nor delete it. The runtime's `state.json` stays the
//! truth about a running env on its node; this table is what the rest of a grid can see.

use crate::engine::{Fault, Mode, Row};
use crate::{check_name, check_owner, Catalog, Error, Result};

/// One env as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvRecord {
    /// The runtime's env id on its node (`ENV+USER`).
    pub id: String,
    /// The user it belongs to.
    pub owner: String,
    /// The user's name for it (`ENV`).
    pub env: String,
    /// The node it runs on.
    pub node: String,
    /// The name it was spawned from, as its owner addressed it, when known.
    pub name: Option<String>,
    /// The snapshot's score in hex, when known.
    pub snapshot: Option<String>,
    /// When it was spawned, seconds since the Unix epoch.
    pub created: i64,
}

impl Catalog {
    /// Records an env on its node, or records it again there (replacing the row: an id is
    /// reused only after a boom the node missed). Fails with [`Error::EnvElsewhere`], changing
    /// nothing, when the id is recorded for another node: that node spawned the user's env of
    /// the same name first (two spawns at once), and this one must undo its own.
    pub fn record_env(&self, e: &EnvRecord) -> Result<()> {
        check_owner(&e.owner)?;
        check_name(&e.env)?;
        let what = "recording an env";
        self.db(Mode::Serial, |db| {
            let n = db.execute(
                what,
                "INSERT INTO envs (id, owner, env, node, name, snapshot, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, env = excluded.env, \
                 name = excluded.name, snapshot = excluded.snapshot, \
                 created = excluded.created WHERE envs.node = excluded.node",
                &[
                    (&e.id).into(),
                    (&e.owner).into(),
                    (&e.env).into(),
                    (&e.node).into(),
                    e.name.as_ref().into(),
                    e.snapshot.as_ref().into(),
                    e.created.into(),
                ],
            )?;
            if n > 0 {
                return Ok(());
            }
            // The id conflicted with another node's row, which this serial transaction sees.
            let node = db
                .rows(
                    what,
                    "SELECT node FROM envs WHERE id = ?1",
                    &[(&e.id).into()],
                    |r| r.text(0),
                )?
                .pop()
                .ok_or_else(|| {
                    Fault::Corrupt(format!("env {} conflicted with no row", e.id))
                        .into_error(what, db.at)
                })?;
            Err(Error::EnvElsewhere {
                id: e.id.clone(),
                node,
            })
        })
    }

    /// Forgets env `id` on `node` (boomed or evicted) and the ports it exposed. Returns
    /// whether it was recorded on `node`. A record of the id on another node (that node's
    /// env of the same name) and its exposures are left alone.
    pub fn forget_env(&self, node: &str, id: &str) -> Result<bool> {
        self.db(Mode::Transaction, |db| {
            let n = db.execute(
                "forgetting an env",
                "DELETE FROM envs WHERE id = ?1 AND node = ?2",
                &[id.into(), node.into()],
            )?;
            db.execute(
                "forgetting an env's exposures",
                "DELETE FROM exposures WHERE env_id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM envs WHERE id = ?1)",
                &[id.into()],
            )?;
            Ok(n > 0)
        })
    }

    /// The record of env `id`, if any.
    pub fn env_record(&self, id: &str) -> Result<Option<EnvRecord>> {
        self.row(
            "reading an env",
            "SELECT id, owner, env, node, name, snapshot, created FROM envs WHERE id = ?1",
            &[id.into()],
            env_of,
        )
    }

    /// The envs recorded on `node`, or of every node; sorted by id.
    pub fn envs_on(&self, node: Option<&str>) -> Result<Vec<EnvRecord>> {
        self.rows(
            "listing envs",
            "SELECT id, owner, env, node, name, snapshot, created FROM envs \
             WHERE CAST(?1 AS TEXT) IS NULL OR node = ?1 ORDER BY id",
            &[node.into()],
            env_of,
        )
    }
}

/// An env from a row of `id, owner, env, node, name, snapshot, created`.
fn env_of(r: &Row) -> Result<EnvRecord, crate::engine::Fault> {
    Ok(EnvRecord {
        id: r.text(0)?,
        owner: r.text(1)?,
        env: r.text(2)?,
        node: r.text(3)?,
        name: r.opt_text(4)?,
        snapshot: r.opt_text(5)?,
        created: r.int(6)?,
    })
}

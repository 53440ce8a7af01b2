//! Envs (schema version 4): `envs(id, owner, env, node, name, snapshot, created)`, one row per
//! env a node spawned for a user: who owns it, on which node it runs, what it was spawned
//! from (the name as the user addressed it, `NAME` or `OWNER/NAME`, and its score). The node
//! writes a row when a spawn succeeds and deletes it when the env is boomed or evicted, and
//! reconciles its rows with the envs it finds at start. The runtime's `state.json` stays the
//! truth about a running env on its node; this table is what the rest of a grid can see.

use crate::{check_name, check_owner, Catalog, Result};
use rusqlite::params;

/// The table of schema version 4.
pub(crate) const SCHEMA_ENVS: &str = "
CREATE TABLE envs (
    id       TEXT PRIMARY KEY NOT NULL,
    owner    TEXT NOT NULL,
    env      TEXT NOT NULL,
    node     TEXT NOT NULL,
    name     TEXT,
    snapshot TEXT CHECK (snapshot IS NULL OR length(snapshot) = 64),
    created  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX envs_by_owner ON envs(owner);
CREATE INDEX envs_by_node ON envs(node);
";

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
    /// Records an env (replacing a row of the same id: an id is reused only after a boom).
    pub fn record_env(&self, e: &EnvRecord) -> Result<()> {
        check_owner(&e.owner)?;
        check_name(&e.env)?;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO envs (id, owner, env, node, name, snapshot, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.id, e.owner, e.env, e.node, e.name, e.snapshot, e.created],
            )
            .map_err(self.sql("recording an env"))?;
        Ok(())
    }

    /// Forgets env `id` (boomed or evicted). Returns whether it was recorded.
    pub fn forget_env(&self, id: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM envs WHERE id = ?1", params![id])
            .map_err(self.sql("forgetting an env"))?;
        Ok(n > 0)
    }

    /// The record of env `id`, if any.
    pub fn env_record(&self, id: &str) -> Result<Option<EnvRecord>> {
        Ok(self.select_envs("id = ?1", id)?.pop())
    }

    /// The envs recorded on `node`, or of every node; sorted by id.
    pub fn envs_on(&self, node: Option<&str>) -> Result<Vec<EnvRecord>> {
        match node {
            Some(n) => self.select_envs("node = ?1", n),
            None => self.select_envs("?1 IS NOT NULL", ""),
        }
    }

    /// The envs matching `condition` on `?1`, sorted by id.
    fn select_envs(&self, condition: &str, arg: &str) -> Result<Vec<EnvRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT id, owner, env, node, name, snapshot, created FROM envs
             WHERE {condition} ORDER BY id"
        );
        let mut stmt = conn.prepare(&sql).map_err(self.sql("listing envs"))?;
        let rows = stmt
            .query_map(params![arg], |r| {
                Ok(EnvRecord {
                    id: r.get(0)?,
                    owner: r.get(1)?,
                    env: r.get(2)?,
                    node: r.get(3)?,
                    name: r.get(4)?,
                    snapshot: r.get(5)?,
                    created: r.get(6)?,
                })
            })
            .map_err(self.sql("listing envs"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("listing envs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, owner: &str, node: &str) -> EnvRecord {
        EnvRecord {
            id: id.into(),
            owner: owner.into(),
            env: id.split('+').next().unwrap().into(),
            node: node.into(),
            name: Some("alice/base".into()),
            snapshot: Some("ab".repeat(32)),
            created: 7,
        }
    }

    #[test]
    fn envs_are_recorded_listed_per_node_and_forgotten() {
        let (_dir, cat) = crate::tests::open();
        cat.record_env(&rec("web+alice", "alice", "n1")).unwrap();
        cat.record_env(&rec("db+bob", "bob", "n2")).unwrap();
        assert_eq!(cat.envs_on(None).unwrap().len(), 2);
        let on1 = cat.envs_on(Some("n1")).unwrap();
        assert_eq!(on1, vec![rec("web+alice", "alice", "n1")]);
        assert_eq!(cat.env_record("db+bob").unwrap().unwrap().node, "n2");
        assert_eq!(cat.env_record("nope").unwrap(), None);
        // Respawned after a boom the daemon missed: the row is replaced, not duplicated.
        let mut again = rec("web+alice", "alice", "n1");
        again.created = 9;
        cat.record_env(&again).unwrap();
        assert_eq!(cat.envs_on(Some("n1")).unwrap()[0].created, 9);
        assert!(cat.forget_env("web+alice").unwrap());
        assert!(!cat.forget_env("web+alice").unwrap());
        assert!(cat.envs_on(Some("n1")).unwrap().is_empty());
        // Bad input changes nothing.
        let mut bad = rec("x+y", "../y", "n1");
        assert!(cat.record_env(&bad).is_err());
        bad.owner = "y".into();
        bad.snapshot = Some("short".into());
        assert!(cat.record_env(&bad).is_err());
        assert_eq!(cat.envs_on(None).unwrap().len(), 1);
    }
}

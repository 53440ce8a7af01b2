//! Names shared with other users (schema version 3): `shares(owner, name, user, created)`.
//!
//! An owner shares one of their names with another user, who may then list and spawn it (not
//! share it on, nor retire it). The other user addresses it as `OWNER/NAME`: names and user
//! names never contain `/`, so an address with one slash is always someone else's name and
//! one without is always the caller's own. A share of a retired name stays in the table but no
//! longer resolves, like the name itself.

use crate::{check_name, check_owner, unix_now, Catalog, Error, Record, Result};
use library::Score;
use rusqlite::{params, OptionalExtension};

/// The table of schema version 3 holding shares.
pub(crate) const SCHEMA_SHARES: &str = "
CREATE TABLE shares (
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    user    TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (owner, name, user)
) WITHOUT ROWID;
CREATE INDEX shares_by_user ON shares(user);
";

/// The user a name is shared with to share it with every user, present and future (admins
/// do this: `spawngrid share NAME '*'`, and `spawngrid up` for its `base`). Never a user name.
pub const EVERYONE: &str = "*";

/// Splits an address as `user` sees it into (owner, name): `OWNER/NAME` for another user's
/// name, a bare `NAME` for `user`'s own.
pub fn split_address<'a>(user: &'a str, address: &'a str) -> (&'a str, &'a str) {
    address.split_once('/').unwrap_or((user, address))
}

/// How `user` addresses `owner`'s name `name`: `NAME` if it is theirs, else `OWNER/NAME`.
pub fn address(user: &str, owner: &str, name: &str) -> String {
    if user == owner {
        name.to_string()
    } else {
        format!("{owner}/{name}")
    }
}

impl Catalog {
    /// Shares `owner`'s name `name` with user `to`. Returns `false` if it was shared with
    /// them already. Refuses a name `owner` does not have, an unknown `to`, and `to` = `owner`.
    pub fn share(&self, owner: &str, name: &str, to: &str) -> Result<bool> {
        self.check_share(owner, name, to)?;
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO shares (owner, name, user, created) VALUES (?1, ?2, ?3, ?4)",
                params![owner, name, to, unix_now()],
            )
            .map_err(self.sql("sharing a name"))?;
        Ok(n > 0)
    }

    /// Stops sharing `owner`'s name `name` with `to`. Returns whether it was shared.
    pub fn unshare(&self, owner: &str, name: &str, to: &str) -> Result<bool> {
        self.check_share(owner, name, to)?;
        let n = self
            .conn()
            .execute(
                "DELETE FROM shares WHERE owner = ?1 AND name = ?2 AND user = ?3",
                params![owner, name, to],
            )
            .map_err(self.sql("unsharing a name"))?;
        Ok(n > 0)
    }

    /// The checks common to [`Catalog::share`] and [`Catalog::unshare`].
    fn check_share(&self, owner: &str, name: &str, to: &str) -> Result<()> {
        check_owner(owner)?;
        check_name(name)?;
        self.resolve(owner, name)?;
        if to == EVERYONE {
            return Ok(());
        }
        check_owner(to)?;
        if to == owner {
            return Err(Error::Invalid {
                what: "user name",
                value: to.into(),
                rule: "is the owner of the name (share with someone else)".into(),
            });
        }
        if self.user(to)?.is_none() {
            return Err(Error::NoUser { name: to.into() });
        }
        Ok(())
    }

    /// The users `owner`'s name `name` is shared with, sorted.
    pub fn shared_with(&self, owner: &str, name: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT user FROM shares WHERE owner = ?1 AND name = ?2 ORDER BY user")
            .map_err(self.sql("listing shares"))?;
        let rows = stmt
            .query_map(params![owner, name], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(self.sql("listing shares"));
        rows
    }

    /// The names `user` sees: their own, then those shared with them, each sorted by owner
    /// then name, and only those whose name matches `pattern` if given (see
    /// [`crate::pattern_matches`]).
    pub fn visible(&self, user: &str, pattern: Option<&str>) -> Result<Vec<Record>> {
        let mut recs = self.list(Some(user), pattern)?;
        recs.extend(
            self.query(
                "SELECT DISTINCT n.owner, n.name, n.score, n.created FROM shares s \
                 JOIN names n ON n.owner = s.owner AND n.name = s.name \
                 WHERE (s.user = ?1 OR s.user = ?2) AND n.owner != ?1 AND n.retired IS NULL \
                 ORDER BY n.owner, n.name",
                params![user, EVERYONE],
            )?
            .into_iter()
            .filter(|r| pattern.is_none_or(|p| crate::pattern_matches(p, &r.name))),
        );
        Ok(recs)
    }

    /// The score of the name `user` addresses as `address` (`NAME` of their own, or
    /// `OWNER/NAME` shared with them). A name of someone else's not shared with `user` is
    /// [`Error::NotFound`], exactly like a missing one.
    pub fn resolve_for(&self, user: &str, address: &str) -> Result<Score> {
        let (owner, name) = split_address(user, address);
        let not_found = || Error::NotFound {
            owner: owner.into(),
            name: name.into(),
        };
        if owner != user {
            let shared: Option<i64> = self
                .conn()
                .query_row(
                    "SELECT 1 FROM shares WHERE owner = ?1 AND name = ?2 \
                     AND (user = ?3 OR user = ?4) LIMIT 1",
                    params![owner, name, user, EVERYONE],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sql("resolving a shared name"))?;
            if shared.is_none() {
                return Err(not_found());
            }
        }
        self.resolve(owner, name).map_err(|e| match e {
            Error::NotFound { .. } => not_found(),
            e => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{open, score};

    #[test]
    fn shared_names_are_visible_and_resolve_only_while_shared() {
        let (_d, cat) = open();
        for u in ["alice", "bob", "carol"] {
            cat.add_user(u, "pw", false).unwrap();
        }
        cat.bind("alice", "base", score(1)).unwrap();
        cat.bind("alice", "secret", score(2)).unwrap();
        cat.bind("bob", "mine", score(3)).unwrap();
        let seen = |u: &str| -> Vec<String> {
            let recs = cat.visible(u, None).unwrap();
            recs.iter().map(|r| address(u, &r.owner, &r.name)).collect()
        };
        assert_eq!(seen("bob"), ["mine"]);
        assert!(matches!(
            cat.resolve_for("bob", "alice/base"),
            Err(Error::NotFound { .. })
        ));
        assert!(cat.share("alice", "base", "bob").unwrap());
        assert!(!cat.share("alice", "base", "bob").unwrap());
        assert_eq!(seen("bob"), ["mine", "alice/base"]);
        assert_eq!(seen("alice"), ["base", "secret"]);
        assert_eq!(seen("carol"), Vec::<String>::new());
        assert_eq!(cat.resolve_for("bob", "alice/base").unwrap(), score(1));
        assert_eq!(cat.resolve_for("bob", "mine").unwrap(), score(3));
        assert_eq!(cat.resolve_for("alice", "alice/base").unwrap(), score(1));
        // Not shared and missing are the same answer.
        let hidden = cat.resolve_for("bob", "alice/secret").unwrap_err();
        let missing = cat.resolve_for("bob", "alice/nothing").unwrap_err();
        assert!(matches!(hidden, Error::NotFound { .. }));
        assert!(matches!(missing, Error::NotFound { .. }));
        assert!(cat.resolve_for("carol", "alice/base").is_err());
        assert_eq!(cat.visible("bob", Some("ba*")).unwrap().len(), 1);
        assert_eq!(cat.shared_with("alice", "base").unwrap(), ["bob"]);
        assert!(cat.unshare("alice", "base", "bob").unwrap());
        assert!(!cat.unshare("alice", "base", "bob").unwrap());
        assert!(cat.resolve_for("bob", "alice/base").is_err());
        assert_eq!(seen("bob"), ["mine"]);
    }

    #[test]
    fn a_name_shared_with_everyone_is_seen_by_every_user_once() {
        let (_d, cat) = open();
        for u in ["admin", "bob"] {
            cat.add_user(u, "pw", false).unwrap();
        }
        cat.bind("admin", "base", score(1)).unwrap();
        assert!(cat.share("admin", "base", EVERYONE).unwrap());
        cat.share("admin", "base", "bob").unwrap();
        let seen = |u: &str| -> Vec<String> {
            let recs = cat.visible(u, None).unwrap();
            recs.iter().map(|r| address(u, &r.owner, &r.name)).collect()
        };
        assert_eq!(seen("bob"), ["admin/base"]);
        assert_eq!(seen("admin"), ["base"]);
        // A user added later sees it too.
        cat.add_user("carol", "pw", false).unwrap();
        assert_eq!(cat.resolve_for("carol", "admin/base").unwrap(), score(1));
        assert!(cat.unshare("admin", "base", EVERYONE).unwrap());
        assert!(cat.resolve_for("carol", "admin/base").is_err());
        assert_eq!(cat.resolve_for("bob", "admin/base").unwrap(), score(1));
        // `*` is no user name: nobody logs in as it or owns names.
        assert!(cat.add_user(EVERYONE, "pw", false).is_err());
    }

    #[test]
    fn only_owned_names_are_shared_with_real_other_users() {
        let (_d, cat) = open();
        cat.add_user("alice", "pw", false).unwrap();
        cat.add_user("bob", "pw", false).unwrap();
        cat.bind("alice", "base", score(1)).unwrap();
        assert!(matches!(
            cat.share("bob", "base", "alice"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            cat.share("alice", "base", "nobody"),
            Err(Error::NoUser { .. })
        ));
        assert!(cat.share("alice", "base", "alice").is_err());
        assert!(cat.share("bob", "alice/base", "carol").is_err());
        cat.share("alice", "base", "bob").unwrap();
        cat.retire("alice", "base").unwrap();
        assert!(cat.resolve_for("bob", "alice/base").is_err());
        assert!(cat.visible("bob", None).unwrap().is_empty());
    }
}

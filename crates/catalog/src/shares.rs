//! Names shared with other users (schema version 3): `shares(owner, name, user, created)`.
//!
//! An owner shares one of their names with another user, who may then list and spawn it (not
//! share it on, nor retire it). The other user addresses it as `OWNER/NAME`: names and user
//! names never contain `/`, so an address with one slash is always someone else's name and
//! one without is always the caller's own. A share of a retired name stays in the table but no
//! longer resolves, like the name itself.

use crate::{check_name, check_owner, Catalog, Error, Record, Result};
use library::Score;

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
        let n = self.execute(
            "sharing a name",
            "INSERT INTO shares (owner, name, \"user\", created) VALUES (?1, ?2, ?3, unixepoch()) \
             ON CONFLICT (owner, name, \"user\") DO NOTHING",
            &[owner.into(), name.into(), to.into()],
        )?;
        Ok(n > 0)
    }

    /// Stops sharing `owner`'s name `name` with `to`. Returns whether it was shared.
    pub fn unshare(&self, owner: &str, name: &str, to: &str) -> Result<bool> {
        self.check_share(owner, name, to)?;
        let n = self.execute(
            "unsharing a name",
            "DELETE FROM shares WHERE owner = ?1 AND name = ?2 AND \"user\" = ?3",
            &[owner.into(), name.into(), to.into()],
        )?;
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
        self.rows(
            "listing shares",
            "SELECT \"user\" FROM shares WHERE owner = ?1 AND name = ?2 ORDER BY \"user\"",
            &[owner.into(), name.into()],
            |r| r.text(0),
        )
    }

    /// The names `user` sees: their own, then those shared with them, each sorted by owner
    /// then name, and only those whose name matches `pattern` if given (see
    /// [`crate::pattern_matches`]).
    pub fn visible(&self, user: &str, pattern: Option<&str>) -> Result<Vec<Record>> {
        let mut recs = self.list(Some(user), pattern)?;
        recs.extend(
            self.records(
                "SELECT DISTINCT n.owner, n.name, n.score, n.created FROM shares s \
                 JOIN names n ON n.owner = s.owner AND n.name = s.name \
                 WHERE (s.\"user\" = ?1 OR s.\"user\" = ?2) AND n.owner != ?1 \
                 AND n.retired IS NULL ORDER BY n.owner, n.name",
                &[user.into(), EVERYONE.into()],
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
            let shared = self.row(
                "resolving a shared name",
                "SELECT 1 FROM shares WHERE owner = ?1 AND name = ?2 \
                 AND (\"user\" = ?3 OR \"user\" = ?4) LIMIT 1",
                &[owner.into(), name.into(), user.into(), EVERYONE.into()],
                |r| r.int(0),
            )?;
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

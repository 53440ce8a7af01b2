//! Pending invites (schema version 7): `invites(owner, name, inviter, source, score,
//! created)`, one row per invite a user has not accepted or refused yet: `inviter` offers
//! `owner` a copy of the snapshot `score` (their name `source` as they addressed it) as
//! `owner`'s new name `name`. Accepting makes the copy and binds the name, then deletes the
//! row; refusing deletes it, leaving nothing. While pending, the score is a gc root.

use crate::engine::Row;
use crate::{check_name, check_owner, score_at, Catalog, Error, Result};
use library::Score;

/// One pending invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The user invited (whose name it becomes).
    pub owner: String,
    /// Their new name, once accepted.
    pub name: String,
    /// Who invited them.
    pub inviter: String,
    /// The inviter's name copied, as they addressed it (`NAME` or `OWNER/NAME`).
    pub source: String,
    /// The snapshot copied.
    pub score: Score,
    /// When it was made, seconds since the Unix epoch.
    pub created: i64,
}

impl Catalog {
    /// Records a pending invite (made now). Refuses a second pending invite of `owner` to the
    /// same `name` ([`Error::InviteExists`]).
    pub fn add_invite(
        &self,
        owner: &str,
        name: &str,
        inviter: &str,
        source: &str,
        score: Score,
    ) -> Result<()> {
        check_owner(owner)?;
        check_owner(inviter)?;
        check_name(name)?;
        self.db(crate::engine::Mode::Plain, |db| {
            db.insert(
                "recording an invite",
                "INSERT INTO invites (owner, name, inviter, source, score, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, unixepoch())",
                &[
                    owner.into(),
                    name.into(),
                    inviter.into(),
                    source.into(),
                    score.to_hex().into(),
                ],
                || Error::InviteExists {
                    owner: owner.into(),
                    name: name.into(),
                },
            )
        })
    }

    /// `owner`'s pending invite to `name`, if any.
    pub fn invite(&self, owner: &str, name: &str) -> Result<Option<Invite>> {
        self.row(
            "reading an invite",
            "SELECT owner, name, inviter, source, score, created FROM invites \
             WHERE owner = ?1 AND name = ?2",
            &[owner.into(), name.into()],
            invite_of,
        )
    }

    /// `owner`'s pending invites, by name.
    pub fn invites_for(&self, owner: &str) -> Result<Vec<Invite>> {
        self.rows(
            "listing invites",
            "SELECT owner, name, inviter, source, score, created FROM invites \
             WHERE owner = ?1 ORDER BY name",
            &[owner.into()],
            invite_of,
        )
    }

    /// Drops `owner`'s pending invite to `name` (accepted or refused). Returns whether there
    /// was one.
    pub fn drop_invite(&self, owner: &str, name: &str) -> Result<bool> {
        let n = self.execute(
            "dropping an invite",
            "DELETE FROM invites WHERE owner = ?1 AND name = ?2",
            &[owner.into(), name.into()],
        )?;
        Ok(n > 0)
    }
}

/// An invite from a row of `owner, name, inviter, source, score, created`.
fn invite_of(r: &Row) -> Result<Invite, crate::engine::Fault> {
    Ok(Invite {
        owner: r.text(0)?,
        name: r.text(1)?,
        inviter: r.text(2)?,
        source: r.text(3)?,
        score: score_at(r, 4)?,
        created: r.int(5)?,
    })
}

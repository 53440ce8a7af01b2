//! Preview exposures (schema version 8): `exposures(id, env_id, owner, port, public, key,
//! created)`, one row per port of an env its owner exposed over HTTPS (`spawngrid expose`).
//! Any node of a grid finds an exposure by its `id` (the path of its preview URL) and sends
//! the request on to the env's node. `key` signs the exposure's links and browser cookies
//! (HMAC, checked by the node); rotating it revokes every link given out. Rows go with their
//! env ([`Catalog::forget_env`]) or on `unexpose`.

use crate::engine::{Mode, Row};
use crate::users::random_bytes;
use crate::{check_owner, Catalog, Error, Result};

/// One exposed port of an env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    /// Its id: 24 hex digits, random, the path of its URL (`/preview/ID/`).
    pub id: String,
    /// The env's id (`ENV+USER`).
    pub env_id: String,
    /// The env's owner.
    pub owner: String,
    /// The port inside the env.
    pub port: u16,
    /// Whether anyone with the URL gets in (else the owner's token or a signed link).
    pub public: bool,
    /// The key (64 hex digits) that signs its links and cookies.
    pub key: String,
    /// When it was made, seconds since the Unix epoch.
    pub created: i64,
}

/// The columns [`exposure_of`] reads.
const COLUMNS: &str = "id, env_id, owner, port, public, key, created";

impl Catalog {
    /// Exposes `port` of env `env_id` of `owner`: a new exposure, or the one that exists for
    /// that port (same id and key) with `public` as given now.
    pub fn expose(&self, env_id: &str, owner: &str, port: u16, public: bool) -> Result<Exposure> {
        check_owner(owner)?;
        if port == 0 {
            return Err(Error::Invalid {
                what: "port",
                value: "0".into(),
                rule: "a port is 1 to 65535".into(),
            });
        }
        let id = hex::encode(random_bytes::<12>()?);
        let key = hex::encode(random_bytes::<32>()?);
        let found = self.db(Mode::Transaction, |db| {
            db.execute(
                "exposing a port",
                "INSERT INTO exposures (id, env_id, owner, port, public, key, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, unixepoch()) \
                 ON CONFLICT (env_id, port) DO UPDATE SET public = excluded.public",
                &[
                    (&id).into(),
                    env_id.into(),
                    owner.into(),
                    i64::from(port).into(),
                    public.into(),
                    (&key).into(),
                ],
            )?;
            db.rows(
                "reading an exposure",
                &format!("SELECT {COLUMNS} FROM exposures WHERE env_id = ?1 AND port = ?2"),
                &[env_id.into(), i64::from(port).into()],
                exposure_of,
            )
        })?;
        found.into_iter().next().ok_or_else(|| Error::Db {
            what: "exposing a port",
            at: String::new(),
            detail: "the row written is not there".into(),
        })
    }

    /// Gives exposure `id` a new key: every link and cookie signed with the old one stops
    /// working. Returns whether it exists.
    pub fn rotate_exposure(&self, id: &str) -> Result<bool> {
        let key = hex::encode(random_bytes::<32>()?);
        let n = self.execute(
            "rotating an exposure's key",
            "UPDATE exposures SET key = ?2 WHERE id = ?1",
            &[id.into(), key.into()],
        )?;
        Ok(n > 0)
    }

    /// Exposure `id`, if it exists.
    pub fn exposure(&self, id: &str) -> Result<Option<Exposure>> {
        self.row(
            "reading an exposure",
            &format!("SELECT {COLUMNS} FROM exposures WHERE id = ?1"),
            &[id.into()],
            exposure_of,
        )
    }

    /// The exposures of env `env_id`, by port.
    pub fn exposures_of(&self, env_id: &str) -> Result<Vec<Exposure>> {
        self.rows(
            "listing exposures",
            &format!("SELECT {COLUMNS} FROM exposures WHERE env_id = ?1 ORDER BY port"),
            &[env_id.into()],
            exposure_of,
        )
    }

    /// Ends the exposure of `port` of env `env_id`. Returns whether there was one.
    pub fn unexpose(&self, env_id: &str, port: u16) -> Result<bool> {
        let n = self.execute(
            "ending an exposure",
            "DELETE FROM exposures WHERE env_id = ?1 AND port = ?2",
            &[env_id.into(), i64::from(port).into()],
        )?;
        Ok(n > 0)
    }
}

/// An exposure from a row of [`COLUMNS`].
fn exposure_of(r: &Row) -> Result<Exposure, crate::engine::Fault> {
    let port = r.int(3)?;
    Ok(Exposure {
        id: r.text(0)?,
        env_id: r.text(1)?,
        owner: r.text(2)?,
        port: u16::try_from(port)
            .map_err(|_| crate::engine::Fault::Corrupt(format!("port {port} out of range")))?,
        public: r.int(4)? != 0,
        key: r.text(5)?,
        created: r.int(6)?,
    })
}

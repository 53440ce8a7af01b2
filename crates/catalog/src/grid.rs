//! The grid's nodes and leases (schema version 5).
//!
//! `nodes(name, address, ssh_port, fingerprint, capacity_envs, capacity_mem, labels,
//! registered, heartbeat)`: each node registers itself when it starts (again on every start:
//! its address or capacity may have changed; its first registration time stays) and beats
//! every few seconds; the rest of the grid reads the table to find nodes and their room. A
//! name whose node is live is not taken by a node with another certificate.
//!
//! Every time here (a heartbeat, a lease's expiry) is stamped and compared by the catalog's
//! clock, the database's (`unixepoch()`; PostgreSQL's server clock), never a node's own: a
//! node whose clock runs ahead neither makes others' leases look expired nor others silent,
//! and is not judged by its own clock.
//!
//! `leases(id, kind, holder, taken, expires, fence)`: a lease keeps gc away while an import
//! or a save is under way (*shared*: many at once), or keeps everything else away while gc
//! runs (*exclusive*: alone). An exclusive lease conflicts with any live lease and a shared
//! one with a live exclusive one; a lease past its expiry is ignored (its holder died) and
//! cleared by the next taker. Taking is decided in one serial transaction, so two takers
//! never both win. Each lease gets a fence: a number larger than every earlier lease's
//! (kept in `lease_fence`), which a holder can show to prove its lease is the newest.
//! Schema 6 adds the *gc* kind: the one gc that marks and sweeps holds it; it excludes other
//! gc (and exclusive) leases but never writers (see [`crate::gc`]).

use crate::engine::{Fault, Mode, Row};
use crate::users::random_bytes;
use crate::{check_name, Catalog, Db, Error, Result};
use std::time::Duration;

/// What a node tells the grid about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (the same rule as names: [`crate::check_name`]).
    pub name: String,
    /// Its HTTPS address, `host:port`.
    pub address: String,
    /// The port of its SSH gateway.
    pub ssh_port: u16,
    /// Its TLS certificate's fingerprint, for clients to pin.
    pub fingerprint: String,
    /// How many envs it runs at most.
    pub capacity_envs: u32,
    /// How much memory its envs may use in all, in bytes.
    pub capacity_mem: u64,
    /// Free-form labels (`key=value,...`).
    pub labels: String,
}

/// A registered node and when it was last heard from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it said about itself when it last registered.
    pub info: NodeInfo,
    /// When it first registered, seconds since the epoch.
    pub registered: i64,
    /// Its last heartbeat (or registration), seconds since the epoch.
    pub heartbeat: i64,
    /// Seconds since its last heartbeat, by the catalog's clock (the database's, as every
    /// stamp: a node whose own clock is off is judged by the same clock as the others).
    pub silent: u64,
}

/// The kinds of lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// Held by many at once (imports and saves in progress); only excludes exclusive leases.
    Shared,
    /// Held alone (a gc that deletes at once): excludes every other lease.
    Exclusive,
    /// Held by the one gc that marks and sweeps (schema 6): excludes other gc and exclusive
    /// leases, never writers.
    Gc,
}

impl LeaseKind {
    /// The word stored in the catalog: `shared` or `exclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Shared => "shared",
            LeaseKind::Exclusive => "exclusive",
            LeaseKind::Gc => "gc",
        }
    }
}

/// A lease taken and not released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its id (32 hex digits), to renew or release it.
    pub id: String,
    /// Shared or exclusive.
    pub kind: LeaseKind,
    /// Who holds it (a node name, a process: free text for people reading the table).
    pub holder: String,
    /// When it was taken, seconds since the epoch.
    pub taken: i64,
    /// When it stops counting unless renewed, seconds since the epoch.
    pub expires: i64,
    /// Larger than the fence of every lease taken before it.
    pub fence: i64,
}

/// A node from a row of the `nodes` columns in table order.
fn node_of(r: &Row) -> Result<Node, Fault> {
    Ok(Node {
        info: NodeInfo {
            name: r.text(0)?,
            address: r.text(1)?,
            ssh_port: int_as(r, 2)?,
            fingerprint: r.text(3)?,
            capacity_envs: int_as(r, 4)?,
            capacity_mem: int_as(r, 5)?,
            labels: r.text(6)?,
        },
        registered: r.int(7)?,
        heartbeat: r.int(8)?,
        silent: u64::try_from(r.int(9)?).unwrap_or(0),
    })
}

/// Column `i` of `r`, an integer that must fit a `T`.
fn int_as<T: TryFrom<i64>>(r: &Row, i: usize) -> Result<T, Fault> {
    let n = r.int(i)?;
    T::try_from(n).map_err(|_| Fault::Corrupt(format!("column {i} is {n}, out of range")))
}

/// A lease from a row of the `leases` columns in table order.
pub(crate) fn lease_of(r: &Row) -> Result<Lease, Fault> {
    let kind = match r.text(1)?.as_str() {
        "shared" => LeaseKind::Shared,
        "exclusive" => LeaseKind::Exclusive,
        "gc" => LeaseKind::Gc,
        other => return Err(Fault::Corrupt(format!("a lease of kind {other:?}"))),
    };
    Ok(Lease {
        id: r.text(0)?,
        kind,
        holder: r.text(2)?,
        taken: r.int(3)?,
        expires: r.int(4)?,
        fence: r.int(5)?,
    })
}

/// The next fence: larger than every fence given out before (one counter for leases and gc).
pub(crate) fn next_fence(db: &mut Db<'_>, what: &'static str) -> Result<i64> {
    db.execute(what, "UPDATE lease_fence SET last = last + 1", &[])?;
    db.rows(what, "SELECT last FROM lease_fence", &[], |r| r.int(0))?
        .pop()
        .ok_or_else(|| Fault::Corrupt("lease_fence is empty".into()).into_error(what, db.at))
}

/// Now plus `ttl`, seconds since the epoch.
fn expiry(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(secs(ttl))
}

/// `d` in whole seconds, as the catalog stores times (a century at most: past that, a lease
/// or a threshold is as good as forever, and `unixepoch() + ?` cannot overflow).
fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).map_or(CENTURY, |s| s.min(CENTURY))
}

/// A hundred years, in seconds.
const CENTURY: i64 = 100 * 366 * 24 * 3600;

impl Catalog {
    /// Registers node `info.name`, or updates what it said about itself; either way counts
    /// as a heartbeat. Refuses ([`Error::NodeNameHeld`]) a name whose node is live (heard
    /// from within `live_within`) with another certificate (its fingerprint is the node's
    /// identity): two hosts given one name would take each other's row, envs and traffic. A
    /// name whose node is silent (it moved to another host), or registered with the same
    /// certificate (a restart, on the same address or another port), is taken.
    pub fn register_node(&self, info: &NodeInfo, live_within: Duration) -> Result<()> {
        check_name(&info.name)?;
        let what = "registering a node";
        self.db(Mode::Serial, |db| {
            let holder = db.rows(
                what,
                "SELECT address, fingerprint, unixepoch() - heartbeat FROM nodes WHERE name = ?1",
                &[(&info.name).into()],
                |r| Ok((r.text(0)?, r.text(1)?, r.int(2)?)),
            )?;
            if let Some((address, fingerprint, silent)) = holder.into_iter().next() {
                let live = silent <= secs(live_within);
                if live && fingerprint != info.fingerprint {
                    return Err(Error::NodeNameHeld {
                        name: info.name.clone(),
                        address,
                        fingerprint,
                        silent,
                        live_within: secs(live_within),
                    });
                }
            }
            db.execute(
                what,
                "INSERT INTO nodes (name, address, ssh_port, fingerprint, capacity_envs, \
                 capacity_mem, labels, registered, heartbeat) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, unixepoch(), unixepoch()) \
                 ON CONFLICT (name) DO UPDATE SET address = excluded.address, \
                 ssh_port = excluded.ssh_port, fingerprint = excluded.fingerprint, \
                 capacity_envs = excluded.capacity_envs, capacity_mem = excluded.capacity_mem, \
                 labels = excluded.labels, heartbeat = excluded.heartbeat",
                &[
                    (&info.name).into(),
                    (&info.address).into(),
                    i64::from(info.ssh_port).into(),
                    (&info.fingerprint).into(),
                    i64::from(info.capacity_envs).into(),
                    i64::try_from(info.capacity_mem).unwrap_or(i64::MAX).into(),
                    (&info.labels).into(),
                ],
            )?;
            Ok(())
        })
    }

    /// Records that node `name`, with certificate `fingerprint`, is alive now. Returns whether
    /// it is registered so: `false` when the name is not registered, or is another node's (it
    /// took the name while this one was silent), whose row this node leaves alone.
    pub fn heartbeat(&self, name: &str, fingerprint: &str) -> Result<bool> {
        let n = self.execute(
            "recording a heartbeat",
            "UPDATE nodes SET heartbeat = unixepoch() WHERE name = ?1 AND fingerprint = ?2",
            &[name.into(), fingerprint.into()],
        )?;
        Ok(n > 0)
    }

    /// Marks node `name` (the node with certificate `fingerprint`: only its own row) silent
    /// for longer than `down_after` at once: a node that stops says so, so the grid sees it
    /// down without waiting, and its restart with a new certificate is not refused as another
    /// live node of that name. Whether a row was marked.
    pub fn leave_node(&self, name: &str, fingerprint: &str, down_after: Duration) -> Result<bool> {
        let n = self.execute(
            "marking a node stopped",
            "UPDATE nodes SET heartbeat = unixepoch() - ?3 WHERE name = ?1 AND fingerprint = ?2",
            &[
                name.into(),
                fingerprint.into(),
                secs(down_after).saturating_add(1).into(),
            ],
        )?;
        Ok(n > 0)
    }

    /// Every registered node, sorted by name, with how long it has been silent by the
    /// catalog's clock (whether that makes it down is for the caller to judge).
    pub fn nodes(&self) -> Result<Vec<Node>> {
        self.rows(
            "listing nodes",
            "SELECT name, address, ssh_port, fingerprint, capacity_envs, capacity_mem, labels, \
             registered, heartbeat, unixepoch() - heartbeat FROM nodes ORDER BY name",
            &[],
            node_of,
        )
    }

    /// Takes a `kind` lease for `holder` lasting `ttl` (renew it to keep it longer). Fails
    /// with [`Error::LeaseHeld`] while a conflicting lease is live: any for an exclusive
    /// lease, an exclusive one for a shared lease.
    pub fn take_lease(&self, kind: LeaseKind, holder: &str, ttl: Duration) -> Result<Lease> {
        let id = hex::encode(random_bytes::<16>()?);
        let what = "taking a lease";
        self.db(Mode::Serial, |db| {
            let now = db.now(what)?;
            db.execute(what, "DELETE FROM leases WHERE expires <= ?1", &[now.into()])?;
            let held = db.rows(
                what,
                "SELECT holder FROM leases WHERE CAST(?1 AS TEXT) = 'exclusive' OR kind = 'exclusive' \
                 OR (CAST(?1 AS TEXT) = 'gc' AND kind = 'gc') ORDER BY fence",
                &[kind.as_str().into()],
                |r| r.text(0),
            )?;
            if !held.is_empty() {
                return Err(Error::LeaseHeld {
                    kind: kind.as_str(),
                    holders: held.join(", "),
                });
            }
            let fence = next_fence(db, what)?;
            let lease = Lease {
                id: id.clone(),
                kind,
                holder: holder.to_string(),
                taken: now,
                expires: expiry(now, ttl),
                fence,
            };
            db.execute(
                what,
                "INSERT INTO leases (id, kind, holder, taken, expires, fence) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    (&lease.id).into(),
                    kind.as_str().into(),
                    holder.into(),
                    now.into(),
                    lease.expires.into(),
                    fence.into(),
                ],
            )?;
            Ok(lease)
        })
    }

    /// Extends live lease `id` to `ttl` from now. Returns `false` if it is no longer live
    /// (released or expired): its holder must stop relying on it.
    pub fn renew_lease(&self, id: &str, ttl: Duration) -> Result<bool> {
        let n = self.execute(
            "renewing a lease",
            "UPDATE leases SET expires = unixepoch() + ?2 WHERE id = ?1 AND expires > unixepoch()",
            &[id.into(), secs(ttl).into()],
        )?;
        Ok(n > 0)
    }

    /// Releases lease `id`. Returns whether it was there.
    pub fn release_lease(&self, id: &str) -> Result<bool> {
        let n = self.execute(
            "releasing a lease",
            "DELETE FROM leases WHERE id = ?1",
            &[id.into()],
        )?;
        Ok(n > 0)
    }

    /// The leases live now, oldest (smallest fence) first.
    pub fn live_leases(&self) -> Result<Vec<Lease>> {
        self.rows(
            "listing leases",
            "SELECT id, kind, holder, taken, expires, fence FROM leases \
             WHERE expires > unixepoch() ORDER BY fence",
            &[],
            lease_of,
        )
    }
}

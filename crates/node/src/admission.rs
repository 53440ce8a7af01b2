//! Spawns admitted and still being made. The capacity policy decides under one lock (so two
//! spawns never take the last free slot), but the spawn itself runs outside it: a burst of
//! spawns is made in parallel. Until its env is listed, each admitted spawn is counted here
//! like an env (never evicted), and the mount sweep keeps its snapshot's mount.

use crate::capacity::Usage;
use library::Score;
use std::sync::{Condvar, Mutex, MutexGuard};

/// One admitted spawn.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Its runtime env id (`ENV+USER`).
    pub id: String,
    /// Whose it counts as.
    pub owner: String,
    /// The memory it reserves.
    pub mem: u64,
    /// The snapshot it is spawned from.
    pub snapshot: Option<Score>,
}

/// The node's admitted spawns; its lock is the admission lock.
#[derive(Default)]
pub struct Admission {
    pending: Mutex<Vec<Pending>>,
    /// Signalled whenever an admitted spawn is made (or failed).
    made: Condvar,
}

impl Admission {
    /// Takes the admission lock (deciding a spawn, or sweeping mounts).
    pub fn lock(&self) -> MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no admitted spawn of env `id` is being made (returns at once if none is).
    pub fn wait_made(&self, id: &str) {
        let held = self.lock();
        let _held = self
            .made
            .wait_while(held, |pending| pending.iter().any(|p| p.id == id))
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Records `pending` (under `held`, the lock this admission decided it under) until the
    /// returned ticket is dropped.
    pub fn admit<'a>(
        &'a self,
        mut held: MutexGuard<'a, Vec<Pending>>,
        pending: Pending,
    ) -> Ticket<'a> {
        let id = pending.id.clone();
        held.push(pending);
        Ticket {
            admission: self,
            id,
        }
    }
}

/// An admitted spawn's place; dropping it (the spawn is made, or failed) forgets it.
pub struct Ticket<'a> {
    admission: &'a Admission,
    id: String,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut pending = self.admission.lock();
        if let Some(i) = pending.iter().position(|p| p.id == self.id) {
            pending.swap_remove(i);
        }
        self.admission.made.notify_all();
    }
}

/// `usage` (the listed envs) with the admitted spawns not listed yet added, and every admitted
/// one marked busy (never evicted) and counted with the memory it reserved.
pub fn with_pending(mut usage: Vec<Usage>, pending: &[Pending]) -> Vec<Usage> {
    for p in pending {
        match usage.iter_mut().find(|u| u.id == p.id) {
            // Listed mid-spawn, its cgroup's limit may not be set yet: the reservation is.
            Some(u) => {
                u.busy = true;
                u.mem = p.mem;
            }
            None => usage.push(Usage {
                id: p.id.clone(),
                owner: p.owner.clone(),
                mem: p.mem,
                idle: 0,
                busy: true,
            }),
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(id: &str) -> Usage {
        Usage {
            id: id.into(),
            owner: "alice".into(),
            mem: 1,
            idle: 100,
            busy: false,
        }
    }

    #[test]
    fn admitted_spawns_count_once_and_are_never_evicted_until_their_ticket_goes() {
        let adm = Admission::default();
        let pending = |id: &str| Pending {
            id: id.into(),
            owner: "bob".into(),
            mem: 64,
            snapshot: None,
        };
        let a = adm.admit(adm.lock(), pending("a+bob"));
        let b = adm.admit(adm.lock(), pending("b+bob"));
        // `a+bob` is listed already (its state was written), `b+bob` not yet.
        let got = with_pending(vec![usage("x+alice"), usage("a+bob")], &adm.lock());
        let ids: Vec<(&str, bool, u64)> =
            got.iter().map(|u| (u.id.as_str(), u.busy, u.mem)).collect();
        assert_eq!(
            ids,
            [
                ("x+alice", false, 1),
                ("a+bob", true, 64),
                ("b+bob", true, 64)
            ]
        );
        drop(a);
        assert_eq!(adm.lock().len(), 1);
        drop(b);
        assert!(adm.lock().is_empty());
    }
}

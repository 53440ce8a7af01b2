//! Changing a running `nat` env's egress policy ([`crate::host::egress`]): the env's nft
//! objects get the new rules in one transaction and its state records the policy (so
//! `status` shows it and a restarted node applies it again). Under its lease's lock, so a
//! change and a boom never interleave.

use crate::error::{fail, Error, Result};
use crate::host::egress::Rules;
use crate::host::net;
use crate::host::runtime::Runtime;
use crate::host::state::{self, EnvState};

/// Gives env `name` the policy of `rules` (its domain names resolved by the caller); its new
/// state.
pub fn set(rt: &Runtime, name: &str, rules: &Rules) -> Result<EnvState> {
    apply(rt, name, rules, false).map(|st| st.expect("applied unconditionally"))
}

/// Applies `rules` (newly resolved addresses of a policy) to env `name` if its policy is
/// still `rules.policy` (a change made meanwhile wins); its state if it did.
pub fn refresh(rt: &Runtime, name: &str, rules: &Rules) -> Result<Option<EnvState>> {
    apply(rt, name, rules, true)
}

fn apply(rt: &Runtime, name: &str, rules: &Rules, only_if_same: bool) -> Result<Option<EnvState>> {
    let st = state::load(rt, name)?;
    let Some(link) = st.nat.clone() else {
        fail!("env {name} has no network to filter (spawn it with --net nat)");
    };
    let dir = rt.env_dir(name)?;
    net::change_egress(
        rt,
        name,
        &link,
        rules,
        || {
            // Read again under the lock: the policy recorded is the one in force.
            let st = state::load(rt, name)?;
            if !st.alive() {
                return Err(Error::NotRunning { name: name.into() });
            }
            Ok((!only_if_same || st.egress == rules.policy).then_some(st))
        },
        |st| {
            st.egress = rules.policy.clone();
            state::store(&dir, st)
        },
    )
}

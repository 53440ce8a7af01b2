//! Envs' egress policies ([`runtime::egress`]): from the API's form and back, the route that
//! changes a running env's (`PUT /api/envs/{env}/egress`; an env route, so the request goes
//! to the env's node: [`crate::forward::env_routes`]), and the task that applies every env's
//! policy when the node starts and refreshes the addresses of domain names every minute.

use crate::error::Error;
use crate::http::{blocking, env_param, ok, AuthUser, JsonBody};
use crate::{envs, Node};
use api::{Egress, EgressDefault};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use runtime::egress::{Policy, Reach, Rules};
use std::sync::Arc;
use std::time::Duration;

/// How often the node resolves the domain names of envs' policies again.
pub const REFRESH: Duration = Duration::from_secs(60);

/// The policy `e` asks for, its domain names resolved by this node; 400 naming the first bad
/// entry, or a name that does not resolve.
pub fn rules(e: &Egress) -> Result<Rules, Error> {
    let default = match e.default {
        EgressDefault::Internet => "internet",
        EgressDefault::None => "none",
    };
    let policy = Policy::parse(default, &e.allow, &e.deny)
        .map_err(|e| Error::invalid(format!("bad egress policy: {e:#}")))?;
    Rules::resolve(&policy).map_err(|e| Error::invalid(format!("bad egress policy: {e:#}")))
}

/// The API's form of policy `p`.
pub fn to_api(p: &Policy) -> Egress {
    let list = |l: &[runtime::egress::Target]| l.iter().map(|t| t.to_string()).collect();
    Egress {
        default: match p.default {
            Reach::Internet => EgressDefault::Internet,
            Reach::None => EgressDefault::None,
        },
        allow: list(&p.allow),
        deny: list(&p.deny),
    }
}

/// `PUT`: replaces the egress policy of the user's running `nat` env; the policy in force.
#[utoipa::path(
    put,
    path = api::routes::EGRESS,
    params(api::openapi::EnvPath),
    summary = "egress: replace a running env's egress policy (new connections follow it at once)",
    description = "The policy is replaced whole, in one step: every packet after it follows the \
        new one (connections to a destination no longer allowed stop too). Domain names are \
        resolved by the env's node, whose addresses for them are refreshed every minute.",
    request_body = Egress,
    responses(
        (status = 200, description = "the policy now in force", body = Egress),
        (status = 400, description = "a bad entry, or a domain name without an IPv4 address"),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the env is not running, or has no network (not --net nat)"),
    ),
)]
pub async fn put(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<Egress>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let policy = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        if st.nat.is_none() {
            return Err(Error::conflict(format!(
                "env {env} has no network to filter: spawn it with --net nat"
            )));
        }
        if !st.alive() {
            return Err(Error::conflict(format!(
                "env {env} is not running: boom it"
            )));
        }
        let rules = rules(&req)?;
        let st = runtime::policy::set(&node.rt, &st.name, &rules)?;
        tracing::info!(user = %user, env = %st.name, policy = %st.egress, "egress policy set");
        Ok(to_api(&st.egress))
    })
    .await?;
    Ok(ok(&policy))
}

/// Applies the policy of every running `nat` env of the node (`all`), or of those naming
/// domains, with their names resolved again. One env's failure is logged, not the others'.
pub fn refresh_all(node: &Node, all: bool) -> anyhow::Result<()> {
    for st in runtime::state::list(&node.rt)? {
        if st.nat.is_none() || !st.alive() || !(all || st.egress.has_domains()) {
            continue;
        }
        let done = Rules::resolve(&st.egress)
            .and_then(|rules| runtime::policy::refresh(&node.rt, &st.name, &rules));
        if let Err(e) = done {
            tracing::warn!(env = %st.name, "applying the egress policy again: {e:#}");
        }
    }
    Ok(())
}

/// Applies every env's policy now (a restarted node), then refreshes domain names every
/// [`REFRESH`].
pub fn start_refreshing(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut all = true;
        loop {
            tick.tick().await;
            let n = node.clone();
            match tokio::task::spawn_blocking(move || refresh_all(&n, all)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("refreshing egress policies: {e:#}"),
                Err(e) => tracing::warn!("refreshing egress policies: {e}"),
            }
            all = false;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_form_round_trips_and_bounds_agree() {
        assert_eq!(api::MAX_EGRESS_ENTRIES, runtime::egress::MAX_ENTRIES);
        let e = Egress {
            default: EgressDefault::None,
            allow: vec!["192.0.2.0/24".into(), "localhost".into()],
            deny: vec!["198.51.100.7/32".into()],
        };
        let resolved = rules(&e).unwrap();
        assert_eq!(to_api(&resolved.policy), e);
        assert!(resolved
            .allow
            .iter()
            .any(|c| c.to_string() == "127.0.0.1/32"));
        let bad = Egress {
            deny: vec!["10.0.0.1/8".into()],
            ..Egress::default()
        };
        let err = rules(&bad).unwrap_err();
        assert!(
            err.message.starts_with("bad egress policy: deny: "),
            "{}",
            err.message
        );
    }
}

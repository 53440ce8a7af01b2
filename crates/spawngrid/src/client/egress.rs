//! `spawngrid egress ENV [internet|none] [--allow ...] [--deny ...]`: show or replace a
//! running `nat` env's egress policy; and the `--allow`/`--deny` lists `spawn` shares.

use super::{call, print_json, NodeArgs};
use anyhow::{bail, Result};
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// The allow and deny lists of a policy (`spawn` and `egress`).
#[derive(Args, Clone, Default)]
pub struct Lists {
    /// Let the env connect to this IPv4 network (a.b.c.d/len), address or domain name, even
    /// if denied (repeatable, or comma-separated). Never wider than the node allows: not the
    /// node itself, private or link-local networks unless its admin allowed them.
    #[arg(long, value_name = "NET|DOMAIN", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Keep the env from connecting to this network, address or domain name (repeatable, or
    /// comma-separated); `--deny 0.0.0.0/0` is `none`.
    #[arg(long, value_name = "NET|DOMAIN", value_delimiter = ',')]
    pub deny: Vec<String>,
}

impl Lists {
    /// Whether any list was given.
    pub fn given(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// The policy of these lists and `default`.
    pub fn policy(&self, default: api::EgressDefault) -> api::Egress {
        api::Egress {
            default,
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        }
    }
}

/// `internet` or `none`.
pub fn parse_default(s: &str) -> Result<api::EgressDefault> {
    match s {
        "internet" => Ok(api::EgressDefault::Internet),
        "none" => Ok(api::EgressDefault::None),
        _ => bail!("want internet or none"),
    }
}

/// One line for a policy: `internet; allow a, b; deny c`.
pub fn text(e: &api::Egress) -> String {
    let mut s = match e.default {
        api::EgressDefault::Internet => "internet".to_string(),
        api::EgressDefault::None => "none".to_string(),
    };
    for (what, list) in [("allow", &e.allow), ("deny", &e.deny)] {
        if !list.is_empty() {
            s += &format!("; {what} {}", list.join(", "));
        }
    }
    s
}

/// `spawngrid egress`.
#[derive(Args)]
pub struct EgressArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The running env (spawned with --net nat).
    env: String,
    /// Where connections go that neither list names: internet (what the node lets envs
    /// reach) or none (only the allow list). Given, the policy is replaced whole; not given
    /// (and no lists), the policy is shown.
    #[arg(value_name = "DEFAULT", value_parser = parse_default)]
    default: Option<api::EgressDefault>,
    #[command(flatten)]
    lists: Lists,
}

/// `spawngrid egress`: shows the env's policy, or replaces it (new connections follow it at
/// once).
pub fn egress(a: EgressArgs, json: bool) -> Result<ExitCode> {
    let Some(default) = a.default else {
        if a.lists.given() {
            bail!(
                "say what else the env reaches first, internet or none (the policy is replaced \
                 whole): spawngrid egress {} internet|none --allow ... --deny ...",
                a.env
            );
        }
        let list: Vec<api::EnvInfo> = call(&a.node, "GET", routes::ENVS, None::<&()>)?;
        let Some(info) = list.into_iter().find(|e| e.env == a.env) else {
            bail!(
                "you have no env {} (list them with `spawngrid status`)",
                a.env
            );
        };
        let Some(policy) = info.egress else {
            bail!(
                "env {} has no network to filter (spawned without --net nat)",
                a.env
            );
        };
        if json {
            print_json(&policy)?;
        } else {
            println!("{}: {}", a.env, text(&policy));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let req = a.lists.policy(default);
    let now: api::Egress = call(&a.node, "PUT", &routes::egress(&a.env), Some(&req))?;
    if json {
        print_json(&now)?;
    } else {
        println!("{}: {}", a.env, text(&now));
    }
    Ok(ExitCode::SUCCESS)
}

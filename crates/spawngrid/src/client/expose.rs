//! `spawngrid expose ENV PORT` and `spawngrid unexpose ENV PORT|URL`: serve a port of an env
//! at an HTTPS preview URL on its node (`https://NODE:16998/preview/ID/`), private to its
//! owner unless `--public`, with a signed link for browsers; and end it.

use super::{call, print_json, seconds, NodeArgs};
use anyhow::{bail, Result};
use api::routes;
use clap::Args;
use std::process::ExitCode;

/// `spawngrid expose`.
#[derive(Args)]
pub struct ExposeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The running env.
    env: String,
    /// The port a server listens on inside the env (on 127.0.0.1 or 0.0.0.0 there).
    port: u16,
    /// Anyone with the URL gets in (default: only you, with your token or the signed link).
    #[arg(long)]
    public: bool,
    /// How long the signed link printed works (e.g. 10m, 2h; default 1h). Opening it in
    /// time lets that browser in for 12 hours.
    #[arg(long, value_name = "DURATION", value_parser = seconds)]
    ttl: Option<u64>,
    /// Revoke every link and browser cookie given out for this port before, then sign anew.
    #[arg(long)]
    rotate: bool,
}

/// `spawngrid expose`: prints the URL and the signed link.
pub fn expose(a: ExposeArgs, json: bool) -> Result<ExitCode> {
    let req = api::ExposeRequest {
        port: a.port,
        public: a.public,
        ttl: a.ttl,
        rotate: a.rotate,
    };
    let r: api::ExposeResponse = call(&a.node, "POST", &routes::exposures(&a.env), Some(&req))?;
    if json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let e = &r.exposure;
    let who = if e.public { "public" } else { "private" };
    println!("{}:{} is at {} ({who})", e.env, e.port, e.url);
    let left = r.link_expires.saturating_sub(runtime::state::now());
    println!(
        "signed link (anyone who opens it within {} gets in; `unexpose` or --rotate revokes it):",
        human::age(left)
    );
    println!("{}", r.link);
    Ok(ExitCode::SUCCESS)
}

/// `spawngrid unexpose`.
#[derive(Args)]
pub struct UnexposeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The env.
    env: String,
    /// The port exposed, or the preview's URL.
    what: String,
}

/// The query naming an exposure: `port=P` for a port, `id=ID` for a URL `.../preview/ID/...`.
fn which(what: &str) -> Result<String> {
    if let Ok(port) = what.parse::<u16>() {
        return Ok(format!("port={port}"));
    }
    let id = what
        .split_once("/preview/")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
    match id {
        Some(id) => Ok(format!("id={id}")),
        None => bail!("{what:?} is neither a port nor a preview URL (https://NODE/preview/ID/)"),
    }
}

/// `spawngrid unexpose`.
pub fn unexpose(a: UnexposeArgs, json: bool) -> Result<ExitCode> {
    let path = format!("{}?{}", routes::exposures(&a.env), which(&a.what)?);
    let e: api::Exposure = call(&a.node, "DELETE", &path, None::<&()>)?;
    if json {
        print_json(&e)?;
    } else {
        println!(
            "unexposed {}:{} ({} no longer answers)",
            e.env, e.port, e.url
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_urls_name_exposures() {
        assert_eq!(which("8000").unwrap(), "port=8000");
        let url = "https://n1:16998/preview/00ff/x?sg_exp=1";
        assert_eq!(which(url).unwrap(), "id=00ff");
        assert_eq!(which("https://n1:16998/preview/00ff").unwrap(), "id=00ff");
        assert!(which("https://n1/preview/../").is_err());
        assert!(which("70000").is_err());
    }
}

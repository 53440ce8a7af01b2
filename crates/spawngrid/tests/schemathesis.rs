//! schemathesis (PyPI, installed by `scripts/deps.sh test` in `/var/cache/spawngrid/venv`)
//! fuzzes every route of the node's OpenAPI document as a logged-in user for a minute: no
//! answer may be a server error (5xx). As root (the node runs envs).

use crate::common;

use common::site::*;
use std::process::Command;

/// The `st` binary: `$SPAWNGRID_SCHEMATHESIS`, else the venv `scripts/deps.sh test` makes.
fn schemathesis() -> String {
    let st = std::env::var("SPAWNGRID_SCHEMATHESIS").unwrap_or_else(|_| {
        let cache = std::env::var("SPAWNGRID_CACHE").unwrap_or("/var/cache/spawngrid".into());
        format!("{cache}/venv/bin/st")
    });
    assert!(
        std::path::Path::new(&st).exists(),
        "no schemathesis at {st}: run scripts/deps.sh test"
    );
    st
}

#[test]
fn schemathesis_finds_no_server_error() {
    let st = schemathesis();
    let site = Site::new("schemathesis");
    // Fuzzed spawns may succeed (`base` exists): keep them few and small. A user's memory is
    // capped too: one fuzzed `mem` of the host's size would fill the node, and every later
    // spawn and fork would get the node's (documented, correct) 503 "node full".
    let config = site
        .config("default_mem = \"64M\"\n[capacity]\nuser_max_envs = 6\nuser_max_mem = \"1G\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = site.user("alice");
    alice.login();
    let token = alice.token();
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("https://{}/api/openapi.json", site.addr()))
        .args(["--tls-verify", "false"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error"])
        .args(["--phases", "coverage,fuzzing"])
        .args(["--max-time", "60", "--workers", "2"])
        // Binary tar bodies and the WebSocket upgrade have no serializer in schemathesis;
        // a logout would revoke the token the rest of the run uses; a preview answers what
        // the env's app answers, or 502 when none listens (the documented gateway error,
        // tested in tests/preview.rs), so its 5xx are not the node's.
        .args(["--exclude-path-regex", "/(cpu|files|logout)$|^/preview/"])
        .env("NO_COLOR", "1")
        // schemathesis keeps a `.schemathesis/` cache in its working directory.
        .current_dir(site.scratch.path())
        .output()
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("Tested:"),
        "schemathesis did not run: {report}"
    );
    assert!(
        !report.contains("ST101") && !report.contains("Server error"),
        "server errors found:\n{report}\nnode log:\n{}",
        site.log()
    );
}

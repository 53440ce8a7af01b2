//! The web UI end to end, as root: the real binary serving HTTPS on 127.0.0.1 with a busybox
//! `base` snapshot (tests/common/site.rs). Without a browser: the page's and files' types,
//! caching and security headers, 404 for unknown files, and the cpu WebSocket's token check
//! (header or `bearer.TOKEN` subprotocol). In a real browser (headless Chromium driven by
//! Selenium, tests/common/web.py): a user's whole story, sign in to sign out.
//!
//! Chromium, chromedriver and Selenium come from `scripts/deps.sh test`; without them the
//! browser test fails and says so.

use crate::common;

use common::site::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The web crate's directory (where the served files come from).
fn web_dir() -> PathBuf {
    common::repo_root().join("crates/web")
}

/// The headers of a WebSocket upgrade, plus `extra` (JSON members).
fn upgrade(extra: &str) -> String {
    format!(
        r#"{{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="{extra}}}"#
    )
}

#[test]
fn the_page_its_files_and_the_websocket_token() {
    let site = Site::new("web-http");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();

    // The page: HTML, the security headers, revalidated on every load.
    let page = request(&site, "GET", "/", "{}");
    assert_eq!(page.status, 200, "{}", page.body);
    let index = std::fs::read_to_string(web_dir().join("ui/index.html")).unwrap();
    assert_eq!(page.body, index);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} not in {csp}");
    }
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("cache-control"), "no-cache");

    // Its files: the bytes on disk, their types, cached for a year when versioned.
    for (path, file, ctype, cache) in [
        ("app.js", "ui/app.js", "text/javascript", "no-cache"),
        ("app.css", "ui/app.css", "text/css", "no-cache"),
        ("icon.svg", "ui/icon.svg", "image/svg+xml", "no-cache"),
        (
            "xterm-6.0.0/xterm.js",
            "vendor/xterm-6.0.0/xterm.js",
            "text/javascript",
            "immutable",
        ),
        (
            "xterm-6.0.0/xterm.css",
            "vendor/xterm-6.0.0/xterm.css",
            "text/css",
            "immutable",
        ),
        (
            "addon-fit-0.11.0/addon-fit.js",
            "vendor/addon-fit-0.11.0/addon-fit.js",
            "text/javascript",
            "immutable",
        ),
        (
            "xterm-6.0.0/LICENSE",
            "vendor/xterm-6.0.0/LICENSE",
            "text/plain",
            "immutable",
        ),
    ] {
        let a = request(&site, "GET", &format!("/ui/{path}"), "{}");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_eq!(
            a.body,
            std::fs::read_to_string(web_dir().join(file)).unwrap(),
            "{path}"
        );
        assert!(a.header("content-type").starts_with(ctype), "{path}");
        assert!(a.header("cache-control").contains(cache), "{path}");
        assert_eq!(a.header("x-content-type-options"), "nosniff", "{path}");
    }

    // Unknown files are 404 with the usual one-line JSON error; the API is unchanged.
    for path in [
        "/ui/nope.js",
        "/ui/",
        "/ui/README.md",
        "/ui/../Cargo.toml",
        "/ui/%2e%2e/Cargo.toml",
        "/index.html",
    ] {
        let a = request(&site, "GET", path, "{}");
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert!(a.body.starts_with(r#"{"error":"#), "{path}: {}", a.body);
    }
    assert_eq!(request(&site, "POST", "/", "{}").status, 405);
    assert_eq!(request(&site, "GET", "/api/scores", "{}").status, 401);

    // The cpu WebSocket: no token or a bad one is 401 before any upgrade; a token as the
    // `bearer.TOKEN` subprotocol upgrades, answered with the fixed protocol `spawngrid` (never
    // the token); the Authorization header still works (`spawngrid cpu`).
    alice.ok("spawn", &["base", "--as", "term"]);
    let route = "/api/envs/term/cpu";
    let none = request(&site, "GET", route, &upgrade(""));
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.body.contains("no token"), "{}", none.body);
    let offer = |token: &str| format!(r#", "Sec-WebSocket-Protocol": "spawngrid, bearer.{token}""#);
    let bad = request(&site, "GET", route, &upgrade(&offer("sg_00")));
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(bad.body.contains("token not valid"), "{}", bad.body);
    let token = alice.token();
    let good = request(&site, "GET", route, &upgrade(&offer(&token)));
    assert_eq!(good.status, 101, "{}", good.body);
    assert_eq!(good.header("sec-websocket-protocol"), "spawngrid");
    let header = format!(r#", "Authorization": "Bearer {token}""#);
    let by_header = request(&site, "GET", route, &upgrade(&header));
    assert_eq!(by_header.status, 101, "{}", by_header.body);
    assert_eq!(by_header.header("sec-websocket-protocol"), "");
    // Someone else's token offered this way sees no env, like every route.
    let bob = site.user("bob");
    bob.login();
    let other = request(&site, "GET", route, &upgrade(&offer(&bob.token())));
    assert_eq!(other.status, 404, "{}", other.body);
    // The token never reaches the log (only method, path, status, user).
    assert!(
        !site.log().contains(&token),
        "the token is in the node's log"
    );
    alice.ok("boom", &["term"]);
}

/// Chromium, chromedriver and the venv's python with Selenium, or a panic saying how to get
/// them.
fn browser() -> (String, String, String) {
    let cache = std::env::var("SPAWNGRID_CACHE").unwrap_or("/var/cache/spawngrid".into());
    let python = format!("{cache}/venv/bin/python");
    let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
    for p in [chromium, driver, &python] {
        assert!(
            Path::new(p).exists(),
            "no {p}: the browser test needs Chromium, chromedriver and Selenium; run scripts/deps.sh test"
        );
    }
    let selenium = run(Command::new(&python).args(["-c", "import selenium"]), None);
    assert!(
        selenium.status.success(),
        "no Selenium in {python} ({}): run scripts/deps.sh test",
        text(&selenium.stderr).trim()
    );
    (chromium.into(), driver.into(), python)
}

#[test]
fn a_user_story_in_a_real_browser() {
    let (chromium, driver, python) = browser();
    let site = Site::new("web-browser");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    let script = common::repo_root().join("crates/spawngrid/tests/common/web.py");
    let out = run(
        Command::new(&python)
            .arg(&script)
            .args([&chromium, &driver])
            .arg(format!("https://{}/", site.addr()))
            .args([&alice.name, &format!("{}-pw", alice.name), &bob.name])
            // Selenium must not fetch drivers or report anything: everything is local.
            .env("SE_OFFLINE", "true")
            .env("SE_AVOID_STATS", "true")
            // Chromium's and chromedriver's temporary files go with the site.
            .env("TMPDIR", site.scratch.path())
            .current_dir(site.scratch.path()),
        None,
    );
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && report.contains("all steps passed"),
        "{report}\nnode log:\n{}",
        site.log()
    );

    // What the browser did is what the node holds: the saved name (with the file the
    // terminal wrote) and bob's invited copy once he accepts it, no env left, and no password in the log.
    alice.login();
    let scores = alice.ok("scores", &[]);
    assert!(scores.contains("web-saved"), "{scores}");
    assert_eq!(alice.json("status", &[]), serde_json::json!([]));
    alice.ok("spawn", &["web-saved", "--as", "check"]);
    let (code, x, err) = alice.exec("check", "cat /tmp/x");
    assert_eq!((code, x.as_str()), (0, "42\n"), "{err}");
    alice.ok("boom", &["check"]);
    bob.login();
    // The browser's invite waits for bob (nothing bound yet); he accepts it.
    assert!(!bob.ok("scores", &[]).contains("web-saved"));
    bob.ok("invite", &["accept", "web-saved"]);
    let scores = bob.ok("scores", &[]);
    assert!(scores.contains("web-saved"), "{scores}");
    assert!(!site.log().contains(&format!("{}-pw", alice.name)));
}

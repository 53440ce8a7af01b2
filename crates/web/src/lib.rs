//! The Spawngrid web UI's files, embedded in the binary: the page (`ui/index.html`), its
//! script and style (`ui/`), and the vendored xterm.js (`vendor/`, see its README). The node
//! serves [`INDEX`] at `/` and [`asset`]`(PATH)` at `/ui/PATH`; this crate does no IO.
//!
//! The page talks to the node's HTTPS API with the token from a login kept in the tab's
//! `sessionStorage`, and attaches a browser terminal to an env over the `cpu` WebSocket.

/// One file of the UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its bytes.
    pub bytes: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its `Cache-Control`: revalidate the UI's own files on every load (they change with the
    /// node), keep the vendored ones for a year (their directory names carry their version).
    pub cache_control: &'static str,
}

/// The `Content-Security-Policy` of the page: scripts only from the node's own files (no
/// inline script, no `eval`), connections only to the node (its API and WebSocket), nothing
/// framed, no forms posted anywhere. Inline styles are allowed because xterm.js sets its
/// theme and measurements in `<style>` elements it creates; no style can run script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const TEXT: &str = "text/plain; charset=utf-8";
const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page, served at `/`.
pub const INDEX: Asset = Asset {
    bytes: include_bytes!("../ui/index.html"),
    content_type: HTML,
    cache_control: REVALIDATE,
};

/// The table of files under `/ui/`: (path, file in this crate, type, caching).
macro_rules! assets {
    ($($path:literal => $file:literal, $type:expr, $cache:expr;)*) => {
        &[$(($path, Asset {
            bytes: include_bytes!(concat!("../", $file)),
            content_type: $type,
            cache_control: $cache,
        }),)*]
    };
}

/// Every file under `/ui/`, by path below it.
const ASSETS: &[(&str, Asset)] = assets! {
    "app.js" => "ui/app.js", JS, REVALIDATE;
    "app.css" => "ui/app.css", CSS, REVALIDATE;
    "icon.svg" => "ui/icon.svg", SVG, REVALIDATE;
    "xterm-6.0.0/xterm.js" => "vendor/xterm-6.0.0/xterm.js", JS, IMMUTABLE;
    "xterm-6.0.0/xterm.css" => "vendor/xterm-6.0.0/xterm.css", CSS, IMMUTABLE;
    "xterm-6.0.0/LICENSE" => "vendor/xterm-6.0.0/LICENSE", TEXT, IMMUTABLE;
    "addon-fit-0.11.0/addon-fit.js" => "vendor/addon-fit-0.11.0/addon-fit.js", JS, IMMUTABLE;
    "addon-fit-0.11.0/LICENSE" => "vendor/addon-fit-0.11.0/LICENSE", TEXT, IMMUTABLE;
};

/// The file served at `/ui/PATH` (`path` without the `/ui/`), or `None` (a 404).
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src="..."` and `href="..."` value in `html`.
    fn links(html: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for attr in ["src=\"", "href=\""] {
            let mut rest = html;
            while let Some(i) = rest.find(attr) {
                rest = &rest[i + attr.len()..];
                let end = rest.find('"').expect("attribute closed");
                out.push(&rest[..end]);
            }
        }
        out
    }

    #[test]
    fn the_page_names_only_assets_and_has_no_inline_script() {
        let html = std::str::from_utf8(INDEX.bytes).unwrap();
        let links = links(html);
        assert!(links.len() >= 6, "{links:?}");
        for link in links {
            let path = link
                .strip_prefix("/ui/")
                .unwrap_or_else(|| panic!("{link}"));
            assert!(asset(path).is_some(), "the page names {link}, not an asset");
        }
        // Every <script> has a src and no body: the CSP allows no inline script.
        for part in html.split("<script").skip(1) {
            let (tag, rest) = part.split_once('>').unwrap();
            assert!(tag.contains("src=\"/ui/"), "inline script: <script{tag}>");
            assert!(rest.starts_with("</script>"), "script with a body");
        }
        // No inline event handlers (` onclick="..."`) or `javascript:` URLs either.
        for (i, _) in html.match_indices(" on") {
            let name: String = html[i + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            assert!(
                !html[i + 3 + name.len()..].starts_with('='),
                "inline handler on{name}"
            );
        }
        assert!(!html.contains("javascript:"));
        assert!(!CSP.contains("unsafe-eval") && CSP.contains("script-src 'self';"));
    }

    #[test]
    fn assets_have_types_and_unknown_paths_none() {
        assert_eq!(asset("app.js").unwrap().content_type, JS);
        assert_eq!(asset("xterm-6.0.0/xterm.css").unwrap().content_type, CSS);
        assert_eq!(
            asset("xterm-6.0.0/xterm.js").unwrap().cache_control,
            IMMUTABLE
        );
        assert_eq!(asset("app.js").unwrap().cache_control, REVALIDATE);
        for missing in [
            "",
            "index.html",
            "nope.js",
            "../Cargo.toml",
            "/app.js",
            "APP.JS",
        ] {
            assert!(asset(missing).is_none(), "{missing}");
        }
        for (p, a) in ASSETS {
            assert!(!a.bytes.is_empty(), "{p}");
        }
    }
}

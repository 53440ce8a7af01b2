//! The grid file: names for nodes in the seed's ndb(6) format, and the one function that turns
//! a client's `-h` into the `HOST:PORT` it connects to.
//!
//! ```text
//! authdom=spawngrid auth=isoauthtest
//! sys=parspasto ip=95.179.211.134
//! sys=testnode ip=127.0.0.1 port=17998   # port= is ours; default 16998
//!     dom=node.example.org               # a line starting with white space continues the entry
//! ```
//!
//! As in Plan 9's ndb (the text format is [`super::ndb`]). `-h NAME` uses the first entry
//! with `sys=NAME`: its `ip=` (else `dom=`) and `port=` (else 16998).
//!
//! The file is `$SPAWNGRID_GRID`, else `~/.config/spawngrid/grid` (or
//! `$XDG_CONFIG_HOME/spawngrid/grid`), else `/etc/spawngrid/grid`: the first that exists.

use super::ndb::{self, Entry};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The system-wide grid file, read when the user has none.
const SYSTEM_GRID: &str = "/etc/spawngrid/grid";

/// A parsed grid file.
#[derive(Debug)]
pub struct Grid {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Grid {
    /// Parses `text`, read from `path` (named in errors as `PATH:LINE: what is wrong`).
    pub fn parse(path: &Path, text: &str) -> Result<Grid> {
        let entries = ndb::parse(text)
            .map_err(|(line, e)| anyhow::anyhow!("{}:{line}: {e}", path.display()))?;
        Ok(Grid {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Reads the grid file (see the module documentation for where), or `None` when there is
    /// none. `$SPAWNGRID_GRID` naming a missing file is an error.
    pub fn load() -> Result<Option<Grid>> {
        let path = match std::env::var_os("SPAWNGRID_GRID").filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                let user = super::store::config_dir().ok().map(|d| d.join("grid"));
                match user
                    .into_iter()
                    .chain([PathBuf::from(SYSTEM_GRID)])
                    .find(|p| p.exists())
                {
                    Some(p) => p,
                    None => return Ok(None),
                }
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the grid file {}", path.display()))?;
        Grid::parse(&path, &text).map(Some)
    }

    /// `HOST:PORT` of the node named `sys` (with `port` instead of the entry's when given),
    /// or `None` when no entry has `sys=NAME`.
    pub fn node(&self, sys: &str, port: Option<u16>) -> Result<Option<String>> {
        let Some(entry) = self.entries.iter().find(|e| e.get("sys") == Some(sys)) else {
            return Ok(None);
        };
        let at = format!("{}:{}", self.path.display(), entry.line);
        let host = entry
            .get("ip")
            .or_else(|| entry.get("dom"))
            .filter(|h| !h.is_empty())
            .with_context(|| format!("{at}: sys={sys} has no ip= or dom= to connect to"))?;
        let port = match (port, entry.get("port")) {
            (Some(p), _) => p,
            (None, Some(p)) => p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .with_context(|| format!("{at}: port={p} of sys={sys} is not a port number"))?,
            (None, None) => api::DEFAULT_PORT,
        };
        Ok(Some(join(host, port)))
    }
}

/// `HOST:PORT`, with brackets around an IPv6 address.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits a client's `-h`: `NAME`, `NAME:PORT`, `[V6]:PORT`, a bare IPv6 address, or the
/// seed's dial strings `tcp!NAME` and `tcp!NAME!PORT`, into the name and the port it gives.
fn split_host(host: &str) -> Result<(&str, Option<u16>)> {
    let port = |p: &str| -> Result<u16> {
        p.parse()
            .ok()
            .filter(|&p| p != 0)
            .with_context(|| format!("bad port {p:?} in the node {host:?}"))
    };
    let (name, p) = if let Some(dial) = host.strip_prefix("tcp!") {
        match dial.split_once('!') {
            Some((name, p)) => (name, Some(port(p)?)),
            None => (dial, None),
        }
    } else if let Some(v6) = host.strip_prefix('[') {
        let Some((name, after)) = v6.split_once(']') else {
            bail!("bad node {host:?}: no ']' after the IPv6 address");
        };
        match after.strip_prefix(':') {
            Some(p) => (name, Some(port(p)?)),
            None if after.is_empty() => (name, None),
            None => bail!("bad node {host:?}: expected [ADDRESS]:PORT"),
        }
    } else {
        match host.split_once(':') {
            Some((name, p)) if !p.contains(':') => (name, Some(port(p)?)),
            _ => (host, None),
        }
    };
    if name.is_empty() {
        bail!("no node name in {host:?}: give -h NAME, HOST or HOST:PORT");
    }
    Ok((name, p))
}

/// The `HOST:PORT` a client's `-h` names: a `sys=` entry of the grid file when there is one
/// by that name, otherwise the host itself (default port 16998). A bare name (no dot) that is
/// neither in the grid file nor a known host is refused here, with one line saying where it
/// was looked for.
pub fn resolve(host: &str) -> Result<String> {
    let (name, port) = split_host(host)?;
    if name.parse::<IpAddr>().is_ok() {
        return Ok(join(name, port.unwrap_or(api::DEFAULT_PORT)));
    }
    address(name, port, Grid::load()?.as_ref())
}

/// [`resolve`] after the split, with the grid file given.
fn address(name: &str, port: Option<u16>, grid: Option<&Grid>) -> Result<String> {
    if let Some(addr) = grid.map(|g| g.node(name, port)).transpose()?.flatten() {
        return Ok(addr);
    }
    let addr = join(name, port.unwrap_or(api::DEFAULT_PORT));
    if !name.contains('.') && addr.to_socket_addrs().is_err() {
        match grid {
            Some(g) => bail!(
                "unknown node {name}: no sys={name} entry in the grid file {} and no host by that name",
                g.path.display()
            ),
            None => bail!(
                "unknown node {name}: no host by that name and no grid file to look it up in ($SPAWNGRID_GRID, ~/.config/spawngrid/grid or {SYSTEM_GRID})"
            ),
        }
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's own ndb lines (spawngrid-2018.txt, "ndb information").
    const SEED: &str = "authdom=spawngrid auth=isoauthtest
sys=isoauthtest ip=207.148.13.142
sys=fraspasto ip=199.247.16.96
sys=fraspacpu ip=45.77.53.117
sys=parspasto ip=95.179.211.134
sys=parspacpu ip=95.179.211.111
";

    fn grid(text: &str) -> Grid {
        Grid::parse(Path::new("/g"), text).unwrap()
    }

    fn error(text: &str) -> String {
        Grid::parse(Path::new("/g"), text).unwrap_err().to_string()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_seeds_lines() {
        let g = grid(SEED);
        assert_eq!(g.entries.len(), 6);
        assert_eq!(
            g.entries[0],
            Entry {
                line: 1,
                pairs: pairs(&[("authdom", "spawngrid"), ("auth", "isoauthtest")])
            }
        );
        assert_eq!(
            g.node("parspasto", None).unwrap().as_deref(),
            Some("95.179.211.134:16998")
        );
        assert_eq!(
            g.node("parspasto", Some(443)).unwrap().as_deref(),
            Some("95.179.211.134:443")
        );
        assert_eq!(g.node("spawngrid", None).unwrap(), None);
        assert_eq!(
            address("fraspacpu", Some(1), Some(&g)).unwrap(),
            "45.77.53.117:1"
        );
    }

    #[test]
    fn continuations_comments_blank_lines_and_quotes() {
        let g = grid(
            "# the test grid\n\
             \n\
             sys=n1 # the first\n\
             \tport=17000   ip=10.0.0.1\n\
             \n\
             \x20 dom=n1.example.org note=\"a # b = c\" empty= flag\n\
             sys=n2 dom='node two''s' ip6\r\n\
             sys=n3 ip=fe80::1 port=5\n",
        );
        assert_eq!(
            g.entries[0],
            Entry {
                line: 3,
                pairs: pairs(&[
                    ("sys", "n1"),
                    ("port", "17000"),
                    ("ip", "10.0.0.1"),
                    ("dom", "n1.example.org"),
                    ("note", "a # b = c"),
                    ("empty", ""),
                    ("flag", "")
                ])
            }
        );
        assert_eq!(g.entries[1].get("dom"), Some("node two's"));
        assert_eq!(g.entries[1].get("ip6"), Some(""));
        assert_eq!(g.node("n1", None).unwrap().unwrap(), "10.0.0.1:17000");
        assert_eq!(g.node("n3", None).unwrap().unwrap(), "[fe80::1]:5");
        // dom= when there is no ip=.
        assert_eq!(
            grid("sys=d dom=example.org").node("d", None).unwrap(),
            Some("example.org:16998".into())
        );
        assert!(grid("").entries.is_empty());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        assert_eq!(
            error("sys=a ip=1.2.3.4\n\n  # fine\nsys=b ip=\"1.2.3.4\n"),
            "/g:4: the value of ip has no closing \""
        );
        assert_eq!(
            error("  sys=a ip=1.2.3.4\n"),
            "/g:1: a continuation line (it starts with white space) with no entry before it"
        );
        assert_eq!(
            error("sys=a\n=b\n"),
            "/g:2: an attribute name is missing before '='"
        );
        assert_eq!(
            error("sys=a=b\n"),
            "/g:1: the value of sys (a=b) has '=' or a quote in it: quote the whole value"
        );
        assert_eq!(
            error("sys='a'b\n"),
            "/g:1: sys= is followed by \"b\" without white space between"
        );
        assert_eq!(
            error("s\"ys=a\n"),
            "/g:1: attribute s\"ys has a quote in its name"
        );
        // Entries that cannot name a node fail when used, with their line.
        let g = grid("sys=a\n\nsys=b ip=1.2.3.4 port=99999\n");
        assert_eq!(
            g.node("a", None).unwrap_err().to_string(),
            "/g:1: sys=a has no ip= or dom= to connect to"
        );
        assert_eq!(
            g.node("b", None).unwrap_err().to_string(),
            "/g:3: port=99999 of sys=b is not a port number"
        );
    }

    #[test]
    fn host_forms() {
        assert_eq!(split_host("n1").unwrap(), ("n1", None));
        assert_eq!(split_host("n1:5").unwrap(), ("n1", Some(5)));
        assert_eq!(split_host("::1").unwrap(), ("::1", None));
        assert_eq!(split_host("[::1]:7").unwrap(), ("::1", Some(7)));
        assert_eq!(split_host("[::1]").unwrap(), ("::1", None));
        assert_eq!(split_host("tcp!n1").unwrap(), ("n1", None));
        assert_eq!(split_host("tcp!n1!16998").unwrap(), ("n1", Some(16998)));
        for bad in ["n1:x", "n1:0", "tcp!n1!", "[::1", "[::1]x", "", ":5"] {
            assert!(split_host(bad).is_err(), "{bad}");
        }
        assert_eq!(resolve("127.0.0.1").unwrap(), "127.0.0.1:16998");
        assert_eq!(resolve("[::1]:5").unwrap(), "[::1]:5");
    }

    #[test]
    fn names_not_in_the_grid() {
        let g = grid(SEED);
        assert_eq!(
            address("localhost", None, Some(&g)).unwrap(),
            "localhost:16998"
        );
        // A name with a dot is left to the resolver at connect time.
        assert_eq!(
            address("node.invalid", Some(4), None).unwrap(),
            "node.invalid:4"
        );
        assert_eq!(
            address("nosuchsys", None, Some(&g)).unwrap_err().to_string(),
            "unknown node nosuchsys: no sys=nosuchsys entry in the grid file /g and no host by that name"
        );
        assert!(address("nosuchsys", None, None)
            .unwrap_err()
            .to_string()
            .starts_with("unknown node nosuchsys: no host by that name and no grid file"));
    }
}

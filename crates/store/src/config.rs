//! The `[store]` table of a node's configuration: where the library and the catalog live.
//!
//! ```toml
//! [store]
//! library = "file:/var/lib/spawngrid/library"      # or "s3://BUCKET/PREFIX"
//! catalog = "sqlite:/var/lib/spawngrid/catalog.db" # or "postgres://USER:PASSWORD@HOST:PORT/DB"
//! cache_bytes = 4294967296           # block cache of a remote library (DATA/cache/blocks)
//! lease_secs = 60                    # a grid's write and gc leases last this long unrenewed
//!
//! [store.s3]                         # for an s3:// library; each key falls back to the
//! endpoint = "http://127.0.0.1:3900" # environment: AWS_ENDPOINT_URL, AWS_REGION,
//! region = "garage"                  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
//! access_key_id = "GK…"
//! secret_access_key = "…"
//! request_timeout_secs = 30          # one request (connect: 5 s)
//! connect_timeout_secs = 5
//! retry_budget_secs = 180            # retries with backoff until this is spent
//! allow_http = false                 # plain http beyond loopback (trusted networks only)
//! ```
//!
//! Both keys are optional: the embedded default is `DATA/library` and `DATA/catalog.db`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `[store]` table as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the library lives: `file:DIR` or `s3://BUCKET/PREFIX`.
    pub library: Option<String>,
    /// Where the catalog lives: `sqlite:PATH` or `postgres://…`.
    pub catalog: Option<String>,
    /// Bytes of the node-local block cache of a remote library's packs (default 4 GiB).
    pub cache_bytes: Option<u64>,
    /// Seconds a catalog lease (a write's or gc's, on a grid) lasts unless renewed (default 60;
    /// renewed every third of that while held).
    pub lease_secs: Option<u64>,
    /// How to reach an S3 library.
    #[serde(default, skip_serializing_if = "is_default")]
    pub s3: s3::S3Options,
}

impl StoreConfig {
    /// The block cache's budget in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes.unwrap_or(4 << 30)
    }
}

fn is_default(o: &s3::S3Options) -> bool {
    *o == s3::S3Options::default()
}

/// Where the library lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibraryAt {
    /// Packs in a local directory.
    Dir(PathBuf),
    /// Packs in an S3 bucket, under a key prefix (empty: the bucket's root).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

/// Where the catalog lives.
#[derive(Clone, PartialEq, Eq)]
pub enum CatalogAt {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (which may hold a password: see [`CatalogAt::describe`]).
    Postgres(String),
}

impl std::fmt::Debug for CatalogAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl LibraryAt {
    /// Parses `file:DIR` (or a plain absolute path) and `s3://BUCKET[/PREFIX]`.
    pub fn parse(s: &str) -> Result<LibraryAt> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("store library {s:?}: no bucket (write s3://BUCKET/PREFIX)");
            }
            return Ok(LibraryAt::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if !path.starts_with('/') {
            bail!("store library {s:?}: write file:/ABSOLUTE/DIR or s3://BUCKET/PREFIX");
        }
        Ok(LibraryAt::Dir(PathBuf::from(path)))
    }

    /// The location for messages.
    pub fn describe(&self) -> String {
        match self {
            LibraryAt::Dir(d) => format!("file:{}", d.display()),
            LibraryAt::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl CatalogAt {
    /// Parses `sqlite:PATH` (or a plain absolute path) and `postgres://…` / `postgresql://…`.
    pub fn parse(s: &str) -> Result<CatalogAt> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(CatalogAt::Postgres(s.to_string()));
        }
        let path = s.strip_prefix("sqlite:").unwrap_or(s);
        if !path.starts_with('/') {
            bail!("store catalog: write sqlite:/ABSOLUTE/PATH or postgres://USER@HOST/DB");
        }
        Ok(CatalogAt::Sqlite(PathBuf::from(path)))
    }

    /// The location for messages, without any password.
    pub fn describe(&self) -> String {
        match self {
            CatalogAt::Sqlite(p) => format!("sqlite:{}", p.display()),
            CatalogAt::Postgres(url) => hide_password(url),
        }
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            LibraryAt::parse("s3://b/p/q/").unwrap(),
            LibraryAt::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            LibraryAt::parse("s3://b").unwrap(),
            LibraryAt::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            LibraryAt::parse("file:/x").unwrap(),
            LibraryAt::Dir("/x".into())
        );
        for bad in ["s3://", "file:rel", "rel", "ftp://x"] {
            assert!(LibraryAt::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            CatalogAt::parse("sqlite:/d/c.db").unwrap(),
            CatalogAt::Sqlite("/d/c.db".into())
        );
        assert!(CatalogAt::parse("mysql://x").is_err());
    }

    #[test]
    fn passwords_never_show() {
        let at = CatalogAt::parse("postgres://sg:s3cret@db:5432/grid").unwrap();
        assert_eq!(at.describe(), "postgres://sg:***@db:5432/grid");
        assert!(!format!("{at:?}").contains("s3cret"));
        let s3 = s3::S3Options {
            secret_access_key: Some("topsecret".into()),
            ..s3::S3Options::default()
        };
        assert!(!format!("{s3:?}").contains("topsecret"));
    }

    #[test]
    fn the_table_reads_from_toml() {
        let c: StoreConfig = toml::from_str(
            "library = \"s3://sg/lib\"\ncatalog = \"postgres://a@b/c\"\n[s3]\nregion = \"garage\"\n",
        )
        .unwrap();
        assert_eq!(c.s3.region.as_deref(), Some("garage"));
        assert_eq!(c.s3.request_timeout.as_secs(), 30);
        let c: StoreConfig = toml::from_str("[s3]\nretry_budget_secs = 600\n").unwrap();
        assert_eq!(c.s3.retry_budget.as_secs(), 600);
        assert!(toml::from_str::<StoreConfig>("librari = \"x\"").is_err());
    }
}

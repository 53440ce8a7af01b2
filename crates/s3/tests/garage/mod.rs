//! The Garage cluster the tests run against: the env file `scripts/garage.sh up` writes, named
//! by `SPAWNGRID_TEST_S3`. Without it tests skip (saying so), unless
//! `SPAWNGRID_REQUIRE_ENGINES=1`, when they fail.

#![allow(dead_code)]

use s3::{S3Backend, S3Options};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// A running test cluster.
pub struct Garage {
    env: HashMap<String, String>,
    dir: PathBuf,
}

/// The cluster named by `SPAWNGRID_TEST_S3`, or `None` (after printing why `test` skips).
pub fn garage(test: &str) -> Option<Garage> {
    let Some(file) = std::env::var_os("SPAWNGRID_TEST_S3") else {
        assert!(
            std::env::var("SPAWNGRID_REQUIRE_ENGINES").as_deref() != Ok("1"),
            "{test}: SPAWNGRID_TEST_S3 is not set but SPAWNGRID_REQUIRE_ENGINES=1 \
             (run `scripts/garage.sh up` and set SPAWNGRID_TEST_S3 to the s3.env it writes)"
        );
        println!("skipping {test}: SPAWNGRID_TEST_S3 is not set (see scripts/garage.sh up)");
        return None;
    };
    let file = PathBuf::from(file);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("SPAWNGRID_TEST_S3={}: {e}", file.display()));
    let env = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
        .collect();
    let dir = file
        .parent()
        .expect("the env file is in the cluster's directory")
        .to_owned();
    Some(Garage { env, dir })
}

impl Garage {
    fn var(&self, name: &str) -> String {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from SPAWNGRID_TEST_S3's file"))
            .clone()
    }

    /// Options for the cluster (timeouts and retry budget at their defaults).
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.var("AWS_ENDPOINT_URL")),
            region: Some(self.var("AWS_REGION")),
            access_key_id: Some(self.var("AWS_ACCESS_KEY_ID")),
            secret_access_key: Some(self.var("AWS_SECRET_ACCESS_KEY")),
            ..S3Options::default()
        }
    }

    /// A fresh, empty location in the test bucket for `test`.
    pub fn url(&self, test: &str) -> String {
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "s3://{}/tests/{test}-{}-{ns}",
            self.var("SPAWNGRID_S3_BUCKET"),
            std::process::id()
        )
    }

    /// A backend on a fresh location for `test`.
    pub fn backend(&self, test: &str) -> S3Backend {
        S3Backend::open(&self.url(test), &self.options()).unwrap()
    }

    /// Runs `scripts/garage.sh ARGS... DIR` on this cluster.
    pub fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/garage.sh");
        let st = Command::new(script)
            .args(args)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "scripts/garage.sh {args:?} failed");
    }
}

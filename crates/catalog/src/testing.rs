//! Test support for the crates that run on the catalog (built for the catalog's own tests and
//! with the `testing` feature, which store's and spawngrid's tests turn on): a fresh schema per
//! test in the shared test PostgreSQL named by `SPAWNGRID_TEST_POSTGRES`, dropped at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One test's schema in the test PostgreSQL; dropped (with everything in it) on drop.
pub struct Schema {
    admin: postgres::Config,
    name: String,
    url: String,
}

impl Schema {
    /// A new empty schema for `test` (a lowercase word: its name's prefix), or `None` when
    /// `SPAWNGRID_TEST_POSTGRES` is not set: the test is skipped, saying so, unless
    /// `SPAWNGRID_REQUIRE_ENGINES=1`, when it fails.
    pub fn new(test: &str) -> Option<Schema> {
        let Ok(url) = std::env::var("SPAWNGRID_TEST_POSTGRES") else {
            assert!(
                std::env::var("SPAWNGRID_REQUIRE_ENGINES").as_deref() != Ok("1"),
                "{test}: SPAWNGRID_REQUIRE_ENGINES=1 but SPAWNGRID_TEST_POSTGRES is not set \
                 (start one with `scripts/postgres.sh up` and export its URL)"
            );
            eprintln!("skipping {test}: SPAWNGRID_TEST_POSTGRES is not set");
            return None;
        };
        let admin: postgres::Config = url.parse().expect("SPAWNGRID_TEST_POSTGRES is a URL");
        // Tests of one binary run in parallel and the clock may not tick between two of them:
        // the counter keeps their schemas apart, the time keeps runs apart.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{test}_{}_{n}_{nanos}", std::process::id());
        let mut client = admin.connect(postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-csearch_path%3D{name}");
        Some(Schema { admin, name, url })
    }

    /// A catalog URL whose search path is the schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test PostgreSQL's connection settings (the schema not on its search path).
    pub fn admin(&self) -> &postgres::Config {
        &self.admin
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.connect(postgres::NoTls) {
            // Best effort: a leftover schema only takes a little room.
            let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
        }
    }
}

//! The catalog's behaviour, one suite for every engine: each test here runs against a fresh
//! SQLite file always, and against a fresh schema of the PostgreSQL database named by
//! `SPAWNGRID_TEST_POSTGRES` (a URL; the tests create and drop schemas in it) when that is
//! set. With `SPAWNGRID_REQUIRE_ENGINES=1` a missing URL fails the PostgreSQL tests instead of
//! skipping them (`scripts/test.sh` sets both). Below the shared suite are the tests only
//! PostgreSQL needs: several connections and nodes at once, and a server that goes away.

use crate::engine::postgres::{Limits, Postgres};
use crate::keys::tests::keygen;
use crate::shares::{address, EVERYONE};
use crate::testing::Schema;
use crate::{check_name, check_owner, Catalog, EnvRecord, Error, SCHEMA_VERSION};
use crate::{LeaseKind, NodeInfo};
use library::Score;
use postgres::config::Host;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

/// Where one test's catalog lives; [`Fixture::open`] opens it (again).
pub(crate) struct Fixture {
    url: String,
    _dir: Option<tempfile::TempDir>,
    /// The test's PostgreSQL schema, dropped at the end.
    postgres: Option<Schema>,
}

impl Fixture {
    /// A new SQLite catalog file in a temporary directory.
    fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            url: format!("sqlite:{}", dir.path().join("catalog.db").display()),
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A new empty schema in the test PostgreSQL database, or `None` (the test is skipped)
    /// when none is configured and none is required.
    fn postgres() -> Option<Fixture> {
        let schema = Schema::new("test")?;
        Some(Fixture {
            url: schema.url().to_string(),
            _dir: None,
            postgres: Some(schema),
        })
    }

    /// Opens the catalog.
    pub(crate) fn open(&self) -> Catalog {
        Catalog::connect(&self.url).unwrap()
    }

    /// Opens the catalog on PostgreSQL with a pool and waits of `limits`.
    fn open_within(&self, limits: Limits) -> Catalog {
        Catalog::with(Box::new(Postgres::new(&self.url, limits).unwrap())).unwrap()
    }

    /// The test PostgreSQL's settings and this fixture's schema in it.
    fn pg(&self) -> (&postgres::Config, &str) {
        let schema = self.postgres.as_ref().expect("a PostgreSQL fixture");
        (schema.admin(), schema.name())
    }

    /// The URL of this fixture's PostgreSQL schema through another host and port.
    fn via(&self, host: &str, port: u16) -> String {
        let (config, schema) = self.pg();
        pg_url(config, host, port, schema)
    }
}

/// The host and port of the server `config` names.
fn server(config: &postgres::Config) -> (String, u16) {
    let host = match &config.get_hosts()[0] {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) => p.display().to_string(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// A key-value connection string for `config`'s user and database at `host:port`, with
/// `schema` first on the search path.
fn pg_url(config: &postgres::Config, host: &str, port: u16, schema: &str) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let password = config
        .get_password()
        .map(|p| format!(" password={}", quote(&String::from_utf8_lossy(p))))
        .unwrap_or_default();
    format!(
        "host={} port={port} user={}{password} dbname={} options={}",
        quote(host),
        quote(config.get_user().unwrap_or("postgres")),
        quote(config.get_dbname().unwrap_or("postgres")),
        quote(&format!("-csearch_path={schema}")),
    )
}

/// Runs each named test (a `fn(&Fixture)`) against SQLite, and against PostgreSQL when
/// configured; the `postgres_only` form runs against PostgreSQL only.
macro_rules! conformance {
    ($($test:ident)*) => {
        mod on_sqlite {
            $( #[test] fn $test() { super::$test(&super::Fixture::sqlite()) } )*
        }
        mod on_postgres {
            $( #[test] fn $test() {
                if let Some(f) = super::Fixture::postgres() { super::$test(&f) }
            } )*
        }
    };
    (postgres_only: $($test:ident)*) => {
        mod on_postgres_only {
            $( #[test] fn $test() {
                if let Some(f) = super::Fixture::postgres() { super::$test(&f) }
            } )*
        }
    };
}

conformance! {
    bind_and_resolve
    rebinding_is_refused_and_changes_nothing
    schema_refuses_updates_and_deletes
    retired_names_stop_resolving_and_are_never_rebound
    invalid_names_are_refused
    list_with_patterns
    names_persist_across_reopen
    passwords_are_hashed_and_checked
    tokens_are_stored_hashed_expire_and_revoke
    deleting_a_user_revokes_everything_and_keeps_names
    a_new_password_revokes_tokens
    a_login_racing_a_password_change_keeps_no_token
    keys_are_added_listed_and_removed
    shared_names_are_visible_and_resolve_only_while_shared
    a_name_shared_with_everyone_is_seen_by_every_user_once
    only_owned_names_are_shared_with_real_other_users
    envs_are_recorded_listed_per_node_and_forgotten
    an_env_of_one_node_is_neither_taken_over_nor_forgotten_by_another
    exposures_are_made_found_rotated_and_go_with_their_env
    works_from_a_tokio_blocking_pool
    nodes_register_and_beat
    a_live_node_name_is_not_taken_by_another_identity
    leases_exclude_each_other_and_expire
    racing_exclusive_leases_are_held_one_at_a_time
    gc_leases_exclude_only_gc
    packs_are_condemned_claimed_swept_and_forgotten
    gc_view_drops_expired_leases_and_lists_roots
    leased_binds_check_the_lease_and_the_packs_written
    invites_wait_as_gc_roots_until_dropped
}

conformance! {
    postgres_only:
    concurrent_binds_of_one_name_one_wins
    catalogs_migrating_one_database_at_once_both_work
    a_restarted_server_is_used_again
    truncating_names_is_refused
    a_transaction_left_open_fails_lease_takers_instead_of_hanging
    a_node_whose_clock_runs_ahead_changes_nothing
    a_caller_waits_for_a_free_connection_only_so_long
    a_statement_past_its_limit_ends_and_its_connection_works_on
}

/// A made-up score, distinct for each `n`.
fn score(n: u8) -> Score {
    Score::of(&[n])
}

/// Runs `sql` on the catalog's database, behind the catalog's back.
fn raw(cat: &Catalog, sql: &str) -> crate::Result<u64> {
    cat.execute("testing", sql, &[])
}

/// The text a query behind the catalog's back returns first.
fn text(cat: &Catalog, sql: &str) -> String {
    cat.row("testing", sql, &[], |r| r.text(0))
        .unwrap()
        .unwrap()
}

/// The catalog's clock.
fn now(cat: &Catalog) -> i64 {
    cat.db(crate::engine::Mode::Plain, |db| db.now("testing"))
        .unwrap()
}

/// An env record of `owner` on `node`, spawned from `alice/base`.
fn rec(id: &str, owner: &str, node: &str) -> EnvRecord {
    EnvRecord {
        id: id.into(),
        owner: owner.into(),
        env: id.split('+').next().unwrap().into(),
        node: node.into(),
        name: Some("alice/base".into()),
        snapshot: Some("ab".repeat(32)),
        created: 7,
    }
}

fn bind_and_resolve(f: &Fixture) {
    let cat = f.open();
    cat.bind("alice", "base", score(1)).unwrap();
    cat.bind("bob", "base", score(2)).unwrap();
    assert_eq!(cat.resolve("alice", "base").unwrap(), score(1));
    assert_eq!(cat.resolve("bob", "base").unwrap(), score(2));
    let err = cat.resolve("alice", "nope").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert!(err.to_string().contains("nope"));
    assert_eq!(
        cat.names_of(&score(1)).unwrap(),
        vec![("alice".to_string(), "base".to_string())]
    );
}

fn rebinding_is_refused_and_changes_nothing(f: &Fixture) {
    let cat = f.open();
    cat.bind("alice", "web", score(1)).unwrap();
    for s in [score(1), score(2)] {
        let err = cat.bind("alice", "web", s).unwrap_err();
        assert!(matches!(err, Error::AlreadyBound { .. }));
        assert_eq!(
            err.to_string(),
            "name web is already bound (names are immutable; choose another)"
        );
    }
    assert_eq!(cat.resolve("alice", "web").unwrap(), score(1));
}

fn schema_refuses_updates_and_deletes(f: &Fixture) {
    let cat = f.open();
    cat.bind("alice", "web", score(1)).unwrap();
    for sql in [
        "UPDATE names SET score = 'x'",
        "UPDATE names SET score = name || score",
        "DELETE FROM names",
        "UPDATE names SET retired = NULL",
        "UPDATE names SET name = 'other'",
    ] {
        assert!(raw(&cat, sql).is_err(), "{sql}");
    }
    assert_eq!(cat.resolve("alice", "web").unwrap(), score(1));
}

fn retired_names_stop_resolving_and_are_never_rebound(f: &Fixture) {
    let cat = f.open();
    cat.bind("alice", "web", score(1)).unwrap();
    cat.bind("alice", "db", score(2)).unwrap();
    assert_eq!(cat.retire("alice", "web").unwrap(), score(1));
    assert!(matches!(
        cat.resolve("alice", "web"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        cat.retire("alice", "web"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        cat.bind("alice", "web", score(3)),
        Err(Error::AlreadyBound { .. })
    ));
    let roots: Vec<_> = cat.all_scores().unwrap().into_iter().map(|r| r.1).collect();
    assert_eq!(roots, vec!["db".to_string()]);
    assert!(cat.names_of(&score(1)).unwrap().is_empty());
    assert!(raw(&cat, "UPDATE names SET retired = 5 WHERE name = 'web'").is_err());
}

fn invalid_names_are_refused(f: &Fixture) {
    let long = "a".repeat(129);
    let bad = [
        "a/b", "..", "../x", "x..y", "", "a\nb", "a\u{1}", "a+b", "-x", ".x", "é", &long,
    ];
    let cat = f.open();
    for name in bad {
        let err = check_name(name).unwrap_err();
        assert!(err.to_string().starts_with("invalid name"), "{err}");
        assert!(cat.bind("alice", name, score(1)).is_err(), "{name:?}");
        assert!(check_owner(name).is_err(), "{name:?}");
    }
    assert!(check_name("a/b").unwrap_err().to_string().contains("'/'"));
    assert!(check_name("x..y").unwrap_err().to_string().contains(".."));
    assert!(check_name(&long).unwrap_err().to_string().contains("128"));
    for good in [
        "a",
        "ubuntu-24.04",
        "x_y:z@w",
        "9",
        &"b".repeat(128),
        "a.b.c",
    ] {
        check_name(good).unwrap();
    }
    assert!(cat.bind("bad/owner", "x", score(1)).is_err());
    assert!(cat.list(None, None).unwrap().is_empty());
}

fn list_with_patterns(f: &Fixture) {
    let cat = f.open();
    for (o, n) in [("alice", "web-1"), ("alice", "web-2"), ("alice", "db")] {
        cat.bind(o, n, score(1)).unwrap();
    }
    cat.bind("bob", "web-3", score(3)).unwrap();
    let names = |owner, pat| -> Vec<String> {
        let recs = cat.list(owner, pat).unwrap();
        recs.into_iter().map(|r| r.name).collect()
    };
    assert_eq!(names(Some("alice"), None), ["db", "web-1", "web-2"]);
    assert_eq!(names(None, Some("web")), ["web-1", "web-2", "web-3"]);
    assert_eq!(names(None, Some("web-?")), ["web-1", "web-2", "web-3"]);
    assert_eq!(names(Some("alice"), Some("*2")), ["web-2"]);
    assert_eq!(names(None, Some("w*b*")), ["web-1", "web-2", "web-3"]);
    assert!(names(None, Some("web")).len() == 3 && names(None, Some("?")).is_empty());
    let rec = &cat.list(Some("bob"), None).unwrap()[0];
    assert_eq!((rec.score, rec.owner.as_str()), (score(3), "bob"));
    assert!(rec.created > 1_600_000_000);
    assert_eq!(cat.all_scores().unwrap().len(), 4);
}

fn names_persist_across_reopen(f: &Fixture) {
    f.open().bind("alice", "kept", score(7)).unwrap();
    let cat = f.open();
    assert_eq!(cat.resolve("alice", "kept").unwrap(), score(7));
    assert!(cat.bind("alice", "kept", score(8)).is_err());
}

fn passwords_are_hashed_and_checked(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "correct horse", false).unwrap();
    cat.add_user("root", "x", true).unwrap();
    assert!(cat.check_password("alice", "correct horse").unwrap());
    assert!(!cat.check_password("alice", "correct horsE").unwrap());
    assert!(!cat.check_password("nobody", "correct horse").unwrap());
    let stored = text(&cat, "SELECT hash FROM users WHERE name = 'alice'");
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct"));
    let users = cat.users().unwrap();
    assert_eq!(
        users
            .iter()
            .map(|u| (u.name.as_str(), u.admin))
            .collect::<Vec<_>>(),
        [("alice", false), ("root", true)]
    );
    assert!(matches!(
        cat.add_user("alice", "y", false),
        Err(Error::UserExists { .. })
    ));
    assert!(cat.add_user("../x", "y", false).is_err());
    assert!(cat.add_user("carol", "", false).is_err());
}

fn tokens_are_stored_hashed_expire_and_revoke(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "pw", false).unwrap();
    let t = cat.issue_token("alice", 3600).unwrap();
    assert!(t.secret.starts_with("sg_") && t.secret.len() == 67);
    assert!(!format!("{t:?}").contains(&t.secret));
    assert_eq!(cat.token_user(&t.secret).unwrap().as_deref(), Some("alice"));
    let stored = text(&cat, "SELECT hash FROM tokens");
    assert!(!stored.contains(&t.secret[3..]));
    assert_eq!(cat.token_user("sg_bogus").unwrap(), None);
    assert_eq!(cat.token_user("").unwrap(), None);
    // Expired: a zero lifetime is already over.
    let expired = cat.issue_token("alice", 0).unwrap();
    assert_eq!(cat.token_user(&expired.secret).unwrap(), None);
    assert!(cat.revoke_token(&t.secret).unwrap());
    assert!(!cat.revoke_token(&t.secret).unwrap());
    assert_eq!(cat.token_user(&t.secret).unwrap(), None);
    assert!(raw(&cat, "UPDATE tokens SET revoked = NULL").is_err());
    assert!(raw(&cat, "UPDATE tokens SET \"user\" = 'bob'").is_err());
    assert!(matches!(
        cat.issue_token("nobody", 60),
        Err(Error::NoUser { .. })
    ));
}

fn deleting_a_user_revokes_everything_and_keeps_names(f: &Fixture) {
    let cat = f.open();
    for u in ["alice", "bob"] {
        cat.add_user(u, "pw", false).unwrap();
    }
    let t = cat.issue_token("bob", 3600).unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKgvJ8tXcc5DiRDMOx3vRVLF2vnNIiE9ftKmVCn1yxXm b";
    cat.add_key("bob", key).unwrap();
    cat.bind("bob", "work", score(1)).unwrap();
    cat.bind("alice", "base", score(2)).unwrap();
    cat.share("alice", "base", "bob").unwrap();
    cat.share("bob", "work", "alice").unwrap();
    cat.delete_user("bob").unwrap();
    assert_eq!(cat.user("bob").unwrap(), None);
    assert_eq!(cat.token_user(&t.secret).unwrap(), None);
    assert!(!cat.check_password("bob", "pw").unwrap());
    assert!(cat.keys("bob").unwrap().is_empty());
    assert!(cat.shared_with("alice", "base").unwrap().is_empty());
    // bob's names stay his, and alice keeps what he shared with her.
    assert_eq!(cat.resolve_for("alice", "bob/work").unwrap(), score(1));
    let err = cat.add_user("bob", "pw", false).unwrap_err();
    assert!(matches!(err, Error::UserDeleted { .. }), "{err}");
    assert!(matches!(cat.delete_user("bob"), Err(Error::NoUser { .. })));
    assert!(cat.issue_token("bob", 60).is_err());
}

fn a_new_password_revokes_tokens(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "old", false).unwrap();
    let t = cat.issue_token("alice", 3600).unwrap();
    cat.set_password("alice", "new").unwrap();
    assert_eq!(cat.token_user(&t.secret).unwrap(), None);
    assert!(cat.check_password("alice", "new").unwrap());
    assert!(!cat.check_password("alice", "old").unwrap());
    assert!(matches!(
        cat.set_password("bob", "x"),
        Err(Error::NoUser { .. })
    ));
}

/// Logins with the old password, one after the other while the password changes: each
/// either ended before the change (which revoked its token) or failed; none keeps a token.
fn a_login_racing_a_password_change_keeps_no_token(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "old", false).unwrap();
    assert_eq!(cat.login("alice", "wrong", 60).unwrap(), None);
    let (started, logging_in) = std::sync::mpsc::channel();
    let tokens = std::thread::scope(|s| {
        let logins = s.spawn(|| {
            let mut got = Vec::new();
            while let Some(t) = cat.login("alice", "old", 3600).unwrap() {
                got.push(t);
                let _ = started.send(());
            }
            got
        });
        logging_in.recv().unwrap();
        cat.set_password("alice", "new").unwrap();
        logins.join().unwrap()
    });
    for t in &tokens {
        assert_eq!(
            cat.token_user(&t.secret).unwrap(),
            None,
            "a login with the old password kept a token past the change ({} logins)",
            tokens.len()
        );
    }
    assert!(cat.login("alice", "new", 60).unwrap().is_some());
}

fn keys_are_added_listed_and_removed(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "pw", false).unwrap();
    let (one, fp1) = keygen("ed25519", None, "alice@laptop");
    let (two, fp2) = keygen("ecdsa", Some("256"), "alice  at  work");
    let k1 = cat.add_key("alice", &format!("  {one}")).unwrap();
    assert_eq!(
        (k1.fingerprint.as_str(), k1.line.as_str()),
        (fp1.as_str(), one.trim())
    );
    assert_eq!(k1.comment(), "alice@laptop");
    let k2 = cat.add_key("alice", &two).unwrap();
    assert_eq!(k2.comment(), "alice at work");
    let err = cat.add_key("alice", &one).unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }));
    assert!(err.to_string().contains(&fp1), "{err}");
    assert_eq!(cat.keys("alice").unwrap(), [k1.clone(), k2.clone()]);
    assert!(cat.keys("bob").unwrap().is_empty());
    assert!(matches!(
        cat.add_key("bob", &one),
        Err(Error::NoUser { .. })
    ));
    assert!(!cat.remove_key("alice", "SHA256:nothing").unwrap());
    assert!(cat.remove_key("alice", "alice at work").unwrap());
    assert_eq!(cat.keys("alice").unwrap(), [k1]);
    assert!(cat.remove_key("alice", &fp1).unwrap());
    assert!(cat.keys("alice").unwrap().is_empty());
    assert!(!cat.remove_key("alice", &fp2).unwrap());
}

fn shared_names_are_visible_and_resolve_only_while_shared(f: &Fixture) {
    let cat = f.open();
    for u in ["alice", "bob", "carol"] {
        cat.add_user(u, "pw", false).unwrap();
    }
    cat.bind("alice", "base", score(1)).unwrap();
    cat.bind("alice", "secret", score(2)).unwrap();
    cat.bind("bob", "mine", score(3)).unwrap();
    let seen = |u: &str| -> Vec<String> {
        let recs = cat.visible(u, None).unwrap();
        recs.iter().map(|r| address(u, &r.owner, &r.name)).collect()
    };
    assert_eq!(seen("bob"), ["mine"]);
    assert!(matches!(
        cat.resolve_for("bob", "alice/base"),
        Err(Error::NotFound { .. })
    ));
    assert!(cat.share("alice", "base", "bob").unwrap());
    assert!(!cat.share("alice", "base", "bob").unwrap());
    assert_eq!(seen("bob"), ["mine", "alice/base"]);
    assert_eq!(seen("alice"), ["base", "secret"]);
    assert_eq!(seen("carol"), Vec::<String>::new());
    assert_eq!(cat.resolve_for("bob", "alice/base").unwrap(), score(1));
    assert_eq!(cat.resolve_for("bob", "mine").unwrap(), score(3));
    assert_eq!(cat.resolve_for("alice", "alice/base").unwrap(), score(1));
    // Not shared and missing are the same answer.
    let hidden = cat.resolve_for("bob", "alice/secret").unwrap_err();
    let missing = cat.resolve_for("bob", "alice/nothing").unwrap_err();
    assert!(matches!(hidden, Error::NotFound { .. }));
    assert!(matches!(missing, Error::NotFound { .. }));
    assert!(cat.resolve_for("carol", "alice/base").is_err());
    assert_eq!(cat.visible("bob", Some("ba*")).unwrap().len(), 1);
    assert_eq!(cat.shared_with("alice", "base").unwrap(), ["bob"]);
    assert!(cat.unshare("alice", "base", "bob").unwrap());
    assert!(!cat.unshare("alice", "base", "bob").unwrap());
    assert!(cat.resolve_for("bob", "alice/base").is_err());
    assert_eq!(seen("bob"), ["mine"]);
}

fn a_name_shared_with_everyone_is_seen_by_every_user_once(f: &Fixture) {
    let cat = f.open();
    for u in ["admin", "bob"] {
        cat.add_user(u, "pw", false).unwrap();
    }
    cat.bind("admin", "base", score(1)).unwrap();
    assert!(cat.share("admin", "base", EVERYONE).unwrap());
    cat.share("admin", "base", "bob").unwrap();
    let seen = |u: &str| -> Vec<String> {
        let recs = cat.visible(u, None).unwrap();
        recs.iter().map(|r| address(u, &r.owner, &r.name)).collect()
    };
    assert_eq!(seen("bob"), ["admin/base"]);
    assert_eq!(seen("admin"), ["base"]);
    // A user added later sees it too.
    cat.add_user("carol", "pw", false).unwrap();
    assert_eq!(cat.resolve_for("carol", "admin/base").unwrap(), score(1));
    assert!(cat.unshare("admin", "base", EVERYONE).unwrap());
    assert!(cat.resolve_for("carol", "admin/base").is_err());
    assert_eq!(cat.resolve_for("bob", "admin/base").unwrap(), score(1));
    // `*` is no user name: nobody logs in as it or owns names.
    assert!(cat.add_user(EVERYONE, "pw", false).is_err());
}

fn only_owned_names_are_shared_with_real_other_users(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "pw", false).unwrap();
    cat.add_user("bob", "pw", false).unwrap();
    cat.bind("alice", "base", score(1)).unwrap();
    assert!(matches!(
        cat.share("bob", "base", "alice"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        cat.share("alice", "base", "nobody"),
        Err(Error::NoUser { .. })
    ));
    assert!(cat.share("alice", "base", "alice").is_err());
    assert!(cat.share("bob", "alice/base", "carol").is_err());
    cat.share("alice", "base", "bob").unwrap();
    cat.retire("alice", "base").unwrap();
    assert!(cat.resolve_for("bob", "alice/base").is_err());
    assert!(cat.visible("bob", None).unwrap().is_empty());
}

fn envs_are_recorded_listed_per_node_and_forgotten(f: &Fixture) {
    let cat = f.open();
    cat.record_env(&rec("web+alice", "alice", "n1")).unwrap();
    cat.record_env(&rec("db+bob", "bob", "n2")).unwrap();
    assert_eq!(cat.envs_on(None).unwrap().len(), 2);
    let on1 = cat.envs_on(Some("n1")).unwrap();
    assert_eq!(on1, vec![rec("web+alice", "alice", "n1")]);
    assert_eq!(cat.env_record("db+bob").unwrap().unwrap().node, "n2");
    assert_eq!(cat.env_record("nope").unwrap(), None);
    // Respawned after a boom the daemon missed: the row is replaced, not duplicated.
    let mut again = rec("web+alice", "alice", "n1");
    again.created = 9;
    cat.record_env(&again).unwrap();
    assert_eq!(cat.envs_on(Some("n1")).unwrap()[0].created, 9);
    assert!(cat.forget_env("n1", "web+alice").unwrap());
    assert!(!cat.forget_env("n1", "web+alice").unwrap());
    assert!(cat.envs_on(Some("n1")).unwrap().is_empty());
    // Bad input changes nothing.
    let mut bad = rec("x+y", "../y", "n1");
    assert!(cat.record_env(&bad).is_err());
    bad.owner = "y".into();
    bad.snapshot = Some("short".into());
    assert!(cat.record_env(&bad).is_err());
    assert_eq!(cat.envs_on(None).unwrap().len(), 1);
}

/// Two nodes spawning one user's env of one name at once: the node that records it second
/// fails and changes nothing; undoing its spawn there forgets neither the first node's row
/// nor its exposures, which go only when the first node forgets the env.
fn an_env_of_one_node_is_neither_taken_over_nor_forgotten_by_another(f: &Fixture) {
    let cat = f.open();
    let first = rec("web+alice", "alice", "n1");
    cat.record_env(&first).unwrap();
    let exposed = cat.expose("web+alice", "alice", 8000, false).unwrap();
    let err = cat
        .record_env(&rec("web+alice", "alice", "n2"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::EnvElsewhere { id, node } if id == "web+alice" && node == "n1"),
        "{err}"
    );
    assert!(err.to_string().contains("node n1"), "{err}");
    assert_eq!(cat.env_record("web+alice").unwrap(), Some(first.clone()));
    assert!(!cat.forget_env("n2", "web+alice").unwrap());
    assert_eq!(cat.env_record("web+alice").unwrap(), Some(first));
    assert_eq!(cat.exposure(&exposed.id).unwrap(), Some(exposed.clone()));
    assert!(cat.forget_env("n1", "web+alice").unwrap());
    assert_eq!(cat.exposure(&exposed.id).unwrap(), None);
    // At the same instant, one node wins and the other is told where the env runs.
    let start = Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let spawns: Vec<_> = ["n1", "n2"]
            .map(|node| {
                let (cat, start) = (&cat, &start);
                s.spawn(move || {
                    start.wait();
                    cat.record_env(&rec("db+bob", "bob", node))
                })
            })
            .into_iter()
            .collect();
        spawns.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winner = cat.env_record("db+bob").unwrap().unwrap().node;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(Error::EnvElsewhere { node, .. }) if *node == winner)),
        "{results:?}"
    );
}

fn exposures_are_made_found_rotated_and_go_with_their_env(f: &Fixture) {
    let cat = f.open();
    cat.record_env(&rec("web+alice", "alice", "n1")).unwrap();
    let a = cat.expose("web+alice", "alice", 8000, false).unwrap();
    assert_eq!(
        (a.id.len(), a.key.len(), a.port, a.public),
        (24, 64, 8000, false)
    );
    assert_eq!(cat.exposure(&a.id).unwrap().as_ref(), Some(&a));
    // Exposing the same port again keeps its id and key; only `public` changes.
    let again = cat.expose("web+alice", "alice", 8000, true).unwrap();
    assert_eq!((&again.id, &again.key, again.public), (&a.id, &a.key, true));
    let b = cat.expose("web+alice", "alice", 3000, false).unwrap();
    assert_ne!(a.id, b.id);
    let ports: Vec<u16> = cat
        .exposures_of("web+alice")
        .unwrap()
        .iter()
        .map(|e| e.port)
        .collect();
    assert_eq!(ports, [3000, 8000]);
    // A new key, same exposure.
    assert!(cat.rotate_exposure(&a.id).unwrap());
    let rotated = cat.exposure(&a.id).unwrap().unwrap();
    assert_ne!(rotated.key, a.key);
    assert!(!cat.rotate_exposure("nope").unwrap());
    // Bad input changes nothing.
    assert!(cat.expose("web+alice", "alice", 0, false).is_err());
    assert!(cat.expose("web+alice", "../x", 1, false).is_err());
    assert!(cat.unexpose("web+alice", 3000).unwrap());
    assert!(!cat.unexpose("web+alice", 3000).unwrap());
    assert_eq!(cat.exposure(&b.id).unwrap(), None);
    // Forgetting the env (boomed, evicted) forgets its exposures.
    assert!(cat.forget_env("n1", "web+alice").unwrap());
    assert_eq!(cat.exposure(&a.id).unwrap(), None);
    assert!(cat.exposures_of("web+alice").unwrap().is_empty());
}

/// The node calls the catalog on tokio's blocking pool; the PostgreSQL client runs a
/// runtime of its own, which must work there too.
fn works_from_a_tokio_blocking_pool(f: &Fixture) {
    let cat = Arc::new(f.open());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let cat = cat.clone();
            runtime.spawn_blocking(move || cat.bind("alice", &format!("n{i}"), score(i)))
        })
        .collect();
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    assert_eq!(cat.list(Some("alice"), None).unwrap().len(), 8);
}

fn concurrent_binds_of_one_name_one_wins(f: &Fixture) {
    let cats = [Arc::new(f.open()), Arc::new(f.open())];
    for round in 0..20u8 {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = cats
            .iter()
            .enumerate()
            .map(|(i, cat)| {
                let (cat, barrier) = (cat.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cat.bind("alice", &format!("race{round}"), score(i as u8))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(Error::AlreadyBound { .. }))));
    }
}

fn catalogs_migrating_one_database_at_once_both_work(f: &Fixture) {
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        for i in 0..4u8 {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                f.open().bind("alice", &format!("n{i}"), score(i)).unwrap();
            });
        }
    });
    let cat = f.open();
    assert_eq!(cat.list(None, None).unwrap().len(), 4);
    let version = cat
        .row("testing", "SELECT version FROM schema_version", &[], |r| {
            r.int(0)
        })
        .unwrap();
    assert_eq!(version, Some(SCHEMA_VERSION));
}

fn truncating_names_is_refused(f: &Fixture) {
    let cat = f.open();
    cat.bind("alice", "web", score(1)).unwrap();
    assert!(raw(&cat, "TRUNCATE names").is_err());
    assert_eq!(cat.resolve("alice", "web").unwrap(), score(1));
}

/// A server restart, as a client sees it: a TCP proxy to PostgreSQL that can cut every
/// connection through it (what a restart does) and refuse new ones for a while.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn new(upstream: (String, u16)) -> Proxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let server = TcpStream::connect((upstream.0.as_str(), upstream.1)).unwrap();
                let mut list = conns2.lock().unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                list.extend([client, server]);
            }
        });
        Proxy { port, up, conns }
    }

    /// Cuts every connection; refuses new ones until [`Proxy::start`].
    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn start(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn a_restarted_server_is_used_again(f: &Fixture) {
    let (config, _) = f.pg();
    let proxy = Proxy::new(server(config));
    let url = f.via("127.0.0.1", proxy.port);
    let cat = Catalog::connect(&url).unwrap();
    cat.bind("alice", "before", score(1)).unwrap();
    // Down: a clear error naming the server, never its password.
    proxy.stop();
    let err = cat.resolve("alice", "before").unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("unavailable") && message.contains("127.0.0.1"),
        "{message}"
    );
    if let Some(pw) = config.get_password() {
        assert!(
            !message.contains(&*String::from_utf8_lossy(pw)),
            "{message}"
        );
    }
    // Up again: the catalog works again, at once or after one clear error.
    proxy.start();
    let first = cat.resolve("alice", "before");
    assert!(
        first.is_ok() || matches!(first, Err(Error::Unavailable { .. })),
        "{first:?}"
    );
    assert_eq!(cat.resolve("alice", "before").unwrap(), score(1));
    // Restarted between calls, after the connections sat idle: the next call just works.
    proxy.stop();
    proxy.start();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    cat.bind("alice", "after", score(2)).unwrap();
    assert_eq!(cat.resolve("alice", "after").unwrap(), score(2));
}

/// A transaction left open on the lease fence (a `spawngrid lib gc` stopped mid-transaction)
/// costs a lease taker a clear error after the lock wait, not a hang; once the transaction
/// ends, leases are taken again.
fn a_transaction_left_open_fails_lease_takers_instead_of_hanging(f: &Fixture) {
    /// Far longer than the lock wait: a taker still waiting then would wait forever.
    const HUNG: std::time::Duration = std::time::Duration::from_secs(150);
    let ttl = std::time::Duration::from_secs(60);
    let cat = Arc::new(f.open());
    let config: postgres::Config = f.url.parse().unwrap();
    let mut stopped = config.connect(postgres::NoTls).unwrap();
    stopped
        .batch_execute("BEGIN; UPDATE lease_fence SET last = last + 1")
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let taker = cat.clone();
    std::thread::spawn(move || tx.send(taker.take_lease(LeaseKind::Shared, "node", ttl)));
    let waited = rx.recv_timeout(HUNG);
    // Ended before any assertion, so a failure leaves no lock behind (and a hung taker ends).
    stopped.batch_execute("ROLLBACK").unwrap();
    drop(stopped);
    let err = waited
        .expect("take_lease hung behind a transaction left open")
        .expect_err("take_lease got a fence another transaction holds");
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("taking a lease") && message.contains("timed out"),
        "{message}"
    );
    cat.take_lease(LeaseKind::Shared, "node", ttl).unwrap();
}

/// How long a node is taken for live after its last heartbeat, as a node's `down_after`.
const LIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// A node's registration as node `name` at `address` with certificate `fingerprint`.
fn node_info(name: &str, address: &str, fingerprint: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        address: address.into(),
        ssh_port: 2222,
        fingerprint: fingerprint.into(),
        capacity_envs: 64,
        capacity_mem: 64 << 30,
        labels: "zone=a".into(),
    }
}

/// The server's clock in PostgreSQL's words, for rows written behind the catalog's back as
/// another node writes them.
const SERVER_NOW: &str = "CAST(floor(extract(epoch FROM now())) AS BIGINT)";

/// This process is a node whose clock runs an hour ahead of the rest of the grid: the test
/// schema's `now()`, an hour behind, comes before PostgreSQL's own on the catalog's search path,
/// so the server's clock (the grid's) is an hour behind this host's. A lease and a heartbeat
/// another node wrote by the grid's clock look to this node as they look to everyone: the
/// lease live (not cleared, not overruled by gc), the other node just heard from; and what
/// this node stamps is on the grid's clock, so it is not judged by its own.
fn a_node_whose_clock_runs_ahead_changes_nothing(f: &Fixture) {
    let (config, schema) = f.pg();
    let mut admin = config.connect(postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE sql STABLE \
             AS $$ SELECT pg_catalog.now() - interval '1 hour' $$"
        ))
        .unwrap();
    let (host, port) = server(config);
    let cat = Catalog::connect(&pg_url(
        config,
        &host,
        port,
        &format!("{schema},pg_catalog"),
    ))
    .unwrap();
    let grid_now = || {
        cat.row("testing", &format!("SELECT {SERVER_NOW}"), &[], |r| {
            r.int(0)
        })
        .unwrap()
        .unwrap()
    };
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - grid_now();
    assert!(
        (3599..=3601).contains(&ahead),
        "this host is {ahead} s ahead"
    );
    // Another node saves under a lease for a minute, and beats.
    raw(&cat, "UPDATE lease_fence SET last = last + 1").unwrap();
    raw(
        &cat,
        &format!(
            "INSERT INTO leases (id, kind, holder, taken, expires, fence) SELECT 'n2-save', \
             'shared', 'save on n2', {SERVER_NOW}, {SERVER_NOW} + 60, last FROM lease_fence"
        ),
    )
    .unwrap();
    raw(
        &cat,
        &format!(
            "INSERT INTO nodes (name, address, ssh_port, fingerprint, capacity_envs, \
             capacity_mem, labels, registered, heartbeat) VALUES ('n2', '10.0.0.2:8443', 22, \
             'SHA256:n2', 1, 1, '', {SERVER_NOW}, {SERVER_NOW})"
        ),
    )
    .unwrap();
    let ttl = std::time::Duration::from_secs(60);
    let err = cat
        .take_lease(LeaseKind::Exclusive, "gc on n1", ttl)
        .unwrap_err();
    assert!(err.to_string().contains("save on n2"), "{err}");
    assert_eq!(cat.live_leases().unwrap()[0].id, "n2-save");
    assert_eq!(cat.gc_view().unwrap().leases[0].id, "n2-save");
    assert!(cat.renew_lease("n2-save", ttl).unwrap());
    let n2 = cat.nodes().unwrap().pop().unwrap();
    assert!(n2.silent <= 1, "n2 is silent for {} s to n1", n2.silent);
    // What this node stamps is on the grid's clock.
    let mine = cat
        .take_lease(LeaseKind::Shared, "save on n1", ttl)
        .unwrap();
    assert!((mine.taken - grid_now()).abs() <= 1, "{mine:?}");
    cat.register_node(&node_info("n1", "10.0.0.1:8443", "SHA256:n1"), LIVE)
        .unwrap();
    assert!(cat.heartbeat("n1", "SHA256:n1").unwrap());
    let n1 = &cat.nodes().unwrap()[0];
    assert!((n1.heartbeat - grid_now()).abs() <= 1, "{n1:?}");
}

/// Waits up to a minute for `n` sessions of the fixture's database to wait for a lock.
fn sessions_waiting_for_a_lock(f: &Fixture, n: i64) {
    let (config, _) = f.pg();
    let mut admin = config.connect(postgres::NoTls).unwrap();
    for _ in 0..600 {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%pg_advisory_xact_lock(7)%'",
                &[],
            )
            .unwrap();
        if row.get::<_, i64>(0) >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{n} sessions never waited for the lock");
}

/// Every connection of the pool busy (waiting for a lock the test holds): a caller gets
/// [`Error::Busy`] once the pool wait is over, not a hang; the pool works again afterwards.
fn a_caller_waits_for_a_free_connection_only_so_long(f: &Fixture) {
    let cat = f.open_within(Limits {
        pool_size: 2,
        pool_wait: std::time::Duration::from_secs(1),
        ..Limits::default()
    });
    let (config, _) = f.pg();
    let mut holder = config.connect(postgres::NoTls).unwrap();
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7)")
        .unwrap();
    std::thread::scope(|s| {
        let busy: Vec<_> = (0..2)
            .map(|_| s.spawn(|| raw(&cat, "SELECT pg_advisory_xact_lock(7)")))
            .collect();
        sessions_waiting_for_a_lock(f, 2);
        let waited = cat.resolve("alice", "nothing");
        // Released before any assertion, so a failure leaves no caller waiting.
        holder.batch_execute("COMMIT").unwrap();
        for b in busy {
            b.join().unwrap().unwrap();
        }
        let err = waited.expect_err("a caller got a connection while every one was in use");
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("waiting for a free connection")
                && message.contains("all 2 connections of this process stayed in use for 1 s"),
            "{message}"
        );
    });
    cat.bind("alice", "after", score(1)).unwrap();
    assert_eq!(cat.resolve("alice", "after").unwrap(), score(1));
}

/// A statement that runs past the statement limit is ended by the server with
/// [`Error::Busy`] saying so; its connection (the pool's only one) serves the next caller.
fn a_statement_past_its_limit_ends_and_its_connection_works_on(f: &Fixture) {
    let cat = f.open_within(Limits {
        pool_size: 1,
        statement: std::time::Duration::from_secs(1),
        ..Limits::default()
    });
    let err = raw(&cat, "SELECT pg_sleep(120)").unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("(a statement may run 1 s, its lock waits included)"),
        "{err}"
    );
    cat.bind("alice", "after", score(1)).unwrap();
    assert_eq!(cat.list(Some("alice"), None).unwrap().len(), 1);
    let ttl = std::time::Duration::from_secs(60);
    cat.take_lease(LeaseKind::Shared, "save", ttl).unwrap();
}

fn nodes_register_and_beat(f: &Fixture) {
    let cat = f.open();
    let mut info = node_info("n1", "10.0.0.1:8443", "SHA256:abc");
    cat.register_node(&info, LIVE).unwrap();
    let mut two = info.clone();
    two.name = "n0".into();
    cat.register_node(&two, LIVE).unwrap();
    let nodes = cat.nodes().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!((nodes[0].info.name.as_str(), &nodes[1].info), ("n0", &info));
    assert!(nodes[1].registered > 1_600_000_000 && nodes[1].heartbeat >= nodes[1].registered);
    assert!(nodes[1].silent <= 1, "{:?}", nodes[1]);
    // Registering again (a restart) updates what the node says, not when it first came.
    info.capacity_mem = u64::from(u32::MAX) * 4;
    info.labels = "zone=b".into();
    cat.register_node(&info, LIVE).unwrap();
    let again = cat.nodes().unwrap().pop().unwrap();
    assert_eq!(
        (&again.info, again.registered),
        (&info, nodes[1].registered)
    );
    // A node silent for a while is seen so; a heartbeat makes it live again.
    raw(
        &cat,
        "UPDATE nodes SET heartbeat = heartbeat - 100 WHERE name = 'n1'",
    )
    .unwrap();
    assert!(cat.nodes().unwrap()[1].silent >= 100);
    assert!(cat.heartbeat("n1", "SHA256:abc").unwrap());
    assert!(cat.nodes().unwrap()[1].silent <= 1);
    assert!(!cat.heartbeat("nope", "SHA256:abc").unwrap());
    info.name = "../x".into();
    assert!(cat.register_node(&info, LIVE).is_err());
}

/// Two hosts given one node name: while the first is live, the second (another certificate,
/// or another address) is refused in one line naming the name, the holder and what to do, and
/// changes nothing; once the first is silent past the threshold (it moved), the name is taken.
fn a_live_node_name_is_not_taken_by_another_identity(f: &Fixture) {
    let cat = f.open();
    let first = node_info("n1", "10.0.0.1:8443", "SHA256:first");
    cat.register_node(&first, LIVE).unwrap();
    for other in [
        node_info("n1", "10.0.0.2:8443", "SHA256:second"),
        node_info("n1", "10.0.0.1:8443", "SHA256:second"),
    ] {
        let err = cat.register_node(&other, LIVE).unwrap_err();
        assert!(matches!(err, Error::NodeNameHeld { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("node name n1 is held by a live node at 10.0.0.1:8443")
                && message.contains("give this node another name")
                && message.contains("silent for 30 s")
                && !message.contains('\n'),
            "{message}"
        );
        assert_eq!(cat.nodes().unwrap()[0].info, first);
    }
    // The same certificate is the same node: restarted on another port, it keeps its name.
    let restarted = node_info("n1", "10.0.0.1:9443", "SHA256:first");
    cat.register_node(&restarted, LIVE).unwrap();
    assert_eq!(cat.nodes().unwrap()[0].info, restarted);
    cat.register_node(&first, LIVE).unwrap();
    // Silent past the threshold: the node moved to another host, which takes the name.
    raw(&cat, "UPDATE nodes SET heartbeat = heartbeat - 31").unwrap();
    let moved = node_info("n1", "10.0.0.2:8443", "SHA256:second");
    cat.register_node(&moved, LIVE).unwrap();
    assert_eq!(cat.nodes().unwrap()[0].info, moved);
    // And the first host, back, is now the one refused; its heartbeats keep nothing alive.
    let err = cat.register_node(&first, LIVE).unwrap_err();
    assert!(err.to_string().contains("at 10.0.0.2:8443"), "{err}");
    raw(&cat, "UPDATE nodes SET heartbeat = heartbeat - 31").unwrap();
    assert!(!cat.heartbeat("n1", "SHA256:first").unwrap());
    assert!(cat.nodes().unwrap()[0].silent >= 31);
    assert!(cat.heartbeat("n1", "SHA256:second").unwrap());
    // A node that stops says so (its own row only): a new certificate takes the name at once.
    assert!(!cat.leave_node("n1", "SHA256:first", LIVE).unwrap());
    assert!(cat.leave_node("n1", "SHA256:second", LIVE).unwrap());
    assert!(cat.nodes().unwrap()[0].silent > LIVE.as_secs());
    let renewed = node_info("n1", "10.0.0.2:8443", "SHA256:third");
    cat.register_node(&renewed, LIVE).unwrap();
    assert_eq!(cat.nodes().unwrap()[0].info, renewed);
}

fn leases_exclude_each_other_and_expire(f: &Fixture) {
    let cat = f.open();
    let ttl = std::time::Duration::from_secs(60);
    let a = cat.take_lease(LeaseKind::Shared, "import a", ttl).unwrap();
    let b = cat.take_lease(LeaseKind::Shared, "save b", ttl).unwrap();
    assert!(b.fence > a.fence && a.id != b.id && a.expires >= a.taken + 60);
    let err = cat.take_lease(LeaseKind::Exclusive, "gc", ttl).unwrap_err();
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err}");
    assert!(err.to_string().contains("import a, save b"), "{err}");
    assert_eq!(cat.live_leases().unwrap(), [a.clone(), b.clone()]);
    assert!(cat.release_lease(&a.id).unwrap());
    assert!(!cat.release_lease(&a.id).unwrap());
    assert!(cat.renew_lease(&b.id, ttl).unwrap());
    assert!(!cat.renew_lease(&a.id, ttl).unwrap());
    assert!(cat.take_lease(LeaseKind::Exclusive, "gc", ttl).is_err());
    cat.release_lease(&b.id).unwrap();
    let gc = cat.take_lease(LeaseKind::Exclusive, "gc", ttl).unwrap();
    assert!(gc.fence > b.fence);
    assert!(matches!(
        cat.take_lease(LeaseKind::Shared, "import c", ttl),
        Err(Error::LeaseHeld { .. })
    ));
    assert!(matches!(
        cat.take_lease(LeaseKind::Exclusive, "gc 2", ttl),
        Err(Error::LeaseHeld { .. })
    ));
    cat.release_lease(&gc.id).unwrap();
    // An expired lease (its holder died) counts for nothing and cannot be renewed.
    let dead = cat
        .take_lease(LeaseKind::Exclusive, "dead", std::time::Duration::ZERO)
        .unwrap();
    assert!(cat.live_leases().unwrap().is_empty());
    assert!(!cat.renew_lease(&dead.id, ttl).unwrap());
    let next = cat.take_lease(LeaseKind::Exclusive, "gc", ttl).unwrap();
    assert!(next.fence > dead.fence);
    assert_eq!(cat.live_leases().unwrap(), [next]);
}

/// 8 threads, each with its own catalog (connection), race for an exclusive lease: never two
/// hold it at once, and every lease gets its own fence.
fn racing_exclusive_leases_are_held_one_at_a_time(f: &Fixture) {
    let inside = AtomicUsize::new(0);
    let fences = std::sync::Mutex::new(Vec::new());
    let barrier = Barrier::new(8);
    // Opened one after the other: SQLite refuses to switch a new file to WAL from several
    // connections at once.
    let cats: Vec<Catalog> = (0..8).map(|_| f.open()).collect();
    std::thread::scope(|s| {
        for (t, cat) in cats.into_iter().enumerate() {
            let (inside, fences, barrier) = (&inside, &fences, &barrier);
            s.spawn(move || {
                barrier.wait();
                let mut won = 0;
                while won < 3 {
                    let ttl = std::time::Duration::from_secs(60);
                    match cat.take_lease(LeaseKind::Exclusive, &format!("t{t}"), ttl) {
                        Ok(lease) => {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            assert!(cat.release_lease(&lease.id).unwrap());
                            fences.lock().unwrap().push(lease.fence);
                            won += 1;
                        }
                        Err(Error::LeaseHeld { .. }) => {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    let mut fences = fences.into_inner().unwrap();
    fences.sort();
    fences.dedup();
    assert_eq!(fences.len(), 24);
}

/// A gc lease excludes another gc (and exclusive) lease, never writers.
fn gc_leases_exclude_only_gc(f: &Fixture) {
    let cat = f.open();
    let ttl = std::time::Duration::from_secs(60);
    let save = cat.take_lease(LeaseKind::Shared, "save", ttl).unwrap();
    let gc = cat.take_lease(LeaseKind::Gc, "gc on a", ttl).unwrap();
    assert_eq!(gc.kind, LeaseKind::Gc);
    let err = cat.take_lease(LeaseKind::Gc, "gc on b", ttl).unwrap_err();
    assert!(err.to_string().contains("held by gc on a"), "{err}");
    assert!(cat.take_lease(LeaseKind::Exclusive, "x", ttl).is_err());
    cat.take_lease(LeaseKind::Shared, "import", ttl).unwrap();
    assert_eq!(cat.live_leases().unwrap().len(), 3);
    cat.release_lease(&gc.id).unwrap();
    cat.release_lease(&save.id).unwrap();
    cat.take_lease(LeaseKind::Gc, "gc on b", ttl).unwrap();
}

/// condemn → (revive | claim → mark_swept → forget_swept), each only as the rules allow.
fn packs_are_condemned_claimed_swept_and_forgotten(f: &Fixture) {
    use crate::PackState::{Condemned, Sweeping, Swept};
    let cat = f.open();
    let ttl = std::time::Duration::from_secs(60);
    let state = |p: Score| {
        let rows = cat.gc_packs().unwrap();
        rows.into_iter()
            .find(|r| r.pack == p)
            .map(|r| (r.state, r.fence))
    };
    let (p1, p2) = (score(1), score(2));
    let gc = cat.take_lease(LeaseKind::Gc, "gc", ttl).unwrap();
    let fence = cat.condemn(&gc.id, &[p1, p2]).unwrap();
    assert!(fence > gc.fence);
    // Condemning again keeps the first mark.
    assert!(cat.condemn(&gc.id, &[p1]).unwrap() > fence);
    assert_eq!(state(p1), Some((Condemned, fence)));
    assert_eq!(cat.revive(&[p2]).unwrap(), 1);
    assert_eq!(state(p2), None);
    assert!(cat.claim(&gc.id, &[(p1, fence + 100)]).unwrap().is_empty());
    assert_eq!(cat.claim(&gc.id, &[(p1, fence)]).unwrap(), [p1]);
    assert_eq!(state(p1).unwrap().0, Sweeping);
    assert_eq!(
        cat.revive(&[p1]).unwrap(),
        0,
        "a pack being swept stays claimed"
    );
    cat.mark_swept(&[p1]).unwrap();
    let (s, swept) = state(p1).unwrap();
    assert!(s == Swept && swept > fence);
    // A tombstone stays while a lease older than it lives.
    let old = cat.take_lease(LeaseKind::Shared, "old save", ttl).unwrap();
    cat.condemn(&gc.id, &[p2]).unwrap();
    let p2_fence = state(p2).unwrap().1;
    cat.claim(&gc.id, &[(p2, p2_fence)]).unwrap();
    cat.mark_swept(&[p2]).unwrap();
    let later = now(&cat) + 10;
    assert_eq!(cat.forget_swept(later).unwrap(), 1, "p1 goes, p2 stays");
    assert_eq!(state(p2).unwrap().0, Swept);
    cat.release_lease(&old.id).unwrap();
    assert_eq!(cat.forget_swept(now(&cat) - 10).unwrap(), 0, "too recent");
    assert_eq!(cat.forget_swept(later).unwrap(), 1);
    // Without a live gc lease nothing is condemned or claimed.
    cat.release_lease(&gc.id).unwrap();
    let err = cat.condemn(&gc.id, &[p1]).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(matches!(
        cat.claim(&gc.id, &[]),
        Err(Error::LeaseLost { .. })
    ));
    assert!(cat.gc_packs().unwrap().is_empty());
}

/// gc's view drops expired leases and lists each bound score once.
fn gc_view_drops_expired_leases_and_lists_roots(f: &Fixture) {
    let cat = f.open();
    cat.bind("a", "x", score(1)).unwrap();
    cat.bind("b", "y", score(1)).unwrap();
    cat.bind("b", "z", score(2)).unwrap();
    cat.bind("b", "old", score(3)).unwrap();
    cat.retire("b", "old").unwrap();
    let dead = cat
        .take_lease(LeaseKind::Shared, "dead", std::time::Duration::ZERO)
        .unwrap();
    let live = cat
        .take_lease(
            LeaseKind::Shared,
            "live",
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let view = cat.gc_view().unwrap();
    let mut roots = vec![score(1), score(2)];
    roots.sort();
    assert_eq!(view.roots, roots);
    assert_eq!(view.leases, [live]);
    assert!(view.packs.is_empty() && view.now >= dead.taken);
    // The expired lease's row is gone: it can never bind.
    let err = cat
        .bind_leased("a", "late", score(4), &dead.id, &[])
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

/// A leased bind binds only while the lease lives and no pack it wrote was swept after it
/// began; a condemned pack it wrote is revived.
fn leased_binds_check_the_lease_and_the_packs_written(f: &Fixture) {
    use crate::PackState::Swept;
    let cat = f.open();
    let ttl = std::time::Duration::from_secs(60);
    let gc = cat.take_lease(LeaseKind::Gc, "gc", ttl).unwrap();
    let (condemned, sweeping, swept_before) = (score(1), score(2), score(3));
    let f1 = cat
        .condemn(&gc.id, &[condemned, sweeping, swept_before])
        .unwrap();
    cat.claim(&gc.id, &[(sweeping, f1), (swept_before, f1)])
        .unwrap();
    cat.mark_swept(&[swept_before]).unwrap();
    let save = cat.take_lease(LeaseKind::Shared, "save", ttl).unwrap();
    let bound = |name: &str| cat.resolve("u", name).is_ok();

    cat.bind_leased("u", "a", score(9), &save.id, &[condemned, swept_before])
        .unwrap();
    assert!(bound("a"));
    let left: Vec<Score> = cat.gc_packs().unwrap().iter().map(|r| r.pack).collect();
    assert_eq!(
        left,
        [sweeping],
        "revived, and a tombstone older than the lease dropped"
    );

    let err = cat
        .bind_leased("u", "b", score(9), &save.id, &[sweeping])
        .unwrap_err();
    assert!(matches!(err, Error::PackSwept { .. }), "{err}");
    assert!(err.to_string().contains("nothing was bound"), "{err}");
    assert!(!bound("b"));

    cat.mark_swept(&[sweeping]).unwrap();
    let row = cat.gc_packs().unwrap().pop().unwrap();
    assert!(row.state == Swept && row.fence > save.fence);
    let err = cat
        .bind_leased("u", "c", score(9), &save.id, &[sweeping])
        .unwrap_err();
    assert!(
        matches!(err, Error::PackSwept { .. }),
        "swept after the save began: {err}"
    );
    assert!(!bound("c"));

    let err = cat
        .bind_leased("u", "a", score(8), &save.id, &[])
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyBound { .. }), "{err}");
    cat.release_lease(&save.id).unwrap();
    let err = cat
        .bind_leased("u", "d", score(9), &save.id, &[])
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(!bound("d"));
}

fn invites_wait_as_gc_roots_until_dropped(f: &Fixture) {
    let cat = f.open();
    cat.add_user("alice", "pw-a", false).unwrap();
    cat.add_user("bob", "pw-b", false).unwrap();
    cat.bind("alice", "base", score(1)).unwrap();
    cat.add_invite("bob", "gift", "alice", "base", score(2))
        .unwrap();
    cat.add_invite("bob", "other", "alice", "base", score(1))
        .unwrap();
    let err = cat
        .add_invite("bob", "gift", "alice", "base", score(3))
        .unwrap_err();
    assert!(matches!(err, Error::InviteExists { .. }), "{err}");
    assert!(cat
        .add_invite("bob", "../x", "alice", "base", score(3))
        .is_err());
    let pending = cat.invites_for("bob").unwrap();
    let names: Vec<&str> = pending.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["gift", "other"]);
    let gift = cat.invite("bob", "gift").unwrap().unwrap();
    assert_eq!(
        (gift.inviter.as_str(), gift.source.as_str(), gift.score),
        ("alice", "base", score(2))
    );
    assert!(gift.created > 0);
    assert!(cat.invites_for("alice").unwrap().is_empty());
    // A pending invite's snapshot is a gc root (once, however many refer to it).
    let mut roots = cat.gc_view().unwrap().roots;
    roots.sort();
    let mut want = vec![score(1), score(2)];
    want.sort();
    assert_eq!(roots, want);
    // Dropped (accepted or refused): gone, and no longer a root; nothing was bound.
    assert!(cat.drop_invite("bob", "gift").unwrap());
    assert!(!cat.drop_invite("bob", "gift").unwrap());
    assert_eq!(cat.invite("bob", "gift").unwrap(), None);
    assert!(cat.resolve("bob", "gift").is_err());
    assert_eq!(cat.gc_view().unwrap().roots, vec![score(1)]);
    // Deleting a user drops the invites to and from them.
    cat.delete_user("alice").unwrap();
    assert!(cat.invites_for("bob").unwrap().is_empty());
}

//! Users together, end to end (as root, the real binary over HTTPS): `invite` gives a user
//! their own copy of a name with an account inside; `share`/`unshare` lend a name; admins and
//! users manage passwords, SSH keys and deletions (`user passwd|del|key`, `passwd`, `key`).

use crate::common;

use common::site::*;
use std::process::Command;

/// The entries of the node's env directory (temporary invite envs must not stay).
fn env_dirs(site: &Site) -> Vec<String> {
    match std::fs::read_dir(site.data().join("envs")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// (name, owner, score) of each name `user` sees.
fn names(user: &User) -> Vec<(String, String, String)> {
    let list = user.json("scores", &[]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap().to_string();
            (field("name"), field("owner"), field("score"))
        })
        .collect()
}

/// Adds user `name` offline (password `NAME-pw`), admin or not.
fn add_user(site: &Site, name: &str, admin: bool) {
    let mut args = vec![
        "user",
        "--data",
        site.data_str(),
        "add",
        name,
        "--password-stdin",
    ];
    if admin {
        args.push("--admin");
    }
    site.admin(&args, Some(&format!("{name}-pw\n")));
}

#[test]
fn invite_gives_a_user_their_own_copy_with_an_account() {
    let site = Site::new("invite");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    let b = bob.name.as_str();

    // alice's system has a shadow file, admin groups and a skeleton home.
    alice.ok("spawn", &["base"]);
    let setup = "touch /etc/shadow && chmod 600 /etc/shadow && \
                 printf 'adm:x:4:\\nwheel:x:10:root\\n' >> /etc/group && \
                 mkdir -p /etc/skel && echo 'PS1=skel' > /etc/skel/.profile && \
                 echo mark > /root/mark && sync";
    assert_eq!(alice.exec("base", setup).0, 0);
    alice.ok("save", &["base", "tools"]);
    alice.ok("boom", &["base"]);
    let before = names(&alice);

    // bob has a base of his own: the same name is refused, nothing is bound.
    let err = alice.refused("invite", &[b, "base"]);
    assert!(
        err.contains("already has a name base") && err.contains("--as"),
        "{err}"
    );
    // An unknown user: a clear refusal, nothing bound, no env left.
    let nobody = who("nobody");
    let err = alice.refused("invite", &[&nobody, "tools"]);
    assert!(err.contains(&format!("no user {nobody}")), "{err}");
    // A user name that cannot be a Unix account.
    let colon = who("c:d");
    add_user(&site, &colon, false);
    let err = alice.refused("invite", &[&colon, "tools"]);
    assert!(err.contains("cannot be an account"), "{err}");
    // A name alice does not have.
    assert!(alice.refused("invite", &[b, "nothing"]).contains("nothing"));
    assert_eq!(env_dirs(&site), Vec::<String>::new());

    // The invite waits for bob: nothing is made or bound until he accepts.
    let p = alice.json("invite", &[b, "tools"]);
    assert_eq!(
        (p["pending"].as_bool(), p["score"].as_str()),
        (Some(true), Some(""))
    );
    assert_eq!(env_dirs(&site), Vec::<String>::new());
    assert!(!names(&bob).iter().any(|n| n.0 == "tools"));
    let waiting = bob.json("invite", &["list"]);
    assert_eq!(waiting[0]["name"], "tools", "{waiting}");
    assert_eq!(waiting[0]["inviter"].as_str(), Some(alice.name.as_str()));
    assert_eq!(waiting[0]["from"], "tools");
    let r = bob.json("invite", &["accept", "tools"]);
    assert!(bob.json("invite", &["list"]).as_array().unwrap().is_empty());
    assert_eq!(
        (
            r["user"].as_str(),
            r["name"].as_str(),
            r["existed"].as_bool()
        ),
        (Some(b), Some("tools"), Some(false)),
        "{r}"
    );
    assert_eq!(
        (r["uid"].as_u64(), r["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(r["groups"], serde_json::json!(["adm", "wheel"]));
    // The temporary env is gone; alice's names are unchanged; bob has his own name.
    assert_eq!(env_dirs(&site), Vec::<String>::new());
    assert_eq!(names(&alice), before);
    assert!(alice.json("status", &[]).as_array().unwrap().is_empty());
    let mine = names(&bob);
    let tools = mine.iter().find(|n| n.0 == "tools").expect("bob has tools");
    assert_eq!(tools.1, b);
    assert_eq!(tools.2, r["score"].as_str().unwrap());
    assert_ne!(
        Some(&tools.2),
        before.iter().find(|n| n.0 == "tools").map(|n| &n.2)
    );

    // bob spawns it: his account, groups and home are there, alice's file too.
    bob.ok("spawn", &["tools"]);
    let check = format!(
        "grep '^{b}:' /etc/passwd; grep '^{b}:' /etc/shadow | cut -d: -f1,2; \
         grep -e '^adm:' -e '^wheel:' -e '^{b}:' /etc/group; \
         stat -c '%u %g %a' /home/{b}; cat /home/{b}/.profile; stat -c '%u' /home/{b}/.profile; \
         id {b}; su -s /bin/sh {b} -c whoami; cat /root/mark"
    );
    let (code, out, err) = bob.exec("tools", &check);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "{b}:x:1000:1000::/home/{b}:/bin/sh\n{b}:*\nadm:x:4:{b}\nwheel:x:10:root,{b}\n\
             {b}:x:1000:\n1000 1000 755\nPS1=skel\n1000\n\
             uid=1000({b}) gid=1000({b}) groups=1000({b}),4(adm),10(wheel)\n{b}\nmark\n"
        )
    );
    bob.ok("boom", &["tools"]);

    // Inviting again under another name: the account exists, nothing is doubled.
    alice.ok("invite", &[b, "tools", "--as", "tools2"]);
    let again = bob.json("invite", &["accept", "tools2"]);
    assert_eq!(again["existed"], false, "alice's tools never had bob");
    bob.ok("invite", &[b, "tools", "--as", "tools3"]);
    let r2 = bob.json("invite", &["accept", "tools3"]);
    assert_eq!(
        (r2["existed"].as_bool(), r2["uid"].as_u64()),
        (Some(true), Some(1000))
    );
    bob.ok("spawn", &["tools3"]);
    let (_, out, _) = bob.exec("tools3", &format!("grep -c '{b}' /etc/passwd /etc/group"));
    assert_eq!(out, "/etc/passwd:1\n/etc/group:3\n");
    bob.ok("boom", &["tools3"]);

    // A name saved from a disk-backed env works the same.
    alice.ok("spawn", &["base", "--disk", "--as", "d"]);
    assert_eq!(alice.exec("d", "echo on-disk > /root/disk-mark; sync").0, 0);
    alice.ok("savedisk", &["d", "disky"]);
    alice.ok("boom", &["d"]);
    alice.ok("invite", &[b, "disky"]);
    let r = bob.json("invite", &["accept", "disky"]);
    assert_eq!(r["name"], "disky", "{r}");
    bob.ok("spawn", &["disky"]);
    let (_, out, _) = bob.exec(
        "disky",
        &format!("cat /root/disk-mark; su -s /bin/sh {b} -c 'cd; pwd'"),
    );
    assert_eq!(out, format!("on-disk\n/home/{b}\n"));
    bob.ok("boom", &["disky"]);
    assert_eq!(env_dirs(&site), Vec::<String>::new());
}

/// An invite leaves nothing until accepted, and nothing at all once refused; a second one to
/// the same name waits for the first; users named in `[invite] accept_from` invite at once.
#[test]
fn invites_wait_for_acceptance_unless_the_inviter_is_trusted() {
    let site = Site::new("invite-accept");
    let config = site.config(&format!("[invite]\naccept_from = [\"{}\"]\n", who("alice")));
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let (alice, bob) = (site.user("alice"), site.user("bob"));
    alice.login();
    bob.login();
    let a = alice.name.as_str();
    let before = names(&alice);

    let out = bob.ok("invite", &[a, "base", "--as", "frombob"]);
    assert!(out.contains("waiting for them to accept"), "{out}");
    let err = bob.refused("invite", &[a, "base", "--as", "frombob"]);
    assert!(err.contains("pending invite to a name frombob"), "{err}");
    let list = alice.ok("invite", &["list"]);
    assert!(
        list.starts_with(&format!("frombob from {}", bob.name)),
        "{list}"
    );
    let out = alice.ok("invite", &["refuse", "frombob"]);
    assert!(
        out.starts_with(&format!("refused {}'s invite to frombob", bob.name)),
        "{out}"
    );
    // Refused: no name bound, no invite left, nothing spawned; it can be sent again.
    assert_eq!(names(&alice), before);
    assert_eq!(
        alice.ok("invite", &["list"]),
        "no invites waiting for you\n"
    );
    assert_eq!(env_dirs(&site), Vec::<String>::new());
    let err = alice.refused("invite", &["refuse", "frombob"]);
    assert!(err.contains("no pending invite to a name frombob"), "{err}");
    let err = alice.refused("invite", &["accept", "frombob"]);
    assert!(err.contains("no pending invite to a name frombob"), "{err}");
    bob.ok("invite", &[a, "base", "--as", "frombob"]);
    // Accepting a name one has meanwhile is refused, keeping the invite.
    alice.ok("spawn", &["base"]);
    alice.ok("save", &["base", "frombob"]);
    alice.ok("boom", &["base"]);
    let err = alice.refused("invite", &["accept", "frombob"]);
    assert!(err.contains("you already have a name frombob"), "{err}");
    alice.ok("invite", &["refuse", "frombob"]);

    // alice is trusted: her invite is made at once.
    let r = alice.json("invite", &[&bob.name, "base", "--as", "direct"]);
    assert_eq!(r["pending"], false, "{r}");
    let direct = names(&bob).into_iter().find(|n| n.0 == "direct");
    assert_eq!(direct.map(|n| n.2), r["score"].as_str().map(String::from));
    assert!(bob.json("invite", &["list"]).as_array().unwrap().is_empty());
}

#[test]
fn shares_lend_a_name_until_unshared() {
    let site = Site::new("share");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    alice.login();
    bob.login();
    let (a, b) = (alice.name.as_str(), bob.name.as_str());
    let lent = format!("{a}/lent");
    alice.ok("spawn", &["base"]);
    assert_eq!(alice.exec("base", "echo hers > /root/f; sync").0, 0);
    alice.ok("save", &["base", "lent"]);
    alice.ok("boom", &["base"]);

    // Not shared: the same answer as a missing name.
    let err = bob.refused("spawn", &[&lent]);
    assert!(err.contains("has no name lent"), "{err}");
    assert!(bob
        .refused("spawn", &[&format!("{a}/missing")])
        .contains("has no name missing"));

    let out = alice.ok("share", &["lent", b]);
    assert_eq!(
        out,
        format!("shared lent with {b}: they spawn it as {lent}\n")
    );
    let out = alice.ok("share", &["lent", b]);
    assert!(out.contains("already shared"), "{out}");
    assert!(names(&bob).contains(&(
        "lent".to_string(),
        a.to_string(),
        names(&alice)
            .iter()
            .find(|n| n.0 == "lent")
            .unwrap()
            .2
            .clone()
    )));
    let table = bob.ok("scores", &[]);
    assert!(table.contains(&format!("{lent} ")), "{table}");
    // alice's own list does not change.
    assert!(names(&alice).iter().all(|n| n.1 == a));

    let out = bob.ok("spawn", &[&lent]);
    assert!(
        out.starts_with(&format!("spawned lent from {lent}")),
        "{out}"
    );
    assert_eq!(bob.exec("lent", "cat /root/f").1, "hers\n");
    bob.ok("boom", &["lent"]);

    // Only the owner shares: bob can neither pass it on nor take it back.
    let carol = who("carol");
    for cmd in ["share", "unshare"] {
        let err = bob.refused(cmd, &[&lent, &carol]);
        assert!(err.contains("not yours"), "{cmd}: {err}");
    }
    assert!(bob
        .refused("share", &["lent", a])
        .contains("has no name lent"));
    // Nor with someone who does not exist.
    assert!(alice
        .refused("share", &["lent", &carol])
        .contains(&format!("no user {carol}")));

    let out = alice.ok("unshare", &["lent", b]);
    assert_eq!(out, format!("stopped sharing lent with {b}\n"));
    assert!(bob.refused("spawn", &[&lent]).contains("has no name lent"));
    assert!(names(&bob).iter().all(|n| n.1 == b));
    assert!(alice.ok("unshare", &["lent", b]).contains("was not shared"));
}

/// An ed25519 key in `dir/name` ([`common::ssh::keygen`]): (public key file, its
/// `ssh-keygen -lf` fingerprint).
fn keygen(dir: &std::path::Path, name: &str) -> (String, String) {
    let path = common::ssh::keygen(dir, name, "ed25519");
    let pubkey = format!("{}.pub", path.display());
    let out = Command::new("ssh-keygen")
        .args(["-lf", &pubkey])
        .output()
        .unwrap();
    let fp = text(&out.stdout).split(' ').nth(1).unwrap().to_string();
    (pubkey, fp)
}

#[test]
fn passwords_keys_and_deletions() {
    let site = Site::new("users");
    let root = who("root");
    let carol = who("carol");
    add_user(&site, &root, true);
    add_user(&site, &carol, false);
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    let bob = site.user("bob");
    let admin = site.user("root");
    let carol_u = site.user("carol");
    for u in [&alice, &bob, &admin, &carol_u] {
        u.login();
    }
    let (a, b) = (alice.name.as_str(), bob.name.as_str());
    let login_with =
        |u: &User, pw: &str| u.sg("login", &["--password-stdin"], Some(&format!("{pw}\n")));

    // Offline passwd: the old token and password stop working, the new password logs in.
    site.admin(
        &[
            "user",
            "--data",
            site.data_str(),
            "passwd",
            a,
            "--password-stdin",
        ],
        Some("alice-new\n"),
    );
    assert!(alice.refused("status", &[]).contains("token not valid"));
    assert!(!login_with(&alice, &format!("{a}-pw")).status.success());
    assert!(login_with(&alice, "alice-new").status.success());
    alice.ok("status", &[]);

    // A user changes their own password with the current one.
    let out = bob.sg("passwd", &["--password-stdin"], Some("wrong\nbob-new\n"));
    assert!(
        text(&out.stderr).contains("current password is wrong"),
        "{}",
        text(&out.stderr)
    );
    bob.ok("status", &[]);
    let out = bob.sg(
        "passwd",
        &["--password-stdin"],
        Some(&format!("{b}-pw\nbob-new\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("log in again"));
    assert!(bob.refused("status", &[]).contains("token not valid"));
    assert!(login_with(&bob, "bob-new").status.success());
    // Only admins change someone else's.
    let out = bob.sg("passwd", &[a, "--password-stdin"], Some("x\n"));
    assert!(
        text(&out.stderr).contains("only admins"),
        "{}",
        text(&out.stderr)
    );
    let out = admin.sg("passwd", &[a, "--password-stdin"], Some("by-admin\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(login_with(&alice, "by-admin").status.success());

    // Keys: fingerprints as ssh-keygen prints them; each user manages their own.
    let (pub1, fp1) = keygen(site.scratch.path(), "k1");
    let (pub2, fp2) = keygen(site.scratch.path(), "k2");
    let out = bob.ok("key", &["add", &pub1]);
    assert_eq!(out, format!("added key {fp1} for {b}\n"));
    let line2 = std::fs::read_to_string(&pub2).unwrap();
    let out = bob.sg("key", &["add", "-"], Some(&line2));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(bob.refused("key", &["add", &pub1]).contains("already"));
    let garbage = site.scratch.join("garbage.pub");
    std::fs::write(&garbage, "ssh-ed25519 notakey\n").unwrap();
    assert!(bob
        .refused("key", &["add", garbage.to_str().unwrap()])
        .contains("invalid SSH public key"));
    let keys = bob.json("key", &["ls"]);
    let fps: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps, [fp1.as_str(), fp2.as_str()]);
    assert_eq!(
        keys[0]["line"].as_str().unwrap(),
        std::fs::read_to_string(&pub1).unwrap().trim()
    );
    let table = site.admin(&["user", "--data", site.data_str(), "key", b, "ls"], None);
    assert!(
        table.contains(&fp1) && table.contains(&fp2) && table.contains("k2"),
        "{table}"
    );
    assert!(alice
        .refused("key", &["--of", b, "ls"])
        .contains("only admins"));
    assert_eq!(admin.json("key", &["--of", b, "ls"]), keys);
    bob.ok("key", &["rm", &fp1]);
    bob.ok("key", &["rm", "k2"]);
    assert!(bob.refused("key", &["rm", "k2"]).contains("no key k2"));
    assert_eq!(bob.json("key", &["ls"]), serde_json::json!([]));
    // Offline: add, list, remove.
    let out = site.admin(
        &["user", "--data", site.data_str(), "key", a, "add", &pub2],
        None,
    );
    assert_eq!(out, format!("added key {fp2} for {a}\n"));
    let listed = alice.json("key", &["ls"]);
    assert_eq!(listed[0]["fingerprint"].as_str(), Some(fp2.as_str()));
    site.admin(
        &["user", "--data", site.data_str(), "key", a, "rm", &fp2],
        None,
    );
    assert_eq!(alice.json("key", &["ls"]), serde_json::json!([]));

    // Deletion: refused while the user has envs; then tokens are revoked (401), names stay.
    carol_u.ok("status", &[]);
    let carol_token = carol_u.token();
    bob.ok("spawn", &["base"]);
    let out = run(
        Command::new(common::bin()).args(["user", "--data", site.data_str(), "del", b]),
        None,
    );
    assert!(
        text(&out.stderr).contains("still has envs"),
        "{}",
        text(&out.stderr)
    );
    bob.ok("boom", &["base"]);
    let auth = |t: &str| format!(r#"{{"Authorization": "Bearer {t}"}}"#);
    let (status, body) = site.raw(
        "DELETE",
        &format!("/api/users/{carol}"),
        &auth(&bob.token()),
        b"",
        false,
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = site.raw(
        "DELETE",
        &format!("/api/users/{carol}"),
        &auth(&admin.token()),
        b"",
        false,
    );
    assert_eq!(
        (status, body.as_str()),
        (200, format!(r#"{{"user":"{carol}"}}"#).as_str())
    );
    let (status, body) = site.raw("GET", "/api/envs", &auth(&carol_token), b"", false);
    assert_eq!(status, 401, "{body}");
    assert!(!login_with(&carol_u, &format!("{carol}-pw"))
        .status
        .success());
    site.admin(&["user", "--data", site.data_str(), "del", b], None);
    assert!(bob.refused("status", &[]).contains("token not valid"));
    // Names are forever: a deleted user's name is never given to someone new.
    let out = run(
        Command::new(common::bin()).args([
            "user",
            "--data",
            site.data_str(),
            "add",
            b,
            "--password-stdin",
        ]),
        Some("x\n"),
    );
    assert!(
        text(&out.stderr).contains("never reused"),
        "{}",
        text(&out.stderr)
    );
}

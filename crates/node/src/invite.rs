//! `invite USER NAME`: gives USER their own copy of NAME with an account for them inside.
//!
//! USER must accept it: the invite waits in the catalog (`catalog::invites`: the snapshot,
//! the new name, the inviter) until USER accepts (`POST /api/invites/{name}/accept`, which
//! makes the copy as below) or refuses it (`DELETE /api/invites/{name}`: the row goes, nothing
//! was made or bound); `GET /api/invites` lists them. Only invites from users the node's
//! `[invite] accept_from` names (or all, with `"*"`) are accepted at once.
//!
//! To make the copy, the node spawns NAME (the inviter's, or `OWNER/NAME` shared with them) as a private
//! temporary env, runs [`ADD_USER`] in it (a POSIX `sh` script, so busybox roots work too: no
//! `useradd` needed) to add USER to `/etc/passwd`, `/etc/shadow` (password `*`: they log in
//! with the node's password or keys, never the env's), `/etc/group` and `/etc/gshadow` (a
//! group of their own, and membership of `sys`, `adm`, `sudo` and `wheel` where those exist)
//! and make `/home/USER` (mode 0755, theirs, a copy of `/etc/skel` when there is one), saves
//! it as USER's name (the same name, or `as`), and booms the temporary env whatever happened.
//! If the name's system has USER already, their entry (uid, home, shell) is kept and only the
//! groups and a missing home are added.
//!
//! The temporary env is the runtime env `invite-N+PAYER` owned by `PAYER+invite` (the
//! inviter for an invite accepted at once, else the user accepting): user
//! names cannot contain `+`, so no user owns it, lists it, attaches to it or booms it. It does
//! not count against the node's capacity (it lives for one invite); one left behind by a
//! daemon that died mid-invite is boomed when the node starts ([`sweep`]).

use crate::error::{Error, Kind};
use crate::http::{blocking, ok, AuthUser, JsonBody};
use crate::{envs, snapshots, Node};
use api::{InviteRequest, InviteResponse};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use runtime::cgroup::Limits;
use runtime::{EnvState, SpawnOptions};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the owner of a temporary invite env ends with (after the inviter's name).
pub const OWNER_MARK: &str = "+invite";

/// The script run as root inside the temporary env with the user name as `$1`. It prints
/// `UID GID EXISTED [GROUP...]` on its last line.
pub const ADD_USER: &str = r#"set -eu
user=$1
umask 022
fail() { echo "$*" >&2; exit 1; }
# Appends a newline to file $1 if its last line has none.
end_line() {
    if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo >> "$1"; fi
}
# Adds $user to the member list (the last field) of group $2 in file $1; fails if no such group.
add_member() {
    found=1
    tmp="$1.spawngrid-invite"
    : > "$tmp"
    while IFS= read -r line || [ -n "$line" ]; do
        if [ "${line%%:*}" = "$2" ]; then
            found=0
            case ",${line##*:}," in
                *",$user,"*) ;;
                ,,) line="$line$user" ;;
                *) line="$line,$user" ;;
            esac
        fi
        printf '%s\n' "$line" >> "$tmp"
    done < "$1"
    cat "$tmp" > "$1"
    rm -f "$tmp"
    return $found
}
for f in /etc/passwd /etc/group; do
    if [ ! -e "$f" ]; then : > "$f"; fi
    end_line "$f"
done
for f in /etc/shadow /etc/gshadow; do
    if [ -e "$f" ]; then end_line "$f"; fi
done
uid= gid= home= existed=0
while IFS=: read -r n _ u g _ h _ || [ -n "$n" ]; do
    if [ "$n" = "$user" ]; then uid=$u gid=$g home=$h existed=1; fi
done < /etc/passwd
if [ $existed = 0 ]; then
    # The first id from 1000 above every uid and gid in use below 60000.
    next=1000
    for f in /etc/passwd /etc/group; do
        while IFS=: read -r _ _ id _ || [ -n "$id" ]; do
            case $id in ''|*[!0-9]*) continue ;; esac
            if [ "$id" -ge "$next" ] && [ "$id" -lt 60000 ]; then next=$((id + 1)); fi
        done < "$f"
    done
    [ "$next" -lt 60000 ] || fail "no free uid below 60000"
    uid=$next gid=
    while IFS=: read -r n _ g _ || [ -n "$n" ]; do
        if [ "$n" = "$user" ]; then gid=$g; fi
    done < /etc/group
    if [ -z "$gid" ]; then
        gid=$next
        echo "$user:x:$gid:" >> /etc/group
        if [ -e /etc/gshadow ]; then echo "$user:!::" >> /etc/gshadow; fi
    fi
    shell=/bin/sh
    if [ -x /bin/bash ]; then shell=/bin/bash; fi
    home=/home/$user
    pw='*'
    if [ -e /etc/shadow ]; then
        pw=x
        echo "$user:*:$(($(date +%s) / 86400)):0:99999:7:::" >> /etc/shadow
    fi
    echo "$user:$pw:$uid:$gid::$home:$shell" >> /etc/passwd
fi
groups=
for g in sys adm sudo wheel; do
    if add_member /etc/group "$g"; then
        groups="$groups $g"
        if [ -e /etc/gshadow ]; then add_member /etc/gshadow "$g" || true; fi
    fi
done
if [ -n "$home" ] && [ ! -e "$home" ]; then
    mkdir -p "${home%/*}"
    mkdir "$home"
    if [ -d /etc/skel ]; then cp -a /etc/skel/. "$home/"; fi
    chown -R "$uid:$gid" "$home"
    chmod 0755 "$home"
fi
sync
echo "$uid $gid $existed$groups"
"#;

/// The `[invite]` table of the node's configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InviteConfig {
    /// Users whose invites are accepted at once, without asking the invited user (`"*"`:
    /// everyone's). Default: none; every invite waits to be accepted.
    pub accept_from: Vec<String>,
}

impl InviteConfig {
    /// Whether `inviter`'s invites are accepted at once.
    pub fn trusts(&self, inviter: &str) -> bool {
        self.accept_from.iter().any(|u| u == "*" || u == inviter)
    }
}

/// `POST /api/invite`.
#[utoipa::path(
    post,
    path = api::routes::INVITE,
    summary = "invite a user to a copy of a name",
    description = "Unless the node's [invite] accept_from lets the caller's invites in at once, \
        the invite waits (pending: true) for the user to accept or refuse it. Accepting spawns the \
        name privately, adds the user to its /etc/passwd, /etc/shadow, /etc/group (sys, adm, sudo, \
        wheel where they exist) with a home, saves it and binds the result to the user; the \
        temporary env is always boomed.",
    request_body = api::InviteRequest,
    responses(
        (status = 200, description = "invited", body = api::InviteResponse),
        (status = 404, description = "no such user, or the caller has no such name"),
        (status = 409, description = "the user already has the new name (choose another with as)"),
        (status = 422, description = "the name's system could not take the user (no POSIX sh and \
            tools)"),
    ),
)]
pub async fn invite(
    State(node): State<Arc<Node>>,
    AuthUser(inviter): AuthUser,
    JsonBody(req): JsonBody<InviteRequest>,
) -> Result<Response, Error> {
    let resp = blocking(move || {
        let r = run(&node, &inviter, &req)?;
        tracing::info!(user = %inviter, invited = %r.user, from = %req.name, name = %r.name,
            pending = r.pending, score = %r.score, "invited");
        Ok(r)
    })
    .await?;
    Ok(ok(&resp))
}

/// `GET /api/invites`: the caller's pending invites.
#[utoipa::path(
    get,
    path = api::routes::INVITES,
    summary = "the caller's pending invites, by name",
    responses((status = 200, description = "pending invites", body = [api::PendingInvite])),
)]
pub async fn pending(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
) -> Result<Response, Error> {
    let list = blocking(move || Ok(node.cat.invites_for(&user)?)).await?;
    Ok(ok(&list.iter().map(shown).collect::<Vec<_>>()))
}

/// `DELETE /api/invites/{name}`: refuses a pending invite (its row goes; nothing was made).
#[utoipa::path(
    delete,
    path = api::routes::PENDING,
    params(api::openapi::InvitePath),
    summary = "refuse a pending invite: it is dropped and nothing is kept",
    responses(
        (status = 200, description = "refused", body = api::PendingInvite),
        (status = 404, description = "no pending invite to that name"),
    ),
)]
pub async fn refuse(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let name = name_param(name)?;
    let resp = blocking(move || {
        let invite = pending_invite(&node, &user, &name)?;
        node.cat.drop_invite(&user, &name)?;
        tracing::info!(user = %user, name = %name, inviter = %invite.inviter, "invite refused");
        Ok(shown(&invite))
    })
    .await?;
    Ok(ok(&resp))
}

/// `POST /api/invites/{name}/accept`: makes the invite's copy, binds it, drops the invite.
#[utoipa::path(
    post,
    path = api::routes::ACCEPT,
    params(api::openapi::InvitePath),
    summary = "accept a pending invite: the copy is made and bound to the caller as the name",
    responses(
        (status = 200, description = "accepted", body = api::InviteResponse),
        (status = 404, description = "no pending invite to that name, or its snapshot is gone"),
        (status = 409, description = "the caller has the name already (refuse the invite)"),
        (status = 422, description = "the name's system could not take the user (no POSIX sh and \
            tools)"),
    ),
)]
pub async fn accept(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let name = name_param(name)?;
    let resp = blocking(move || {
        let invite = pending_invite(&node, &user, &name)?;
        if node.cat.resolve(&user, &name).is_ok() {
            return Err(Error::conflict(format!(
                "you already have a name {name}: refuse this invite (`spawngrid invite refuse \
                 {name}`)"
            )));
        }
        let r = copy(&node, &user, &user, invite.score, &name)?;
        node.cat.drop_invite(&user, &name)?;
        tracing::info!(user = %user, name = %name, inviter = %invite.inviter, score = %r.score,
            "invite accepted");
        Ok(r)
    })
    .await?;
    Ok(ok(&resp))
}

/// The path's name, or 400.
fn name_param(p: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    let name = p
        .map(|Path(n)| n)
        .map_err(|e| Error::invalid(format!("bad name in the path: {e}")))?;
    catalog::check_name(&name).map_err(|e| Error::invalid(format!("bad name: {e}")))?;
    Ok(name)
}

/// `user`'s pending invite to `name`, or 404.
fn pending_invite(node: &Node, user: &str, name: &str) -> Result<catalog::Invite, Error> {
    node.cat.invite(user, name)?.ok_or_else(|| {
        Error::not_found(format!(
            "you have no pending invite to a name {name} (list them with `spawngrid invite list`)"
        ))
    })
}

/// What the API shows of a pending invite.
fn shown(i: &catalog::Invite) -> api::PendingInvite {
    api::PendingInvite {
        name: i.name.clone(),
        inviter: i.inviter.clone(),
        from: i.source.clone(),
        created: i.created.max(0) as u64,
    }
}

/// Invites `req.user` to `inviter`'s name `req.name` (see the module documentation): at once
/// when the node's `[invite] accept_from` trusts the inviter, else as a pending invite.
pub fn run(node: &Node, inviter: &str, req: &InviteRequest) -> Result<InviteResponse, Error> {
    let start = Instant::now();
    let base = snapshots::check_address(inviter, &req.name)?;
    let target = req.as_name.as_deref().unwrap_or(base);
    catalog::check_name(target).map_err(|e| Error::invalid(format!("bad new name: {e}")))?;
    catalog::check_owner(&req.user).map_err(|e| Error::invalid(format!("bad user: {e}")))?;
    // `/etc/passwd` and `/etc/group` are `:`-separated, and an all-digit name reads as an id.
    if req.user.contains(':') || req.user.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!(
            "user name {} cannot be an account in a Unix system (it has a ':' or is all digits)",
            req.user
        )));
    }
    if node.cat.user(&req.user)?.is_none() {
        return Err(Error::not_found(format!(
            "no user {} on this node (an admin adds users with `spawngrid user add`)",
            req.user
        )));
    }
    if node.cat.resolve(&req.user, target).is_ok() {
        return Err(Error::conflict(format!(
            "{} already has a name {target} (names are bound once, forever): invite with \
             --as ANOTHER",
            req.user
        )));
    }
    let score = snapshots::resolve(&node.cat, inviter, &req.name, false)?;
    if node.config.invite.trusts(inviter) {
        return copy(node, inviter, &req.user, score, target);
    }
    node.cat
        .add_invite(&req.user, target, inviter, &req.name, score)?;
    Ok(InviteResponse {
        user: req.user.clone(),
        name: target.to_string(),
        score: String::new(),
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        existed: false,
        seconds: start.elapsed().as_secs_f64(),
        pending: true,
    })
}

/// Makes `user`'s copy of `score` with an account for them as their name `target`, in a
/// temporary env counted as `payer`'s.
fn copy(
    node: &Node,
    payer: &str,
    user: &str,
    score: library::Score,
    target: &str,
) -> Result<InviteResponse, Error> {
    let start = Instant::now();
    let (st, _busy) = spawn_private(node, payer, score, target)?;
    let result = add_and_save(node, &st, user, target);
    if let Err(e) = envs::boom(node, &st) {
        tracing::error!(env = %st.name, "booming the invite's temporary env: {}", e.message);
    }
    let (account, score) = result?;
    Ok(InviteResponse {
        user: user.to_string(),
        name: target.to_string(),
        score,
        uid: account.uid,
        gid: account.gid,
        groups: account.groups,
        existed: account.existed,
        seconds: start.elapsed().as_secs_f64(),
        pending: false,
    })
}

/// Spawns `score` as a temporary env no user can reach (see the module documentation). It
/// counts against the inviter's capacity, and is busy (never evicted) while the session
/// returned with it lives.
fn spawn_private(
    node: &Node,
    inviter: &str,
    score: library::Score,
    hostname: &str,
) -> Result<(EnvState, crate::capacity::Session), Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let id = envs::env_id(
        inviter,
        &format!(
            "invite-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
    );
    let lower = snapshots::mount_for(node, score)?;
    let owner = format!("{inviter}{OWNER_MARK}");
    let mut opts = SpawnOptions::new(&id, &owner, &lower);
    opts.hostname = Some(hostname.to_string());
    opts.snapshot = Some(score);
    opts.lower_shifted = true;
    opts.limits = Limits {
        memory: node.config.default_mem_bytes(),
        ..Limits::default()
    };
    let busy = node.activity.session(&id);
    let st = envs::spawn_admitted(node, inviter, &opts, || ())?
        .0
        .map_err(|e| Error::internal(&e.context("spawning the invite's temporary env")))?;
    Ok((st, busy))
}

/// The invited user's account inside, as [`ADD_USER`] reported it.
#[derive(Debug, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
    existed: bool,
    groups: Vec<String>,
}

/// Parses [`ADD_USER`]'s last line: `UID GID EXISTED [GROUP...]`.
fn parse_account(stdout: &str) -> Option<Account> {
    let mut words = stdout.lines().last()?.split_whitespace();
    Some(Account {
        uid: words.next()?.parse().ok()?,
        gid: words.next()?.parse().ok()?,
        existed: words.next()? == "1",
        groups: words.map(String::from).collect(),
    })
}

/// Adds `user` inside the env and saves it as their name `target`; the score saved.
fn add_and_save(
    node: &Node,
    st: &EnvState,
    user: &str,
    target: &str,
) -> Result<(Account, String), Error> {
    let argv = ["/bin/sh", "-s", "--", user].map(String::from);
    let out = crate::exec::run_blocking(&node.rt, st, &argv, Some(ADD_USER.as_bytes().to_vec()))?;
    let text = |b64: &str| {
        String::from_utf8_lossy(&api::b64::decode(b64).unwrap_or_default()).into_owned()
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let account = match parse_account(&stdout) {
        Some(a) if out.exit_code == 0 => a,
        _ => {
            return Err(Error::new(
                Kind::Unprocessable,
                format!(
                    "adding {user} inside {target} failed (exit {}): {} (the name needs a \
                     POSIX sh at /bin/sh with cat, tail, mkdir, cp, chown, chmod and date)",
                    out.exit_code,
                    stderr.trim().lines().last().unwrap_or("no message")
                ),
            ))
        }
    };
    let saved = envs::save(node, user, st, target)?;
    Ok((account, saved.score))
}

/// Booms temporary invite envs left behind by a node that stopped mid-invite.
pub fn sweep(node: &Node) {
    let Ok(list) = runtime::state::list(&node.rt) else {
        return;
    };
    for st in list.iter().filter(|st| st.owner.ends_with(OWNER_MARK)) {
        match envs::boom(node, st) {
            Ok(()) => tracing::info!(env = %st.name, "boomed a leftover invite env"),
            Err(e) => {
                tracing::warn!(env = %st.name, "booming a leftover invite env: {}", e.message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_script_reports_its_account_on_the_last_line() {
        assert_eq!(
            parse_account("noise\n1000 1001 0 adm sudo\n"),
            Some(Account {
                uid: 1000,
                gid: 1001,
                existed: false,
                groups: vec!["adm".into(), "sudo".into()],
            })
        );
        assert_eq!(parse_account("1000 1000 1\n").unwrap().groups.len(), 0);
        assert_eq!(parse_account(""), None);
        assert_eq!(parse_account("x 1 0"), None);
    }

    /// The script on a scratch root through the host's sh (chroot-free: paths rewritten).
    #[test]
    fn the_script_adds_a_user_once_and_keeps_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let etc = root.join("etc");
        std::fs::create_dir_all(etc.join("skel")).unwrap();
        std::fs::write(etc.join("skel/.profile"), "PS1=x\n").unwrap();
        std::fs::write(
            etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\nold:x:1000:1000::{}/old:/bin/sh\n\
                 nobody:x:65534:65534::/:/bin/false",
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nadm:x:4:old\nsudo:x:27:\nold:x:1000:\nstaff:x:1500:\n",
        )
        .unwrap();
        std::fs::write(etc.join("shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        let script = ADD_USER
            .replace("/etc/", &format!("{}/etc/", root.display()))
            .replace(
                "home=/home/$user",
                &format!("home={}/home/$user", root.display()),
            );
        let run = |user: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", &script, "sh", user])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            parse_account(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        let bob = run("bob");
        assert_eq!(
            bob,
            Account {
                uid: 1501,
                gid: 1501,
                existed: false,
                groups: vec!["adm".into(), "sudo".into()],
            }
        );
        let read = |f: &str| std::fs::read_to_string(etc.join(f)).unwrap();
        let home = root.join("home/bob");
        assert!(read("passwd").ends_with(&format!(
            "/bin/false\nbob:x:1501:1501::{}:/bin/{}\n",
            home.display(),
            if Path::new("/bin/bash").exists() {
                "bash"
            } else {
                "sh"
            }
        )));
        assert_eq!(
            read("group"),
            "root:x:0:\nadm:x:4:old,bob\nsudo:x:27:bob\nold:x:1000:\nstaff:x:1500:\nbob:x:1501:\n"
        );
        assert!(read("shadow").contains("\nbob:*:"), "{}", read("shadow"));
        assert_eq!(
            std::fs::read_to_string(home.join(".profile")).unwrap(),
            "PS1=x\n"
        );
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&home).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (1501, 1501, 0o755)
        );
        // Again: the entry is kept, nothing is doubled.
        let again = run("bob");
        assert_eq!((again.uid, again.existed), (1501, true));
        assert_eq!(read("group").matches("bob").count(), 3);
        let entries = |f: &str| read(f).lines().filter(|l| l.starts_with("bob:")).count();
        assert_eq!((entries("passwd"), entries("shadow")), (1, 1));
        // An existing user of the system keeps uid and home.
        let old = run("old");
        assert_eq!((old.uid, old.gid, old.existed), (1000, 1000, true));
        assert!(read("group").contains("sudo:x:27:bob,old\n"));
    }
}

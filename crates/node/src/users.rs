//! User management over the API: a logged-in user changes their own password (giving the
//! current one) and manages their own SSH public keys; an admin does the same for anyone and
//! deletes users. A non-admin naming another user gets 403. The offline `spawngrid user ...`
//! commands do the same on the node's data directory.

use crate::error::{Error, Kind};
use crate::http::{blocking, ok, AuthUser, JsonBody};
use crate::Node;
use api::{KeyEntry, KeyRequest, PasswordRequest, UserResponse};
use axum::extract::{Path, State};
use axum::response::Response;
use std::sync::Arc;

/// A path's `{user}` (and `{key}`), or 400.
type PathArgs<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

fn path_arg<T>(p: PathArgs<T>) -> Result<T, Error> {
    p.map(|Path(v)| v)
        .map_err(|e| Error::invalid(format!("bad path: {e}")))
}

/// Whether `caller` is an admin.
fn is_admin(node: &Node, caller: &str) -> Result<bool, Error> {
    Ok(node.cat.user(caller)?.is_some_and(|u| u.admin))
}

/// Checks that `caller` may manage user `target` (themselves, or anyone if an admin) and
/// that `target` exists (404 otherwise).
fn check_may_manage(node: &Node, caller: &str, target: &str) -> Result<(), Error> {
    if caller != target && !is_admin(node, caller)? {
        return Err(Error::new(
            Kind::Forbidden,
            format!("only admins manage other users (you are {caller})"),
        ));
    }
    if node.cat.user(target)?.is_none() {
        return Err(catalog::Error::NoUser {
            name: target.into(),
        }
        .into());
    }
    Ok(())
}

/// A catalog error, with the conflicts this module adds (a key registered twice, a deleted
/// user) answered 409 rather than 500.
fn conflict_or(e: catalog::Error) -> Error {
    match e {
        catalog::Error::KeyExists { .. } | catalog::Error::UserDeleted { .. } => {
            Error::conflict(e.to_string())
        }
        e => e.into(),
    }
}

/// `POST /api/users/{user}/password`: sets the password; every token of the user is revoked
/// (the caller's too, when it is their own: they log in again).
#[utoipa::path(
    post,
    path = api::routes::PASSWORD,
    params(api::openapi::UserPath),
    summary = "set a user's password (your own with the current one, or anyone's for admins); \
        every token of the user is revoked",
    request_body = api::PasswordRequest,
    responses(
        (status = 200, description = "changed; log in again", body = api::UserResponse),
        (status = 403, description = "only admins manage other users; or the current password is \
            wrong"),
        (status = 404, description = "no such user"),
        (status = 429, description = "too many wrong current passwords: try again later"),
    ),
)]
pub async fn password(
    State(node): State<Arc<Node>>,
    AuthUser(caller): AuthUser,
    user: PathArgs<String>,
    JsonBody(req): JsonBody<PasswordRequest>,
) -> Result<Response, Error> {
    let user = path_arg(user)?;
    let resp = blocking(move || {
        check_may_manage(&node, &caller, &user)?;
        if caller == user {
            // Guessing the current password with a stolen token is slowed down like logins.
            if let Some(left) = node.backoff.locked(&user) {
                return Err(Error::new(
                    Kind::TooMany,
                    format!(
                        "too many wrong passwords for {user}: try again in {} s",
                        left.as_secs().max(1)
                    ),
                ));
            }
            let current = req.current.as_deref().unwrap_or("");
            if !node.cat.check_password(&user, current)? {
                node.backoff.failed(&user);
                tracing::warn!(user = %user, "password change refused: wrong current password");
                return Err(Error::new(
                    Kind::Forbidden,
                    "the current password is wrong (changing your own password needs it)",
                ));
            }
            node.backoff.succeeded(&user);
        }
        node.cat.set_password(&user, &req.password)?;
        tracing::info!(user = %user, by = %caller, "password changed");
        Ok(UserResponse { user })
    })
    .await?;
    Ok(ok(&resp))
}

/// `DELETE /api/users/{user}` (admins): deletes a user with no envs on this node.
#[utoipa::path(
    delete,
    path = api::routes::USER,
    operation_id = "delete_user",
    params(api::openapi::UserPath),
    summary = "delete a user (admins): their tokens, keys and shares to them go; their names stay \
        theirs; refused while they have envs on this node; the user name is never reused",
    responses(
        (status = 200, description = "deleted", body = api::UserResponse),
        (status = 403, description = "only admins manage other users"),
        (status = 404, description = "no such user"),
        (status = 409, description = "the user still has envs, or is the caller"),
    ),
)]
pub async fn delete(
    State(node): State<Arc<Node>>,
    AuthUser(caller): AuthUser,
    user: PathArgs<String>,
) -> Result<Response, Error> {
    let user = path_arg(user)?;
    let resp = blocking(move || {
        if !is_admin(&node, &caller)? {
            return Err(Error::new(
                Kind::Forbidden,
                format!("only admins delete users (you are {caller})"),
            ));
        }
        if caller == user {
            return Err(Error::conflict(
                "you cannot delete yourself (another admin can)",
            ));
        }
        check_may_manage(&node, &caller, &user)?;
        delete_user(&node.rt, &node.cat, &user).map_err(|e| {
            match e.downcast::<catalog::Error>() {
                Ok(c) => conflict_or(c),
                Err(e) => Error::conflict(format!("{e:#}")),
            }
        })?;
        tracing::info!(user = %user, by = %caller, "user deleted");
        Ok(UserResponse { user })
    })
    .await?;
    Ok(ok(&resp))
}

/// Deletes user `user` from the catalog, refusing while they have envs on this node (their
/// envs would be left running with no one able to reach them). Shared by the API and the
/// offline `spawngrid user del`.
pub fn delete_user(
    rt: &runtime::Runtime,
    cat: &catalog::Catalog,
    user: &str,
) -> anyhow::Result<()> {
    let envs: Vec<String> = runtime::state::list(rt)?
        .into_iter()
        .filter(|st| st.owner == user)
        .map(|st| st.name)
        .collect();
    if !envs.is_empty() {
        anyhow::bail!(
            "user {user} still has envs on this node ({}): they boom them, or an admin runs \
             `spawngrid env boom ENV+{user}` for each; then delete the user",
            envs.join(", ")
        );
    }
    cat.delete_user(user)?;
    Ok(())
}

/// `GET /api/users/{user}/keys`: the user's SSH public keys.
#[utoipa::path(
    get,
    path = api::routes::KEYS,
    params(api::openapi::UserPath),
    summary = "a user's SSH public keys",
    responses(
        (status = 200, description = "the keys, oldest first", body = [api::KeyEntry]),
        (status = 403, description = "only admins manage other users"),
        (status = 404, description = "no such user"),
    ),
)]
pub async fn keys(
    State(node): State<Arc<Node>>,
    AuthUser(caller): AuthUser,
    user: PathArgs<String>,
) -> Result<Response, Error> {
    let user = path_arg(user)?;
    let list = blocking(move || {
        check_may_manage(&node, &caller, &user)?;
        Ok(node
            .cat
            .keys(&user)?
            .into_iter()
            .map(key_entry)
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(ok(&list))
}

/// `POST /api/users/{user}/keys`: registers an SSH public key.
#[utoipa::path(
    post,
    path = api::routes::KEYS,
    params(api::openapi::UserPath),
    summary = "register an SSH public key for a user",
    request_body = api::KeyRequest,
    responses(
        (status = 200, description = "added", body = api::KeyEntry),
        (status = 403, description = "only admins manage other users"),
        (status = 404, description = "no such user"),
        (status = 409, description = "the user has this key already"),
    ),
)]
pub async fn add_key(
    State(node): State<Arc<Node>>,
    AuthUser(caller): AuthUser,
    user: PathArgs<String>,
    JsonBody(req): JsonBody<KeyRequest>,
) -> Result<Response, Error> {
    let user = path_arg(user)?;
    let entry = blocking(move || {
        check_may_manage(&node, &caller, &user)?;
        let key = node.cat.add_key(&user, &req.line).map_err(conflict_or)?;
        tracing::info!(user = %user, by = %caller, fingerprint = %key.fingerprint, "key added");
        Ok(key_entry(key))
    })
    .await?;
    Ok(ok(&entry))
}

/// `DELETE /api/users/{user}/keys/{key}`: removes the keys whose fingerprint or comment is
/// `{key}`; 404 if none is.
#[utoipa::path(
    delete,
    path = api::routes::KEY,
    params(api::openapi::KeyPath),
    summary = "remove a user's keys whose fingerprint or comment is key",
    responses(
        (status = 200, description = "removed", body = api::UserResponse),
        (status = 403, description = "only admins manage other users"),
        (status = 404, description = "no such user or key"),
    ),
)]
pub async fn remove_key(
    State(node): State<Arc<Node>>,
    AuthUser(caller): AuthUser,
    args: PathArgs<(String, String)>,
) -> Result<Response, Error> {
    let (user, key) = path_arg(args)?;
    let resp = blocking(move || {
        check_may_manage(&node, &caller, &user)?;
        if !node.cat.remove_key(&user, &key)? {
            return Err(Error::not_found(format!(
                "{user} has no key {key} (list them with `spawngrid key ls`)"
            )));
        }
        tracing::info!(user = %user, by = %caller, key = %key, "key removed");
        Ok(UserResponse { user })
    })
    .await?;
    Ok(ok(&resp))
}

/// What the API shows of a key.
pub fn key_entry(k: catalog::Key) -> KeyEntry {
    KeyEntry {
        fingerprint: k.fingerprint,
        line: k.line,
        added: k.added.max(0) as u64,
    }
}

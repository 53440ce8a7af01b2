//! Spawning at login: `ssh -p 16999 ENV=NAME+USER@HOST` spawns the user's env ENV from NAME
//! (one of their names, or `OWNER/NAME` shared with them) on this node unless they have it
//! already, then serves the connection's channels in it, as `ENV+USER` would. One connection
//! from nothing to a shell: no `spawngrid spawn` before it, and the spawn starts as soon as
//! the login is accepted, while the client is still opening its channel.
//!
//! Once per connection: every channel and forward of the connection waits for the same spawn
//! (so a second channel never spawns twice); an env that already exists, or that another
//! connection spawned meanwhile, is simply entered. A refused spawn (no such name, no room)
//! is the one line each channel ends with.

use crate::Node;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The spawn a login asked for: from which name, and its outcome once known.
#[derive(Clone, Debug)]
pub struct SpawnAtLogin {
    /// The name to spawn from, as the user wrote it (`NAME` or `OWNER/NAME`).
    pub name: String,
    /// `Ok` once the env exists; `Err` the line for the client.
    outcome: Arc<OnceCell<Result<(), String>>>,
}

impl SpawnAtLogin {
    /// A spawn from `name`, not started.
    pub fn new(name: &str) -> SpawnAtLogin {
        SpawnAtLogin {
            name: name.to_string(),
            outcome: Arc::default(),
        }
    }

    /// Starts the spawn of `user`'s `env` in the background (at login).
    pub fn start(&self, node: &Arc<Node>, user: &str, env: &str) {
        let (this, node, user, env) = (
            self.clone(),
            node.clone(),
            user.to_string(),
            env.to_string(),
        );
        tokio::spawn(async move { this.wait(&node, &user, &env).await });
    }

    /// Waits until `user`'s `env` exists, spawning it if this is the first to ask; an error
    /// is the one line for the client.
    pub async fn wait(&self, node: &Arc<Node>, user: &str, env: &str) -> Result<(), String> {
        let init = || {
            let (node, user, env, name) = (
                node.clone(),
                user.to_string(),
                env.to_string(),
                self.name.clone(),
            );
            async move {
                tokio::task::spawn_blocking(move || ensure(&node, &user, &env, &name))
                    .await
                    .unwrap_or_else(|e| Err(format!("spawngrid: internal error: {e}")))
            }
        };
        self.outcome.get_or_init(init).await.clone()
    }
}

/// Spawns `user`'s `env` from `name` unless they have it on this node already. A spawn of
/// the same env being made (by another connection, or the API) is waited for, never entered
/// half-made.
fn ensure(node: &Node, user: &str, env: &str, name: &str) -> Result<(), String> {
    let id = crate::envs::env_id(user, env);
    node.admission.wait_made(&id);
    // Here already? Only this node's state is read: the spawn asks the catalog whether the
    // env is on another node (`envs::load_own` would ask it first, a query more per spawn).
    if matches!(runtime::state::load(&node.rt, &id), Ok(st) if st.owner == user) {
        return Ok(());
    }
    let req = api::SpawnRequest {
        name: name.to_string(),
        as_env: Some(env.to_string()),
        ..api::SpawnRequest::default()
    };
    match crate::envs::spawn(node, user, &req) {
        Ok(st) => {
            tracing::info!(user = %user, env = %st.name, from = %name, "spawned (ssh login)");
            Ok(())
        }
        // Spawned meanwhile by another connection of the user's: enter it once made.
        Err(e) => {
            node.admission.wait_made(&id);
            match crate::envs::load_own(node, user, env) {
                Ok(_) => Ok(()),
                Err(_) => Err(format!("spawngrid: {}", e.message)),
            }
        }
    }
}

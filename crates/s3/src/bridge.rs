//! Blocking calls on async code: the backend's own small tokio runtime. Each call runs as a
//! task on it and the caller waits on a channel, so the backend works from plain threads and
//! from threads of another runtime (its tasks or its blocking pool) alike: nothing here calls
//! `block_on`, which panics inside a runtime.

use std::future::Future;
use tokio::runtime::{Builder, Handle, Runtime};

/// A two-thread runtime that is shut down without waiting when dropped (dropping a runtime
/// the ordinary way panics on a thread of another runtime).
pub(crate) struct Bridge {
    rt: Option<Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> std::io::Result<Bridge> {
        let rt = Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spawngrid-s3")
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Bridge { rt: Some(rt) })
    }

    fn runtime(&self) -> &Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives until the bridge is dropped")
    }

    /// The runtime's handle (to build clients in its context).
    pub(crate) fn handle(&self) -> &Handle {
        self.runtime().handle()
    }

    /// Runs `fut` on the runtime and waits for its output; `None` if the task panicked.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

//! The shutdown signal every long-running task watches: a `watch` channel that turns `true` once.
//! Kept below both the server and the background services so neither imports the other.

use tokio::sync::watch;

/// Resolves when `shutdown` turns true (or its sender is gone).
pub async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

//! What the watchers' tests share.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Snapshot;

const WAIT: Duration = Duration::from_secs(5);

/// Waits (bounded) until the snapshot satisfies `pred`.
pub(crate) async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current = rx.borrow_and_update().clone();
        if pred(&current) {
            return current;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}; last snapshot {current:?}"),
        }
    }
}

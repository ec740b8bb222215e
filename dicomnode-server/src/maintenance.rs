//! Upkeep on a timer: expiry of patients that never got enough, adoption of batches put
//! back with `dicomnode requeue`.

use crate::runner::ChildRunner;
use crate::storage::Storage;
use crate::NodeConfig;
use std::sync::Arc;

/// Starts the maintenance thread.
pub fn start(storage: Arc<Storage>, runner: Arc<ChildRunner>, config: &NodeConfig) {
    let interval = config.maintenance_interval;
    let expiry = config.expiry;
    let action = config.expiry_action;
    let spawned = std::thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if let Some(max_age) = expiry {
                storage.expire(max_age, action);
            }
            for batch in storage.adopt_requeued() {
                runner.submit(batch);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the maintenance thread: no expiry, no requeue");
    }
}

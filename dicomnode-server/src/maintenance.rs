//! Upkeep on a timer: patients whose quiet period passed, expiry of patients that never
//! got enough, adoption of batches put back with `dicomnode requeue`.

use crate::runner::ChildRunner;
use crate::storage::Storage;
use crate::NodeConfig;
use std::sync::Arc;

/// Starts the maintenance thread.
pub fn start(storage: Arc<Storage>, runner: Arc<ChildRunner>, config: &NodeConfig) {
    // A quiet period is looked at often enough to be felt as its own length.
    let interval = match config.quiet_period {
        Some(quiet) => config
            .maintenance_interval
            .min(quiet / 4)
            .max(std::time::Duration::from_millis(50)),
        None => config.maintenance_interval,
    };
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
            for batch in storage.take_ready() {
                tracing::info!(patient = %batch.patient_key, instances = batch.instance_count(), "patient has enough: starting processing");
                runner.submit(batch);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the maintenance thread: no expiry, no requeue");
    }
}

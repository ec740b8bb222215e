//! Upkeep on a timer: patients whose quiet period passed (or whose series went quiet),
//! expiry of patients that never got enough, the pipeline's maximum wait, adoption of
//! batches put back with `dicomnode requeue`.

use crate::config::NodeConfig;
use crate::handover::{hand_over, Cause};
use crate::runner::ChildRunner;
use crate::storage::Storage;
use std::sync::Arc;

/// Starts the maintenance thread.
pub(crate) fn start(storage: Arc<Storage>, runner: Arc<ChildRunner>, config: &NodeConfig) {
    // A quiet period (the node's, or one an input's rule waits for) is looked at often
    // enough to be felt as its own length.
    let quiet = match (config.quiet_period, storage.shortest_rule_quiet()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let interval = match quiet {
        Some(quiet) => config
            .maintenance_interval
            .min(quiet / 4)
            .max(std::time::Duration::from_millis(50)),
        None => config.maintenance_interval,
    };
    let ready_cause = match config.quiet_period {
        Some(_) => Cause::QuietPeriod,
        None => Cause::Maintenance,
    };
    let storage_for_log = Arc::clone(&storage);
    let expiry = config.expiry;
    let action = config.expiry_action;
    let spawned = std::thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if let Some(max_age) = expiry {
                storage.expire(max_age, action);
            }
            hand_over(&runner, storage.adopt_requeued(), Cause::Requeued);
            hand_over(&runner, storage.force_complete(), Cause::MaxWait);
            hand_over(&runner, storage.take_ready(), ready_cause);
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the maintenance thread: no expiry, no requeue");
    }
    if storage_for_log.data_dir().is_some() {
        // Checkpoints keep the write-ahead log's space free, off the receive path.
        let spawned = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    storage_for_log.checkpoint_when_due(
                        &mut last,
                        std::time::Duration::from_secs(2),
                        std::time::Duration::from_secs(60),
                    );
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the checkpoint thread: the log is checkpointed when full");
        }
    }
}

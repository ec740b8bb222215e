//! A patient's batch once taken out: what it holds, and what becomes of it after
//! processing (deleted, its failure recorded, quarantined).

use super::names::input_dir_name;
use super::{unix_seconds, ReceivedInstance, Storage};
use dicomnode_core::Origin;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

/// One patient's instances, taken out of storage to be processed.
#[derive(Debug)]
pub(crate) struct PatientBatch {
    /// The value of the patient key tag.
    pub(crate) patient_key: String,
    /// Each input's name and instances, in declaration order.
    pub(crate) inputs: Vec<(String, Vec<Arc<ReceivedInstance>>)>,
    /// Where the batch came from.
    pub(crate) origin: Origin,
    /// When the batch was taken out (the trigger's moment).
    pub(crate) triggered_at: SystemTime,
    /// Which attempt at processing this is (1 for the first).
    pub(crate) attempt: u32,
    /// On disk: the batch's directory under `processing/`.
    pub(crate) dir: Option<PathBuf>,
    /// How each prior input's fetch ended.
    pub(crate) priors: Vec<(String, dicomnode_core::PriorStatus)>,
    /// Why priors the pipeline requires are unavailable (it is then not processed).
    pub(crate) missing_required_priors: Option<String>,
    /// Attempts in a row that ended for a reason outside the job (not counted).
    pub(crate) transient: u32,
}

impl PatientBatch {
    /// Number of distinct instances over all inputs.
    pub(crate) fn instance_count(&self) -> usize {
        self.instance_uids().len()
    }

    /// The SOP Instance UIDs of the batch, over all inputs, sorted, each once.
    pub(crate) fn instance_uids(&self) -> Vec<&str> {
        let mut uids: Vec<&str> = self
            .inputs
            .iter()
            .flat_map(|(_, v)| v.iter().map(|i| i.sop_instance_uid.as_str()))
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids
    }

    /// The file of an instance of input `input`, for a batch on disk.
    pub(crate) fn file_of(&self, input: &str, instance: &ReceivedInstance) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(input_dir_name(input)).join(instance.file_name()))
    }
}

impl Storage {
    /// A batch was processed (or expired and is removed): its data are deleted.
    pub(crate) fn batch_succeeded(&self, batch: PatientBatch) {
        let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) else {
            return;
        };
        // The log must not bring back, after a crash, what is deleted now (a success
        // recorded it already): without that record the data stay (a later start
        // processes them again rather than bringing back half of them).
        if !super::disk::DiskLayout::succeeded(dir) && !self.consume(&batch) {
            tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), dir = %dir.display(), "the batch is kept: the write-ahead log could not record its removal");
            return;
        }
        // Only what the batch held is deleted: a file that reached the directory without
        // being part of the batch goes back for processing.
        let held: HashSet<PathBuf> = batch
            .inputs
            .iter()
            .flat_map(|(input, instances)| instances.iter().filter_map(|i| batch.file_of(input, i)))
            .collect();
        let strays = layout.count_strays(dir, &held);
        if strays > 0 {
            match layout.put_back_strays(dir, &held) {
                Ok(()) => {
                    tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), strays, "files the batch did not hold were beside it: put back for processing")
                }
                Err(error) => {
                    tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, dir = %dir.display(), "files the batch did not hold stay in its directory")
                }
            }
            return;
        }
        if let Err(error) = layout.remove_batch(dir) {
            tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), dir = %dir.display(), %error, "cannot delete the processed batch");
        }
    }

    /// Records in the write-ahead log (if any) that the batch's instances are not to be
    /// brought back after a crash; `false` (logged) when it could not.
    fn consume(&self, batch: &PatientBatch) -> bool {
        let Some(wal) = &self.wal else {
            return true;
        };
        let mut commits: Vec<u64> = batch
            .inputs
            .iter()
            .flat_map(|(_, instances)| instances.iter().filter_map(|i| i.logged))
            .collect();
        commits.sort_unstable();
        commits.dedup();
        match wal.consume(commits) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot record in the write-ahead log that the batch is done with");
                false
            }
        }
    }

    /// A batch was processed: that is recorded in the write-ahead log and beside its data
    /// (on disk, durably) before they are deleted, so that a crash in between does not
    /// process it again.
    pub(crate) fn mark_succeeded(&self, batch: &PatientBatch) {
        if let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) {
            if !self.consume(batch) {
                // Without the record, the data stay until a checkpoint has made the log
                // forget them (a crash before may process them again: never a loss).
                return;
            }
            if let Err(error) = layout.mark_succeeded(dir) {
                tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot record the success beside the batch");
            }
        }
    }

    /// Records, durably, what an executor submitted for the batch (on disk; in memory
    /// there is nothing to adopt after a restart). Returns whether it was recorded.
    pub(crate) fn set_executor_record(
        &self,
        batch: &PatientBatch,
        record: &str,
    ) -> std::io::Result<bool> {
        match (&self.disk, &batch.dir) {
            (Some(layout), Some(dir)) => layout.set_executor_record(dir, record).map(|()| true),
            _ => Ok(false),
        }
    }

    /// What an executor submitted for the batch before (a previous run of the node).
    pub(crate) fn executor_record(&self, batch: &PatientBatch) -> std::io::Result<Option<String>> {
        match &batch.dir {
            Some(dir) => super::disk::DiskLayout::executor_record(dir),
            None => Ok(None),
        }
    }

    /// Forgets what an executor submitted for the batch.
    pub(crate) fn clear_executor_record(&self, batch: &PatientBatch) {
        if let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) {
            if let Err(error) = layout.clear_executor_record(dir) {
                tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot remove the record of the batch's job");
            }
        }
    }

    /// A batch failed: its failure is recorded beside its data (on disk).
    pub(crate) fn record_failure(&self, batch: &PatientBatch, record: &str) {
        if let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) {
            if let Err(error) = layout.record_failure(dir, record) {
                tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot write the failure record");
            }
        }
    }

    /// Keeps all of a failed attempt's output (the file `output`) beside the batch's
    /// failure record, on disk; returns the name it is kept under.
    pub(crate) fn keep_output(&self, batch: &PatientBatch, output: &Path) -> Option<String> {
        let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) else {
            return None;
        };
        match layout.keep_output(dir, batch.attempt, output) {
            Ok(name) => Some(name),
            Err(error) => {
                tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot keep the child's output beside the failure record");
                None
            }
        }
    }

    /// A batch failed its last attempt: it goes to the quarantine, where a person can
    /// inspect it and put it back (`dicomnode requeue`). Returns where it is.
    pub(crate) fn quarantine(&self, batch: PatientBatch) -> String {
        match (&self.disk, &batch.dir) {
            (Some(layout), Some(dir)) => {
                // Its files durable, then the log told not to bring it back into the
                // patients after a crash (if either fails, it may: a duplicate, never a
                // loss).
                if let Some(wal) = &self.wal {
                    if let Err(error) = wal.sync_files() {
                        tracing::error!(%error, "cannot make the quarantined batch's files durable; the log keeps them");
                    } else {
                        self.consume(&batch);
                    }
                }
                let suffix = format!(
                    "{}-{}",
                    unix_seconds(SystemTime::now()),
                    self.sequence.fetch_add(1, Ordering::SeqCst)
                );
                match layout.quarantine_batch(dir, &batch.patient_key, &suffix) {
                    Ok(place) => place.display().to_string(),
                    Err(error) => {
                        tracing::error!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), %error, "cannot move the batch to the quarantine; it stays in processing/ and is retried at the next start");
                        dir.display().to_string()
                    }
                }
            }
            _ => {
                let mut held = self
                    .held_in_memory
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                held.push(batch);
                format!("memory (held batch {} of this run)", held.len())
            }
        }
    }
}

//! What a data directory holds, read without a running node (`dicomnode status`): the
//! patients waiting, with their files per input, the batches taken out for processing,
//! and the quarantine.

use super::disk::{read_key, DiskLayout, QuarantinedBatch};
use dicomnode_core::completion::display_group_key;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

/// A patient held in the data directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredPatient {
    /// The patient key.
    pub patient: String,
    /// Files per input (by the input's directory name, which is its name when that is
    /// a plain token).
    pub inputs: BTreeMap<String, usize>,
    /// Seconds since a file of it last changed.
    pub seconds_since_last_instance: f64,
}

/// A batch taken out for processing (by a running node, or left by a stopped one).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchInProcessing {
    /// The patient key.
    pub patient: String,
    /// Its files.
    pub files: usize,
    /// Its directory.
    pub dir: PathBuf,
}

/// Everything a data directory holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    /// Patients waiting.
    pub patients_waiting: Vec<StoredPatient>,
    /// Batches in processing.
    pub processing: Vec<BatchInProcessing>,
    /// Quarantined batches.
    pub quarantined: Vec<QuarantinedBatch>,
}

impl DiskLayout {
    /// What the data directory holds now.
    pub fn overview(&self) -> io::Result<Overview> {
        let now = SystemTime::now();
        let mut patients_waiting = Vec::new();
        for dir in DiskLayout::subdirs(&self.patients())? {
            let mut inputs: BTreeMap<String, usize> = BTreeMap::new();
            let mut newest = SystemTime::UNIX_EPOCH;
            for (input, file) in DiskLayout::files_of(&dir)? {
                // Input directories are `in-<name>` (names that are not plain tokens are
                // shown as stored: a readable prefix and a hash).
                let name = input.strip_prefix("in-").unwrap_or(&input).to_string();
                *inputs.entry(name).or_default() += 1;
                if let Ok(modified) = std::fs::metadata(&file).and_then(|m| m.modified()) {
                    newest = newest.max(modified);
                }
            }
            patients_waiting.push(StoredPatient {
                patient: display_group_key(&read_key(&dir).unwrap_or_default()),
                inputs,
                seconds_since_last_instance: now
                    .duration_since(newest)
                    .unwrap_or_default()
                    .as_secs_f64(),
            });
        }
        let mut processing = Vec::new();
        for dir in DiskLayout::subdirs(&self.processing())? {
            processing.push(BatchInProcessing {
                patient: display_group_key(&read_key(&dir).unwrap_or_default()),
                files: DiskLayout::files_of(&dir).map_or(0, |f| f.len()),
                dir,
            });
        }
        Ok(Overview {
            patients_waiting,
            processing,
            quarantined: self.quarantined()?,
        })
    }
}

//! Coming back from the data directory: at start-up (interrupted batches put back, every
//! patient rebuilt by the inputs' rules as they are now) and when a person requeues a
//! quarantined batch.

use super::disk::{self, Aside, DiskLayout};
use super::entry::PatientEntry;
use super::names::input_dir_name;
use super::receive::read_stored;
use super::{PatientBatch, Storage, StorageError};
use dicomnode_core::{Completion, Input, Origin};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What was restored from a data directory at start-up.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// Patients rebuilt.
    pub(crate) patients: usize,
    /// Instances rebuilt.
    pub(crate) instances: usize,
    /// Half-written files removed.
    pub(crate) temp_files_removed: usize,
    /// Batches whose processing was interrupted, put back.
    pub(crate) interrupted_batches: usize,
    /// Instances written again from the write-ahead log.
    pub(crate) replayed: usize,
    /// Patients that already have enough, taken out for processing.
    pub(crate) ready: Vec<PatientBatch>,
}

impl Storage {
    /// Durable storage in `dir`, rebuilt from what is there.
    pub(crate) fn on_disk(
        inputs: Vec<Input>,
        completion: Completion,
        dir: &Path,
        quiet_period: Option<Duration>,
    ) -> Result<(Self, Restored), StorageError> {
        let io = |source| StorageError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let layout = DiskLayout::open(dir).map_err(io)?;
        let mut storage = Storage::new(inputs, Some(layout.clone()), quiet_period);
        storage.completion = completion;
        let mut restored = Restored {
            temp_files_removed: layout.clean_tmp().map_err(io)?,
            ..Restored::default()
        };
        // One unreadable directory must not keep the node from starting: it is logged and
        // left where it is for a person to look at.
        for batch_dir in DiskLayout::subdirs(&layout.processing()).map_err(io)? {
            if DiskLayout::succeeded(&batch_dir) {
                // Processed before the stop; only its deletion was left.
                match layout.remove_batch(&batch_dir) {
                    Ok(()) => {
                        tracing::info!(dir = %batch_dir.display(), "a batch processed before the stop: removed")
                    }
                    Err(error) => {
                        tracing::error!(dir = %batch_dir.display(), %error, "cannot remove a processed batch; left in place")
                    }
                }
                continue;
            }
            match layout.merge_back(&batch_dir) {
                Ok(_) => restored.interrupted_batches += 1,
                Err(error) => {
                    tracing::error!(dir = %batch_dir.display(), %error, "cannot put an interrupted batch back; left in place")
                }
            }
        }
        for batch_dir in DiskLayout::subdirs(&layout.requeue()).map_err(io)? {
            if let Err(error) = layout.merge_back(&batch_dir) {
                tracing::error!(dir = %batch_dir.display(), %error, "cannot adopt a requeued batch; left in place");
            }
        }
        // Acknowledged instances whose files a crash may have lost are written again.
        match super::wal::Wal::open(dir, &layout) {
            Ok((wal, replayed)) => {
                storage.wal = Some(wal);
                restored.replayed = replayed;
            }
            // A file system too small for the log's ring: each instance is fsynced on its
            // own, as without a log (a log left from before is kept for a later start).
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => {
                tracing::warn!(%error, "no room for the write-ahead log: each instance is fsynced on its own");
                super::wal::Wal::discard_unstarted(dir);
            }
            Err(error) => return Err(io(error)),
        }
        for patient_dir in DiskLayout::subdirs(&layout.patients()).map_err(io)? {
            match storage.rescan(&patient_dir) {
                Ok(0) => {}
                Ok(count) => {
                    restored.patients += 1;
                    restored.instances += count;
                }
                Err(error) => {
                    tracing::error!(dir = %patient_dir.display(), %error, "cannot read a patient directory; left in place")
                }
            }
        }
        restored.ready = storage.take_ready();
        Ok((storage, restored))
    }

    /// Adopts batches put back with `dicomnode requeue`; returns those ready to process.
    pub(crate) fn adopt_requeued(&self) -> Vec<PatientBatch> {
        let Some(layout) = &self.disk else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for dir in DiskLayout::subdirs(&layout.requeue()).unwrap_or_default() {
            let key = match disk::read_key(&dir) {
                Ok(key) => key,
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "requeued directory without a readable key; left in requeue/");
                    continue;
                }
            };
            // Held like an association would: the patient is not taken out meanwhile.
            self.begin_adding(&key);
            match layout.merge_back(&dir) {
                Ok(_) => {
                    if let Err(error) = self.rescan(&layout.patient_dir(&key)) {
                        tracing::error!(patient = %dicomnode_core::completion::display_group_key(&key), %error, "cannot read the requeued patient");
                    }
                    if let Some(entry) = self.patients().get_mut(&key) {
                        entry.last_added = SystemTime::now();
                    }
                    tracing::info!(patient = %dicomnode_core::completion::display_group_key(&key), "requeued batch adopted");
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "cannot adopt a requeued batch")
                }
            }
            ready.extend(self.finish_adding(&key, &Origin::Requeued));
        }
        ready
    }

    /// Rebuilds a patient's entry from its directory, re-applying the inputs' rules;
    /// returns the number of instances.
    fn rescan(&self, patient_dir: &Path) -> std::io::Result<usize> {
        let Some(layout) = &self.disk else {
            return Ok(0);
        };
        let key = match disk::read_key(patient_dir) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(dir = %patient_dir.display(), %error, "patient directory without a key; left alone");
                return Ok(0);
            }
        };
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        // Prior inputs hold what was fetched for them: membership is their directory.
        let mut fetched: Vec<(usize, PathBuf)> = Vec::new();
        let prior_dirs: HashMap<String, usize> = self
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, input)| input.prior_source().is_some())
            .map(|(i, input)| (input_dir_name(input.name()), i))
            .collect();
        for (dir_name, path) in DiskLayout::files_of(patient_dir)? {
            if let Some(&index) = prior_dirs.get(&dir_name) {
                fetched.push((index, path));
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen.entry(name).or_insert(path);
        }
        let mut entry = PatientEntry::new(self.inputs.len());
        // When the newest stored instance arrived (its file's time), for expiry and quiet.
        entry.last_added = SystemTime::UNIX_EPOCH;
        entry.first_added = SystemTime::now();
        let mut count = 0;
        let mut first_header = None;
        for (index, path) in fetched {
            match read_stored(&path) {
                Ok(instance) => entry.inputs[index].push(Arc::new(instance)),
                Err(error) => {
                    tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&key), file = %path.display(), %error, "a fetched prior instance is unreadable: removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for (file_name, path) in seen {
            let instance = match read_stored(&path) {
                Ok(instance) => instance,
                Err(error) => {
                    // Set aside: it must not be swept out with a batch and deleted.
                    layout.set_aside(patient_dir, &key, &path, Aside::Unreadable)?;
                    tracing::error!(patient = %dicomnode_core::completion::display_group_key(&key), file = %file_name, %error, "stored file unreadable; moved to the quarantine");
                    continue;
                }
            };
            let admitted: Vec<usize> = self
                .inputs
                .iter()
                .enumerate()
                .filter(|(_, input)| input.admit(&instance.header).is_ok())
                .map(|(i, _)| i)
                .collect();
            if admitted.is_empty() {
                layout.set_aside(patient_dir, &key, &path, Aside::Rejected)?;
                tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&key), file = %file_name, "no input admits this stored instance any more; moved to the quarantine");
                continue;
            }
            if let Some(modified) = disk::modified(&path) {
                entry.last_added = entry.last_added.max(modified);
                entry.first_added = entry.first_added.min(modified);
            }
            // Links follow the rules as they are now.
            let wanted: Vec<String> = admitted
                .iter()
                .map(|&i| input_dir_name(self.inputs[i].name()))
                .collect();
            DiskLayout::relink(patient_dir, &path, &wanted)?;
            let instance = Arc::new(instance);
            for index in admitted {
                entry.inputs[index].push(Arc::clone(&instance));
            }
            if first_header.is_none() {
                first_header = Some(Arc::clone(&instance));
            }
            count += 1;
        }
        let Some(first) = first_header else {
            return Ok(count);
        };
        // Merge with what associations (or a requeue) may be adding right now.
        let mut patients = self.patients();
        let target = match patients.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(existing) => {
                let existing = existing.into_mut();
                for (held, found) in existing.inputs.iter_mut().zip(entry.inputs) {
                    for instance in found {
                        if !held
                            .iter()
                            .any(|i| i.sop_instance_uid == instance.sop_instance_uid)
                        {
                            held.push(instance);
                        }
                    }
                }
                existing
            }
            std::collections::hash_map::Entry::Vacant(vacant) => vacant.insert(entry),
        };
        // Fetches that ended are kept; those that had not (or never started) run again.
        for (index, input) in self.inputs.iter().enumerate() {
            if input.prior_source().is_some() && target.priors[index].is_none() {
                target.priors[index] = Storage::read_prior_state(patient_dir, input.name());
            }
        }
        let fetches = self.start_priors(&key, target, &first.header);
        drop(patients);
        self.queue_fetches(fetches);
        Ok(count)
    }
}

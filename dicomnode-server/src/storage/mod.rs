//! Where accepted instances wait, per patient and per input, until the patient has enough.
//!
//! The storage owns every patient's state: the instances of each input, how many live
//! associations are still adding to the patient, and when it last grew. Taking a batch
//! out is atomic, so a patient is handed to the runner exactly once; instances arriving
//! meanwhile gather for a next batch.
//!
//! Two kinds: in memory (the default), and durable in a data directory (see [`disk`]),
//! where each instance is streamed to a file and fsynced before the node answers success,
//! and the state is rebuilt from the files at start-up.

pub mod disk;
pub mod names;

use crate::NodeConfig;
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicomnode_core::{Input, Rejection, Sender};
use disk::DiskLayout;
use names::{input_dir_name, safe_name};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Where an instance's data set is.
#[derive(Debug)]
pub enum InstanceData {
    /// In memory: the data set bytes as received.
    Memory(Vec<u8>),
    /// On disk: a Part-10 file `<input>/<file_name>` under the batch's directory.
    Disk,
}

/// An instance as received: its data set exactly as sent, in its transfer syntax, plus the
/// header (every element before Pixel Data) for the inputs' rules.
#[derive(Debug)]
pub struct ReceivedInstance {
    /// SOP Class UID from the C-STORE request.
    pub sop_class_uid: String,
    /// SOP Instance UID from the C-STORE request.
    pub sop_instance_uid: String,
    /// The transfer syntax negotiated for the presentation context it came on.
    pub transfer_syntax: String,
    /// Where the data set is.
    pub data: InstanceData,
    /// The parsed header, without Pixel Data.
    pub header: InMemDicomObject,
}

impl ReceivedInstance {
    /// The file name of the instance in a data directory.
    pub fn file_name(&self) -> String {
        format!("{}.dcm", safe_name(&self.sop_instance_uid))
    }
}

/// One patient's instances, taken out of storage to be processed.
#[derive(Debug)]
pub struct PatientBatch {
    /// The value of the patient key tag.
    pub patient_key: String,
    /// Each input's name and instances, in declaration order.
    pub inputs: Vec<(String, Vec<Arc<ReceivedInstance>>)>,
    /// The peer whose association completed the batch.
    pub sender: Sender,
    /// When the batch was taken out (the trigger's moment).
    pub triggered_at: SystemTime,
    /// Which attempt at processing this is (1 for the first).
    pub attempt: u32,
    /// On disk: the batch's directory under `processing/`.
    pub dir: Option<PathBuf>,
}

impl PatientBatch {
    /// Number of distinct instances over all inputs.
    pub fn instance_count(&self) -> usize {
        let mut uids: Vec<&str> = self
            .inputs
            .iter()
            .flat_map(|(_, v)| v.iter().map(|i| i.sop_instance_uid.as_str()))
            .collect();
        uids.sort_unstable();
        uids.dedup();
        uids.len()
    }

    /// The file of an instance of input `input`, for a batch on disk.
    pub fn file_of(&self, input: &str, instance: &ReceivedInstance) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(input_dir_name(input)).join(instance.file_name()))
    }
}

struct PatientEntry {
    /// Instances per input, in declaration order.
    inputs: Vec<Vec<Arc<ReceivedInstance>>>,
    /// Associations that added to this patient and have not ended.
    live_adders: usize,
    /// When an instance last arrived (for expiry).
    last_added: SystemTime,
    /// The peer of the last association that ended after adding to the patient.
    last_sender: Option<Sender>,
}

impl PatientEntry {
    fn new(inputs: usize) -> Self {
        PatientEntry {
            inputs: vec![Vec::new(); inputs],
            live_adders: 0,
            last_added: SystemTime::now(),
            last_sender: None,
        }
    }
}

/// The outcome of offering an instance to the inputs.
#[derive(Debug)]
pub enum Offer {
    /// Stored in these inputs.
    Stored(Vec<String>),
    /// Entered no input: each input's reason.
    Rejected(Vec<(String, Rejection)>),
    /// Could not be stored (disk full, write error): nothing of it is kept.
    Failed(String),
}

/// Why a received data set could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Writing failed (disk full, I/O error): answer "out of resources".
    #[error("cannot store the data set: {0}")]
    Resources(String),
    /// The data set cannot be parsed: answer "cannot understand".
    #[error("cannot parse the data set: {0}")]
    Unreadable(String),
}

/// Why the storage could not open.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data directory could not be prepared or read.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A data set being received, written where it will be stored as its bytes arrive.
pub struct Incoming {
    sink: Sink,
    failed: Option<String>,
    /// In memory: the most a data set may take.
    limit: usize,
}

enum Sink {
    Memory(Vec<u8>),
    File {
        writer: BufWriter<File>,
        path: PathBuf,
    },
}

impl Incoming {
    /// Appends a fragment of the data set. After a write error the rest is discarded and
    /// the error is reported when the data set is complete.
    pub fn push(&mut self, data: Vec<u8>) {
        if self.failed.is_some() {
            return;
        }
        match &mut self.sink {
            Sink::Memory(bytes) if bytes.len().saturating_add(data.len()) > self.limit => {
                *bytes = Vec::new();
                self.failed = Some(format!(
                    "the data set is larger than the {} MiB an instance may take in memory (store with a data directory instead)",
                    self.limit >> 20
                ));
            }
            Sink::Memory(bytes) if bytes.is_empty() => *bytes = data,
            Sink::Memory(bytes) => bytes.extend_from_slice(&data),
            Sink::File { writer, .. } => {
                if let Err(error) = writer.write_all(&data) {
                    self.failed = Some(error.to_string());
                }
            }
        }
    }
}

impl Drop for Incoming {
    /// A data set that was never completed (aborted association, a new command in the
    /// middle, a refusal) leaves no file behind.
    fn drop(&mut self) {
        if let Sink::File { path, .. } = &self.sink {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What was restored from a data directory at start-up.
#[derive(Debug, Default)]
pub struct Restored {
    /// Patients rebuilt.
    pub patients: usize,
    /// Instances rebuilt.
    pub instances: usize,
    /// Half-written files removed.
    pub temp_files_removed: usize,
    /// Batches whose processing was interrupted, put back.
    pub interrupted_batches: usize,
    /// Patients that already have enough, taken out for processing.
    pub ready: Vec<PatientBatch>,
}

/// What happens to a patient that never gets enough within the configured age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryAction {
    /// Delete its instances.
    Remove,
    /// Move them to the quarantine (in memory: keep them aside).
    Quarantine,
}

/// The storage of the patients being gathered.
pub struct Storage {
    inputs: Vec<Input>,
    disk: Option<DiskLayout>,
    patients: Mutex<HashMap<String, PatientEntry>>,
    /// Batches that failed every attempt, when there is no data directory.
    held_in_memory: Mutex<Vec<PatientBatch>>,
    sequence: AtomicU64,
    /// With a quiet period, a patient is taken out only once no instance arrived for it
    /// for this long (for senders that use one association per instance).
    quiet_period: Option<Duration>,
    /// Without a data directory: the most one data set may take in memory.
    memory_limit: usize,
}

impl Storage {
    /// In-memory storage for a pipeline with these inputs.
    pub fn in_memory(inputs: Vec<Input>) -> Self {
        Storage {
            inputs,
            disk: None,
            patients: Mutex::new(HashMap::new()),
            held_in_memory: Mutex::new(Vec::new()),
            sequence: AtomicU64::new(0),
            quiet_period: None,
            memory_limit: usize::MAX,
        }
    }

    /// Sets a quiet period: patients are taken out by [`Storage::take_ready`] (run by the
    /// maintenance thread) once they have enough and no instance arrived for this long,
    /// not at the end of each association.
    pub fn with_quiet_period(mut self, quiet: Option<Duration>) -> Self {
        self.quiet_period = quiet;
        self
    }

    /// Durable storage in `dir`, rebuilt from what is there.
    pub fn on_disk(
        inputs: Vec<Input>,
        dir: &Path,
        quiet_period: Option<Duration>,
    ) -> Result<(Self, Restored), StorageError> {
        let io = |source| StorageError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let layout = DiskLayout::open(dir).map_err(io)?;
        let storage = Storage {
            inputs,
            disk: Some(layout.clone()),
            patients: Mutex::new(HashMap::new()),
            held_in_memory: Mutex::new(Vec::new()),
            sequence: AtomicU64::new(unix_seconds(SystemTime::now()) * 1000),
            quiet_period,
            memory_limit: usize::MAX,
        };
        let mut restored = Restored {
            temp_files_removed: layout.clean_tmp().map_err(io)?,
            ..Restored::default()
        };
        // One unreadable directory must not keep the node from starting: it is logged and
        // left where it is for a person to look at.
        for batch_dir in DiskLayout::subdirs(&layout.processing()).map_err(io)? {
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

    /// The storage for a node's configuration.
    pub fn for_config(
        inputs: Vec<Input>,
        config: &NodeConfig,
    ) -> Result<(Self, Restored), StorageError> {
        // The quiet period is set before restoring: restored patients are judged by it.
        let (storage, restored) = match &config.data_dir {
            Some(dir) => Storage::on_disk(inputs, dir, config.quiet_period)?,
            None => (
                Storage::in_memory(inputs).with_quiet_period(config.quiet_period),
                Restored::default(),
            ),
        };
        let mut storage = storage;
        storage.memory_limit = usize::try_from(config.max_instance_in_memory).unwrap_or(usize::MAX);
        Ok((storage, restored))
    }

    /// The data directory, if the storage is durable.
    pub fn data_dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(DiskLayout::root)
    }

    fn patients(&self) -> MutexGuard<'_, HashMap<String, PatientEntry>> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.patients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rebuilds a patient's entry from its directory, re-applying the inputs' rules;
    /// returns the number of instances.
    fn rescan(&self, patient_dir: &Path) -> std::io::Result<usize> {
        let Some(layout) = &self.disk else {
            return Ok(0);
        };
        let key = match std::fs::read(patient_dir.join(disk::KEY_FILE)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => {
                tracing::warn!(dir = %patient_dir.display(), %error, "patient directory without a key; left alone");
                return Ok(0);
            }
        };
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for (_, path) in DiskLayout::files_of(patient_dir)? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen.entry(name).or_insert(path);
        }
        let mut entry = PatientEntry::new(self.inputs.len());
        // When the newest stored instance arrived (its file's time), for expiry and quiet.
        entry.last_added = SystemTime::UNIX_EPOCH;
        let mut count = 0;
        for (file_name, path) in seen {
            let instance = match read_stored(&path) {
                Ok(instance) => instance,
                Err(error) => {
                    // Set aside: it must not be swept out with a batch and deleted.
                    let aside = layout
                        .quarantine()
                        .join(format!("{}.unreadable", names::patient_dir_name(&key)));
                    std::fs::create_dir_all(aside.join("unreadable"))?;
                    std::fs::write(aside.join(disk::KEY_FILE), key.as_bytes())?;
                    for (_, linked) in DiskLayout::files_of(patient_dir)? {
                        if linked.file_name() == path.file_name() && linked != path {
                            std::fs::remove_file(&linked)?;
                        }
                    }
                    std::fs::rename(&path, aside.join("unreadable").join(&file_name))?;
                    tracing::error!(patient = %key, file = %file_name, %error, "stored file unreadable; moved to the quarantine");
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
            // Links follow the rules as they are now.
            for (index, input) in self.inputs.iter().enumerate() {
                let link = patient_dir
                    .join(input_dir_name(input.name()))
                    .join(&file_name);
                if admitted.contains(&index) && !link.exists() {
                    std::fs::create_dir_all(link.parent().unwrap_or(patient_dir))?;
                    std::fs::hard_link(&path, &link)?;
                }
            }
            if admitted.is_empty() {
                let aside = layout.quarantine().join(format!(
                    "{}.rejected-at-restart",
                    names::patient_dir_name(&key)
                ));
                std::fs::create_dir_all(aside.join("rejected"))?;
                std::fs::write(aside.join(disk::KEY_FILE), key.as_bytes())?;
                std::fs::rename(&path, aside.join("rejected").join(&file_name))?;
                tracing::warn!(patient = %key, file = %file_name, "no input admits this stored instance any more; moved to the quarantine");
            }
            for input_dir in DiskLayout::subdirs(patient_dir)? {
                let link = input_dir.join(&file_name);
                let wanted = self.inputs.iter().enumerate().any(|(i, input)| {
                    admitted.contains(&i) && input_dir.ends_with(input_dir_name(input.name()))
                });
                if !wanted && link.exists() {
                    std::fs::remove_file(&link)?;
                }
            }
            if admitted.is_empty() {
                continue;
            }
            if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) {
                entry.last_added = entry.last_added.max(modified);
            }
            let instance = Arc::new(instance);
            for index in admitted {
                entry.inputs[index].push(Arc::clone(&instance));
            }
            count += 1;
        }
        if count > 0 {
            // Merge with what associations may be adding right now.
            let mut patients = self.patients();
            match patients.get_mut(&key) {
                Some(existing) => {
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
                }
                None => {
                    patients.insert(key, entry);
                }
            }
        }
        Ok(count)
    }

    /// Takes out every patient that has enough and no live association adding to it.
    pub fn take_ready(&self) -> Vec<PatientBatch> {
        let restored = Sender {
            ae_title: String::new(),
            address: "restored from the data directory".into(),
        };
        // One critical section: no association can start adding in between.
        let mut patients = self.patients();
        let now = SystemTime::now();
        let ready: Vec<(String, Sender)> = patients
            .iter()
            .filter(|(_, e)| {
                e.live_adders == 0
                    && self.quiet_period.is_none_or(|quiet| {
                        now.duration_since(e.last_added).unwrap_or_default() >= quiet
                    })
                    && self.has_enough(e)
            })
            .map(|(k, e)| {
                let sender = e.last_sender.clone().unwrap_or_else(|| restored.clone());
                (k.clone(), sender)
            })
            .collect();
        ready
            .iter()
            .filter_map(|(key, sender)| self.take_out(&mut patients, key, sender))
            .collect()
    }

    /// Prepares to receive a data set: in memory, or a temporary Part-10 file.
    pub fn incoming(&self, sop_class: &str, sop_instance: &str, transfer_syntax: &str) -> Incoming {
        let Some(layout) = &self.disk else {
            return Incoming {
                sink: Sink::Memory(Vec::new()),
                failed: None,
                limit: self.memory_limit,
            };
        };
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(transfer_syntax)
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance)
            .implementation_class_uid(crate::runner::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::runner::IMPLEMENTATION_VERSION_NAME)
            .build();
        let opened = meta
            .map_err(|e| e.to_string())
            .and_then(|meta| layout.new_temp_file(&meta).map_err(|e| e.to_string()));
        match opened {
            Ok((writer, path)) => Incoming {
                sink: Sink::File { writer, path },
                failed: None,
                limit: usize::MAX,
            },
            Err(error) => Incoming {
                sink: Sink::Memory(Vec::new()),
                failed: Some(error),
                limit: 0,
            },
        }
    }

    /// Completes a received data set: flushed and fsynced (on disk), and its header read.
    pub fn receive(
        &self,
        incoming: Incoming,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
    ) -> Result<(ReceivedInstance, Option<PathBuf>), ReceiveError> {
        let mut incoming = incoming;
        if let Some(error) = incoming.failed.clone() {
            // Dropping it removes what was written.
            drop(incoming);
            return Err(ReceiveError::Resources(error));
        }
        // Taken out: from here on, this function decides what happens to the file.
        let sink = std::mem::replace(&mut incoming.sink, Sink::Memory(Vec::new()));
        let (data, header, temp) = match sink {
            Sink::Memory(bytes) => {
                let header = read_header(std::io::Cursor::new(&bytes), transfer_syntax)
                    .map_err(ReceiveError::Unreadable)?;
                (InstanceData::Memory(bytes), header, None)
            }
            Sink::File { writer, path } => {
                let finished = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    // The data and the size it needs; the rename into place and its
                    // directory's fsync make the name durable.
                    .and_then(|file| file.sync_data());
                if let Err(error) = finished {
                    let _ = std::fs::remove_file(&path);
                    return Err(ReceiveError::Resources(error.to_string()));
                }
                match read_stored(&path) {
                    Ok(instance) => (InstanceData::Disk, instance.header, Some(path)),
                    Err(error) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(ReceiveError::Unreadable(error));
                    }
                }
            }
        };
        let instance = ReceivedInstance {
            sop_class_uid: sop_class.to_string(),
            sop_instance_uid: sop_instance.to_string(),
            transfer_syntax: transfer_syntax.to_string(),
            data,
            header,
        };
        Ok((instance, temp))
    }

    /// Marks that an association starts adding to a patient; the patient is not taken out
    /// while any association that started adding to it is live.
    pub fn begin_adding(&self, patient_key: &str) {
        let inputs = self.inputs.len();
        self.patients()
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry::new(inputs))
            .live_adders += 1;
    }

    /// Offers a received instance to every input; stores it in each that admits it (on
    /// disk: durably, before returning). An instance with a SOP Instance UID already held
    /// for the patient replaces the old one.
    pub fn offer(
        &self,
        patient_key: &str,
        mut instance: ReceivedInstance,
        temp: Option<&Path>,
    ) -> Offer {
        let mut admitted = Vec::new();
        let mut rejected = Vec::new();
        for (index, input) in self.inputs.iter().enumerate() {
            match input.admit(&instance.header) {
                Ok(()) => admitted.push(index),
                Err(reason) => rejected.push((input.name().to_string(), reason)),
            }
        }
        if admitted.is_empty() {
            if let Some(temp) = temp {
                let _ = std::fs::remove_file(temp);
            }
            return Offer::Rejected(rejected);
        }
        let names: Vec<&str> = admitted.iter().map(|&i| self.inputs[i].name()).collect();
        if let (Some(layout), Some(temp)) = (&self.disk, temp) {
            // The patient cannot be taken out meanwhile: this association is adding to it.
            if let Err(error) = layout.place(patient_key, temp, &names, &instance.file_name()) {
                let _ = std::fs::remove_file(temp);
                return Offer::Failed(error.to_string());
            }
            instance.data = InstanceData::Disk;
        }
        let names = names.into_iter().map(str::to_string).collect();
        let instance = Arc::new(instance);
        let inputs = self.inputs.len();
        let mut patients = self.patients();
        let entry = patients
            .entry(patient_key.to_string())
            .or_insert_with(|| PatientEntry::new(inputs));
        entry.last_added = SystemTime::now();
        for &index in &admitted {
            let held = &mut entry.inputs[index];
            held.retain(|i| i.sop_instance_uid != instance.sop_instance_uid);
            held.push(Arc::clone(&instance));
        }
        Offer::Stored(names)
    }

    /// Marks that an association ended; if no other live association adds to the patient
    /// and every input has enough, takes the patient's batch out (exactly once).
    pub fn finish_adding(&self, patient_key: &str, sender: &Sender) -> Option<PatientBatch> {
        let mut patients = self.patients();
        let entry = patients.get_mut(patient_key)?;
        entry.live_adders = entry.live_adders.saturating_sub(1);
        entry.last_sender = Some(sender.clone());
        if entry.live_adders > 0 {
            return None;
        }
        if entry.inputs.iter().all(Vec::is_empty) {
            // Every instance of this patient was rejected: nothing to keep.
            patients.remove(patient_key);
            return None;
        }
        if self.quiet_period.is_some() || !self.has_enough(entry) {
            // With a quiet period the maintenance thread takes it out, when quiet.
            return None;
        }
        self.take_out(&mut patients, patient_key, sender)
    }

    fn take_out(
        &self,
        patients: &mut HashMap<String, PatientEntry>,
        patient_key: &str,
        sender: &Sender,
    ) -> Option<PatientBatch> {
        let dir = match &self.disk {
            Some(layout) => {
                let sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
                match layout.take_out(patient_key, sequence) {
                    Ok(dir) => Some(dir),
                    Err(error) => {
                        tracing::error!(patient = %patient_key, %error, "cannot take the patient out for processing; it stays stored");
                        return None;
                    }
                }
            }
            None => None,
        };
        let entry = patients.remove(patient_key)?;
        // Failed attempts recorded beside the data (before a restart, say) still count.
        let attempt = dir.as_deref().map_or(0, DiskLayout::failed_attempts) + 1;
        Some(PatientBatch {
            patient_key: patient_key.to_string(),
            inputs: self
                .inputs
                .iter()
                .map(|i| i.name().to_string())
                .zip(entry.inputs)
                .collect(),
            sender: sender.clone(),
            triggered_at: SystemTime::now(),
            attempt,
            dir,
        })
    }

    fn has_enough(&self, entry: &PatientEntry) -> bool {
        self.inputs.iter().zip(&entry.inputs).all(|(input, held)| {
            let headers: Vec<&InMemDicomObject> = held.iter().map(|i| &i.header).collect();
            // A rule of the user's that panics must not take the node's state with it.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.has_enough(&headers)))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        input = input.name(),
                        "the input's enough-rule panicked: counted as not enough"
                    );
                    false
                })
        })
    }

    /// A batch was processed: its data are deleted.
    pub fn batch_succeeded(&self, batch: PatientBatch) {
        if let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) {
            // Only what the batch held is deleted: a file that reached the directory
            // without being part of the batch goes back for processing.
            let held: std::collections::HashSet<PathBuf> = batch
                .inputs
                .iter()
                .flat_map(|(input, instances)| {
                    instances.iter().filter_map(|i| batch.file_of(input, i))
                })
                .collect();
            let strays = DiskLayout::files_of(dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, path)| !held.contains(path))
                .count();
            if strays > 0 {
                for path in &held {
                    let _ = std::fs::remove_file(path);
                }
                let _ = std::fs::remove_file(dir.join(disk::FAILURES_FILE));
                let name = dir
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                match std::fs::rename(dir, layout.requeue().join(name)) {
                    Ok(()) => {
                        tracing::warn!(patient = %batch.patient_key, strays, "files the batch did not hold were beside it: put back for processing")
                    }
                    Err(error) => {
                        tracing::error!(patient = %batch.patient_key, %error, dir = %dir.display(), "files the batch did not hold stay in its directory")
                    }
                }
                return;
            }
            if let Err(error) = layout.remove_batch(dir) {
                tracing::error!(patient = %batch.patient_key, dir = %dir.display(), %error, "cannot delete the processed batch");
            }
        }
    }

    /// A batch failed: its failure is recorded beside its data (on disk).
    pub fn record_failure(&self, batch: &PatientBatch, record: &str) {
        if let (Some(layout), Some(dir)) = (&self.disk, &batch.dir) {
            if let Err(error) = layout.record_failure(dir, record) {
                tracing::error!(patient = %batch.patient_key, %error, "cannot write the failure record");
            }
        }
    }

    /// A batch failed its last attempt: it goes to the quarantine, where a person can
    /// inspect it and put it back (`dicomnode requeue`). Returns where it is.
    pub fn quarantine(&self, batch: PatientBatch) -> String {
        match (&self.disk, &batch.dir) {
            (Some(layout), Some(dir)) => {
                let suffix = format!(
                    "{}-{}",
                    unix_seconds(SystemTime::now()),
                    self.sequence.fetch_add(1, Ordering::SeqCst)
                );
                match layout.quarantine_batch(dir, &batch.patient_key, &suffix) {
                    Ok(place) => place.display().to_string(),
                    Err(error) => {
                        tracing::error!(patient = %batch.patient_key, %error, "cannot move the batch to the quarantine; it stays in processing/ and is retried at the next start");
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

    /// Removes or quarantines patients that never got enough within `max_age` of their
    /// last instance; returns their keys.
    pub fn expire(&self, max_age: Duration, action: ExpiryAction) -> Vec<String> {
        let now = SystemTime::now();
        let mut patients = self.patients();
        let expired: Vec<String> = patients
            .iter()
            .filter(|(_, e)| {
                e.live_adders == 0
                    && now.duration_since(e.last_added).unwrap_or_default() > max_age
                    // A patient with enough is waiting for processing, not expiring.
                    && !self.has_enough(e)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let sender = Sender {
            ae_title: String::new(),
            address: "expiry".into(),
        };
        for key in &expired {
            let Some(batch) = self.take_out(&mut patients, key, &sender) else {
                continue;
            };
            let count = batch.instance_count();
            match action {
                ExpiryAction::Remove => {
                    tracing::warn!(patient = %key, instances = count, ?max_age, "patient expired without enough instances: removed");
                    self.batch_succeeded(batch);
                }
                ExpiryAction::Quarantine => {
                    let place = self.quarantine(batch);
                    tracing::warn!(patient = %key, instances = count, ?max_age, %place, "patient expired without enough instances: quarantined");
                }
            }
        }
        expired
    }

    /// Adopts batches put back with `dicomnode requeue`; returns those ready to process.
    pub fn adopt_requeued(&self) -> Vec<PatientBatch> {
        let Some(layout) = &self.disk else {
            return Vec::new();
        };
        let sender = Sender {
            ae_title: String::new(),
            address: "requeued".into(),
        };
        let mut ready = Vec::new();
        for dir in DiskLayout::subdirs(&layout.requeue()).unwrap_or_default() {
            let key = match std::fs::read(dir.join(disk::KEY_FILE)) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
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
                        tracing::error!(patient = %key, %error, "cannot read the requeued patient");
                    }
                    if let Some(entry) = self.patients().get_mut(&key) {
                        entry.last_added = SystemTime::now();
                    }
                    tracing::info!(patient = %key, "requeued batch adopted");
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "cannot adopt a requeued batch")
                }
            }
            ready.extend(self.finish_adding(&key, &sender));
        }
        ready
    }

    /// Number of instances held for a patient (0 if unknown).
    pub fn held_for(&self, patient_key: &str) -> usize {
        self.patients()
            .get(patient_key)
            .map_or(0, |e| e.inputs.iter().map(Vec::len).sum())
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the elements before Pixel Data of a data set encoded in `transfer_syntax`: all
/// the rules need, without decoding the pixels.
pub fn read_header<R: std::io::Read + std::io::Seek>(
    source: R,
    transfer_syntax: &str,
) -> Result<InMemDicomObject, String> {
    // Hostile lengths and nesting are refused before the parser sees them.
    dicomnode_core::structure::read_header(source, transfer_syntax).map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    })
}

/// Reads a stored Part-10 file's meta group and header.
fn read_stored(path: &Path) -> Result<ReceivedInstance, String> {
    // Hostile lengths and nesting are refused before the parser sees them.
    dicomnode_core::structure::check_file(path).map_err(|e| e.to_string())?;
    // Stops before Pixel Data: a 1 GiB instance is not read into memory.
    let options = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA);
    let obj = options.open_file(path).map_err(|e| e.to_string())?;
    let meta = obj.meta().clone();
    Ok(ReceivedInstance {
        sop_class_uid: meta
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string(),
        sop_instance_uid: meta
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string(),
        transfer_syntax: meta.transfer_syntax().trim_end_matches('\0').to_string(),
        data: InstanceData::Disk,
        header: obj.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicomnode_core::synthetic::SyntheticSeries;
    use dicomnode_core::{Enough, Matcher};

    fn inputs() -> Vec<Input> {
        vec![Input::new("ct")
            .matching(tags::MODALITY, Matcher::exact("CT"))
            .enough_when(Enough::at_least(2))]
    }

    fn sender() -> Sender {
        Sender {
            ae_title: "SCU".into(),
            address: "127.0.0.1:1".into(),
        }
    }

    /// Receives a synthetic instance through `storage` as the SCP would.
    fn receive(
        storage: &Storage,
        obj: &dicomnode_core::DicomInstance,
    ) -> (ReceivedInstance, Option<PathBuf>) {
        let mut bytes = Vec::new();
        obj.write_dataset(&mut bytes).unwrap();
        let meta = obj.meta();
        let (class, uid, ts) = (
            meta.media_storage_sop_class_uid().trim_end_matches('\0'),
            meta.media_storage_sop_instance_uid().trim_end_matches('\0'),
            meta.transfer_syntax().trim_end_matches('\0'),
        );
        let mut incoming = storage.incoming(class, uid, ts);
        let half = bytes.len() / 2;
        incoming.push(bytes[..half].to_vec());
        incoming.push(bytes[half..].to_vec());
        storage.receive(incoming, class, uid, ts).unwrap()
    }

    fn exercise(storage: &Storage) -> PatientBatch {
        let series = SyntheticSeries::ct("P", 3).size(4, 4).build().unwrap();
        let mut mr = series[2].clone();
        mr.put(DataElement::new(tags::MODALITY, VR::CS, "MR"));
        storage.begin_adding("P");
        storage.begin_adding("P");
        let (a, temp) = receive(storage, &series[0]);
        assert!(matches!(
            storage.offer("P", a, temp.as_deref()),
            Offer::Stored(_)
        ));
        let (again, temp) = receive(storage, &series[0]);
        assert!(matches!(
            storage.offer("P", again, temp.as_deref()),
            Offer::Stored(_)
        ));
        assert_eq!(
            storage.held_for("P"),
            1,
            "the same SOP instance is stored once"
        );
        let (rejected, temp) = receive(storage, &mr);
        assert!(matches!(
            storage.offer("P", rejected, temp.as_deref()),
            Offer::Rejected(_)
        ));
        let (b, temp) = receive(storage, &series[1]);
        assert!(matches!(
            storage.offer("P", b, temp.as_deref()),
            Offer::Stored(_)
        ));
        assert!(
            storage.finish_adding("P", &sender()).is_none(),
            "one association still live"
        );
        let batch = storage.finish_adding("P", &sender()).expect("complete");
        assert!(
            storage.finish_adding("P", &sender()).is_none(),
            "taken once"
        );
        assert_eq!(batch.instance_count(), 2);
        batch
    }

    #[test]
    fn in_memory_batches_wait_for_live_associations_and_are_taken_once() {
        let storage = Storage::in_memory(inputs());
        let batch = exercise(&storage);
        assert!(batch.dir.is_none());
        assert!(matches!(batch.inputs[0].1[0].data, InstanceData::Memory(_)));
    }

    #[test]
    fn on_disk_batches_are_files_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, restored) = Storage::on_disk(inputs(), dir.path(), None).unwrap();
        assert_eq!(restored.patients, 0);
        let batch = exercise(&storage);
        let batch_dir = batch.dir.clone().unwrap();
        for (input, instances) in &batch.inputs {
            for instance in instances {
                let file = batch.file_of(input, instance).unwrap();
                assert!(file.starts_with(&batch_dir));
                dicom_object::open_file(&file).unwrap();
            }
        }
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
        // A crash now: the next start puts the interrupted batch back and takes it out again.
        drop(storage);
        let (_storage, restored) = Storage::on_disk(inputs(), dir.path(), None).unwrap();
        assert_eq!(restored.interrupted_batches, 1);
        assert_eq!(restored.ready.len(), 1);
        assert_eq!(restored.ready[0].instance_count(), 2);
    }
}

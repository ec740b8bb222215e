//! Where accepted instances wait, per patient and per input, until the patient has enough.
//!
//! The storage owns every patient's state: the instances of each input, how many live
//! associations are still adding to the patient, and when it last grew. Taking a batch
//! out is atomic, so a patient is handed to the runner exactly once; instances arriving
//! meanwhile gather for a next batch.
//!
//! Two kinds: in memory (the default), and durable in a data directory (see [`disk`]),
//! where each instance is durable before the node answers success (in the write-ahead
//! log, `wal`, its file written from there later; or, too large for the log, streamed to
//! a file and fsynced), and the state is rebuilt from the files and the log at start-up.
//!
//! Where a C-STORE goes: `Storage::incoming` and `Storage::receive` (module `receive`),
//! `Storage::offer` (`patients`); a batch taken out is a `PatientBatch` (`batch`);
//! a start-up and `dicomnode requeue` come back through `restore`. Every file-system
//! operation is in [`disk`].

mod batch;
pub mod disk;
mod entry;
pub(crate) mod names;
pub mod overview;
mod patients;
mod placing;
mod priors;
mod receive;
mod restore;
mod wal;

pub(crate) use batch::PatientBatch;
pub(crate) use patients::Offer;
pub(crate) use priors::FetchRequest;
pub(crate) use receive::{Incoming, ReceiveError};
pub(crate) use restore::Restored;

use crate::config::NodeConfig;
use dicom_object::InMemDicomObject;
use dicomnode_core::{Completion, Input};
use disk::DiskLayout;
use entry::PatientEntry;
use names::safe_name;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Where an instance's data set is.
#[derive(Debug)]
pub(crate) enum InstanceData {
    /// In memory: the data set bytes as received.
    Memory(Vec<u8>),
    /// On disk: a Part-10 file `<input>/<file_name>` under the batch's directory.
    Disk,
}

/// An instance as received: its data set exactly as sent, in its transfer syntax, plus the
/// header (every element before Pixel Data) for the inputs' rules.
#[derive(Debug)]
pub(crate) struct ReceivedInstance {
    /// SOP Class UID from the C-STORE request.
    pub(crate) sop_class_uid: String,
    /// SOP Instance UID from the C-STORE request.
    pub(crate) sop_instance_uid: String,
    /// The transfer syntax negotiated for the presentation context it came on.
    pub(crate) transfer_syntax: String,
    /// Where the data set is.
    pub(crate) data: InstanceData,
    /// The parsed header, without Pixel Data.
    pub(crate) header: InMemDicomObject,
    /// When it was stored (after a restart: its file's time).
    pub(crate) arrived: SystemTime,
    /// With the write-ahead log: the LSN of its commit, until a checkpoint wrote its file
    /// durably (after a restart: none).
    pub(crate) logged: Option<u64>,
}

impl ReceivedInstance {
    /// The file name of the instance in a data directory.
    pub(crate) fn file_name(&self) -> String {
        format!("{}.dcm", safe_name(&self.sop_instance_uid))
    }
}

/// Why the storage, or a data directory, could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data directory could not be prepared or read.
    #[error("data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Opened read-only, the directory is not a node's data directory (a mistyped path?).
    #[error("{dir} is not a node's data directory: it has no {missing}/ directory")]
    NotADataDirectory {
        /// The directory.
        dir: PathBuf,
        /// The subdirectory it lacks.
        missing: &'static str,
    },
}

/// The storage of the patients being gathered.
pub(crate) struct Storage {
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
    /// The pipeline's grouping and maximum wait.
    completion: Completion,
    /// Prior fetches queued for the prior service, and its end of the queue.
    fetches: (
        std::sync::mpsc::Sender<FetchRequest>,
        Mutex<Option<std::sync::mpsc::Receiver<FetchRequest>>>,
    ),
    /// Studies being moved from a PACS into a prior input.
    routes: Mutex<priors::MoveRoutes>,
    /// With a data directory: the write-ahead log that makes instances durable.
    wal: Option<std::sync::Arc<wal::Wal>>,
}

impl Storage {
    /// Storage for a pipeline with these inputs: in memory, or durable in `disk`.
    fn new(inputs: Vec<Input>, disk: Option<DiskLayout>, quiet_period: Option<Duration>) -> Self {
        // On disk, batch directories are numbered on from the start time: a number left
        // in `processing/` by an earlier run is never reused.
        let first = match disk {
            Some(_) => unix_seconds(SystemTime::now()) * 1000,
            None => 0,
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        Storage {
            inputs,
            disk,
            patients: Mutex::new(HashMap::new()),
            held_in_memory: Mutex::new(Vec::new()),
            sequence: AtomicU64::new(first),
            quiet_period,
            memory_limit: usize::MAX,
            completion: Completion::default(),
            fetches: (sender, Mutex::new(Some(receiver))),
            routes: Mutex::new(priors::MoveRoutes::default()),
            wal: None,
        }
    }

    /// In-memory storage for a pipeline with these inputs.
    #[cfg(test)]
    pub(crate) fn in_memory(inputs: Vec<Input>) -> Self {
        Storage::new(inputs, None, None)
    }

    /// The storage for a node's configuration, and what it restored from its data
    /// directory.
    pub(crate) fn for_config(
        inputs: Vec<Input>,
        completion: Completion,
        config: &NodeConfig,
    ) -> Result<(Self, Restored), StorageError> {
        // The quiet period is set before restoring: restored patients are judged by it.
        let (mut storage, restored) = match &config.data_dir {
            Some(dir) => Storage::on_disk(inputs, completion, dir, config.quiet_period)?,
            None => {
                let mut storage = Storage::new(inputs, None, config.quiet_period);
                storage.completion = completion;
                (storage, Restored::default())
            }
        };
        storage.memory_limit = usize::try_from(config.max_instance_in_memory).unwrap_or(usize::MAX);
        Ok((storage, restored))
    }

    /// Makes the files of logged instances durable, so that the log's space can be
    /// reused (a checkpoint); a no-op without a log or with nothing to do. `false` when
    /// it failed (logged).
    pub(crate) fn checkpoint(&self) -> bool {
        if let Some(wal) = self.wal.as_ref().filter(|w| w.pending()) {
            if let Err(error) = wal.checkpoint() {
                tracing::error!(%error, "write-ahead log checkpoint failed; it is tried again");
                return false;
            }
        }
        true
    }

    /// A checkpoint when the log's ring is three quarters used, when nothing arrived for
    /// `quiet`, or `every` after the last.
    pub(crate) fn checkpoint_when_due(
        &self,
        last: &mut std::time::Instant,
        quiet: Duration,
        every: Duration,
    ) {
        let due = self
            .wal
            .as_ref()
            .is_some_and(|w| w.due(quiet) || (w.pending() && last.elapsed() >= every));
        if due && self.checkpoint() {
            *last = std::time::Instant::now();
        }
    }

    /// The key of the group an instance belongs to (its patient, study or series, as the
    /// pipeline groups), from the patient key's value; `Err`: why it has none.
    pub(crate) fn group_key(
        &self,
        patient: &str,
        header: &InMemDicomObject,
    ) -> Result<String, String> {
        dicomnode_core::completion::group_key(patient, self.completion.grouping(), header)
    }

    /// The shortest quiet time an input's rule waits for (maintenance looks that often).
    pub(crate) fn shortest_rule_quiet(&self) -> Option<Duration> {
        self.inputs
            .iter()
            .filter_map(|i| i.enough().quiet_time())
            .min()
    }

    /// Batches in the quarantine (with a data directory).
    pub(crate) fn quarantined(&self) -> Option<usize> {
        let disk = self.disk.as_ref()?;
        Some(
            std::fs::read_dir(disk.quarantine())
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0),
        )
    }

    /// The quarantined batches with their failures (with a data directory; else the
    /// batches held in memory after their last attempt, by patient).
    pub(crate) fn quarantined_batches(&self) -> Vec<disk::QuarantinedBatch> {
        match &self.disk {
            Some(disk) => disk.quarantined().unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The gauges the metrics read from the storage.
    pub(crate) fn gauges(&self) -> crate::metrics::StateGauges {
        let waiting = self.waiting();
        let (used, free) = self
            .data_dir()
            .and_then(|dir| nix::sys::statvfs::statvfs(dir).ok())
            .map(|s| {
                let block = s.fragment_size();
                let total = s.blocks() * block;
                let free = s.blocks_available() * block;
                (
                    Some(total.saturating_sub(s.blocks_free() * block)),
                    Some(free),
                )
            })
            .unwrap_or((None, None));
        crate::metrics::StateGauges {
            patients_waiting: waiting.len(),
            instances_waiting: waiting
                .iter()
                .map(|p| p.inputs.iter().map(|i| i.instances).sum::<usize>())
                .sum(),
            quarantined_batches: self.quarantined(),
            data_dir_used_bytes: used,
            data_dir_free_bytes: free,
        }
    }

    pub(crate) fn data_dir(&self) -> Option<&Path> {
        self.disk.as_ref().map(DiskLayout::root)
    }

    fn patients(&self) -> MutexGuard<'_, HashMap<String, PatientEntry>> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.patients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    use dicomnode_core::synthetic::SyntheticSeries;
    use dicomnode_core::uid::meta_uids;
    use dicomnode_core::{Enough, Matcher, Origin, Sender};

    fn inputs() -> Vec<Input> {
        vec![Input::new("ct")
            .matching(tags::MODALITY, Matcher::exact("CT"))
            .enough_when(Enough::at_least(2))]
    }

    fn origin() -> Origin {
        Origin::Association(Sender {
            ae_title: "SCU".into(),
            address: "127.0.0.1:1".into(),
        })
    }

    /// Receives a synthetic instance through `storage` as the SCP would.
    fn receive(
        storage: &Storage,
        obj: &dicomnode_core::DicomInstance,
    ) -> (ReceivedInstance, receive::Staged) {
        let mut bytes = Vec::new();
        obj.write_dataset(&mut bytes).unwrap();
        let (class, uid, ts) = meta_uids(obj.meta());
        let mut incoming = storage.incoming(class, uid, ts);
        let half = bytes.len() / 2;
        incoming.push(bytes[..half].to_vec(), false);
        incoming.push(bytes[half..].to_vec(), true);
        storage.receive(incoming, class, uid, ts).unwrap()
    }

    /// Receives a synthetic instance and offers it to the inputs of patient `P`.
    fn offer(storage: &Storage, obj: &dicomnode_core::DicomInstance) -> Offer {
        let (instance, staged) = receive(storage, obj);
        storage.offer("P", instance, staged)
    }

    fn exercise(storage: &Storage) -> PatientBatch {
        let series = SyntheticSeries::ct("P", 3).size(4, 4).build().unwrap();
        let mut mr = series[2].clone();
        mr.put(DataElement::new(tags::MODALITY, VR::CS, "MR"));
        storage.begin_adding("P");
        storage.begin_adding("P");
        assert!(matches!(offer(storage, &series[0]), Offer::Stored(_)));
        assert!(matches!(offer(storage, &series[0]), Offer::Stored(_)));
        assert_eq!(
            storage.held_for("P"),
            1,
            "the same SOP instance is stored once"
        );
        assert!(matches!(offer(storage, &mr), Offer::Rejected(_)));
        assert!(matches!(offer(storage, &series[1]), Offer::Stored(_)));
        assert!(
            storage.finish_adding("P", &origin()).is_none(),
            "one association still live"
        );
        let batch = storage.finish_adding("P", &origin()).expect("complete");
        assert!(
            storage.finish_adding("P", &origin()).is_none(),
            "taken once"
        );
        assert_eq!(batch.instance_count(), 2);
        assert_eq!(batch.origin, origin());
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
    fn an_unreadable_data_set_with_parts_in_the_log_is_refused_and_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) =
            Storage::on_disk(inputs(), Completion::default(), dir.path(), None).unwrap();
        let (class, uid, ts) = (
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
        );
        let mut incoming = storage.incoming(class, uid, ts);
        // 200 KB that are no data set: three parts reach the log before the end.
        for _ in 0..3 {
            incoming.push(vec![0xFF; 64 << 10], false);
        }
        incoming.push(vec![0xFF; 8 << 10], true);
        assert!(matches!(
            storage.receive(incoming, class, uid, ts),
            Err(ReceiveError::Unreadable(_))
        ));
        drop(storage);
        let (_storage, restored) =
            Storage::on_disk(inputs(), Completion::default(), dir.path(), None).unwrap();
        assert_eq!(restored.replayed, 0);
        assert_eq!(restored.instances, 0);
        assert!(std::fs::read_dir(dir.path().join("patients"))
            .unwrap()
            .next()
            .is_none());
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn on_disk_batches_are_files_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, restored) =
            Storage::on_disk(inputs(), Completion::default(), dir.path(), None).unwrap();
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
        let (_storage, restored) =
            Storage::on_disk(inputs(), Completion::default(), dir.path(), None).unwrap();
        assert_eq!(restored.interrupted_batches, 1);
        assert_eq!(restored.ready.len(), 1);
        assert_eq!(restored.ready[0].instance_count(), 2);
        assert_eq!(restored.ready[0].origin, Origin::Restored);
    }
}

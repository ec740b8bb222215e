//! The durable layout of a data directory, and every file-system operation on it:
//!
//! ```text
//! <data>/tmp/                               instances being received (removed at start-up)
//! <data>/patients/<patient>/key             the patient key, as received
//! <data>/patients/<patient>/<input>/<sop>.dcm   Part-10 files (hard links across inputs)
//! <data>/processing/<patient>.<n>/          a batch taken out for processing
//! <data>/quarantine/<patient>.<time>/       batches that failed every attempt (+ failures.log)
//! <data>/requeue/                           batches put back by `dicomnode requeue`
//! ```
//!
//! Every instance is written to `tmp/`, fsynced, renamed into place and its directory
//! fsynced before the node answers success.
//!
//! The node opens its data directory with `DiskLayout::open` (creating it); tools open
//! an existing one with [`DiskLayout::open_existing`], which creates nothing, to list the
//! quarantine ([`DiskLayout::quarantined`]) and put batches back
//! ([`DiskLayout::requeue_quarantined`]).

use super::names::{patient_dir_name, safe_name};
use super::StorageError;
use dicom_object::meta::FileMetaTable;
use dicomnode_core::uid::trim_uid;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The file holding a patient's key beside its data.
const KEY_FILE: &str = "key";
/// The file collecting a batch's failure records; its `attempt ` lines count the attempts
/// made, across restarts of the node.
const FAILURES_FILE: &str = "failures.log";
/// Failure records of attempts before a person requeued the batch.
const HISTORY_FILE: &str = "history.log";

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    root: PathBuf,
}

/// A batch in the quarantine of a data directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuarantinedBatch {
    /// Its directory, under `quarantine/`.
    pub dir: PathBuf,
    /// The patient key (empty if its key file is unreadable).
    pub patient_key: String,
    /// How many instance files it holds (a file in two inputs counts twice).
    pub files: usize,
    /// The first line of each failed attempt's record (`attempt N of M failed ...`).
    pub failures: Vec<String>,
}

/// Why a stored file is set aside in the quarantine when the node restores its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aside {
    /// It cannot be read as DICOM.
    Unreadable,
    /// No input admits it any more (the rules changed).
    Rejected,
}

impl Aside {
    /// The quarantine directory's suffix and the subdirectory the files go to.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Aside::Unreadable => ("unreadable", "unreadable"),
            Aside::Rejected => ("rejected-at-restart", "rejected"),
        }
    }
}

/// The subdirectories every data directory has.
const SUBDIRS: [&str; 5] = ["tmp", "patients", "processing", "quarantine", "requeue"];

impl DiskLayout {
    /// Opens (and creates) a data directory, for the node.
    pub(crate) fn open(root: &Path) -> io::Result<DiskLayout> {
        let layout = DiskLayout {
            root: root.to_path_buf(),
        };
        for dir in SUBDIRS {
            fs::create_dir_all(root.join(dir))?;
        }
        fsync_dir(root)?;
        Ok(layout)
    }

    /// Opens an existing data directory without creating or changing anything: a path
    /// that is not a node's data directory (a typing error) is an error, not a new one.
    pub fn open_existing(root: &Path) -> Result<DiskLayout, StorageError> {
        fs::metadata(root).map_err(|source| StorageError::Io {
            dir: root.to_path_buf(),
            source,
        })?;
        if let Some(missing) = SUBDIRS.into_iter().find(|d| !root.join(d).is_dir()) {
            return Err(StorageError::NotADataDirectory {
                dir: root.to_path_buf(),
                missing,
            });
        }
        Ok(DiskLayout {
            root: root.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub(super) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Where patients gather.
    pub(crate) fn patients(&self) -> PathBuf {
        self.root.join("patients")
    }
    /// Where batches being processed are.
    pub(crate) fn processing(&self) -> PathBuf {
        self.root.join("processing")
    }
    /// Where batches that failed every attempt are.
    pub(crate) fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }
    /// Where `dicomnode requeue` puts batches back.
    pub(crate) fn requeue(&self) -> PathBuf {
        self.root.join("requeue")
    }

    /// The directory of a patient.
    pub(crate) fn patient_dir(&self, key: &str) -> PathBuf {
        self.patients().join(patient_dir_name(key))
    }

    /// Creates a temporary Part-10 file with its preamble and meta group written; the data
    /// set is appended by the caller as it arrives.
    pub(crate) fn new_temp_file(
        &self,
        meta: &FileMetaTable,
    ) -> io::Result<(BufWriter<File>, PathBuf)> {
        let path = self.tmp().join(format!(
            "{}.tmp",
            uuid_like(meta.media_storage_sop_instance_uid())
        ));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut writer = BufWriter::with_capacity(256 * 1024, file);
        let written = (|| {
            writer.write_all(&[0u8; 128])?;
            writer.write_all(b"DICM")?;
            meta.write(&mut writer).map_err(io::Error::other)
        })();
        if let Err(error) = written {
            remove_temp(&path);
            return Err(error);
        }
        Ok((writer, path))
    }

    /// Records, durably, that the batch in `batch_dir` was processed.
    pub(crate) fn mark_succeeded(&self, batch_dir: &Path) -> io::Result<()> {
        write_synced(batch_dir, SUCCEEDED_FILE, b"")
    }

    /// Records, durably, what an executor submitted for the batch in `batch_dir`.
    pub(crate) fn set_executor_record(&self, batch_dir: &Path, record: &str) -> io::Result<()> {
        write_synced(batch_dir, EXECUTOR_FILE, record.as_bytes())
    }

    /// What an executor submitted for the batch in `batch_dir`, if anything.
    pub(crate) fn executor_record(batch_dir: &Path) -> io::Result<Option<String>> {
        match fs::read(batch_dir.join(EXECUTOR_FILE)) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Forgets, durably, what an executor submitted for the batch in `batch_dir`.
    pub(crate) fn clear_executor_record(&self, batch_dir: &Path) -> io::Result<()> {
        match fs::remove_file(batch_dir.join(EXECUTOR_FILE)) {
            Ok(()) => fsync_dir(batch_dir),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether the batch in `batch_dir` was processed (and only its deletion is left).
    pub(crate) fn succeeded(batch_dir: &Path) -> bool {
        batch_dir.join(SUCCEEDED_FILE).exists()
    }

    /// Writes a small file `name` into a patient's directory durably (a temporary file,
    /// fsynced, renamed over the old one, the directory fsynced).
    pub(crate) fn write_beside(&self, key: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        write_synced(&self.ensure_patient_dir(key)?, name, bytes)
    }

    pub(super) fn ensure_patient_dir(&self, key: &str) -> io::Result<PathBuf> {
        let patient = self.patient_dir(key);
        if !patient.join(KEY_FILE).exists() {
            fs::create_dir_all(&patient)?;
            write_key(&patient, key)?;
            fsync_dir(&self.patients())?;
        }
        Ok(patient)
    }

    /// Takes a patient's directory out for processing (a rename); returns where it went.
    pub(crate) fn take_out(&self, key: &str, sequence: u64) -> io::Result<PathBuf> {
        let target = self
            .processing()
            .join(format!("{}.{sequence}", patient_dir_name(key)));
        fs::rename(self.patient_dir(key), &target)?;
        fsync_dir(&self.patients())?;
        fsync_dir(&self.processing())?;
        Ok(target)
    }

    /// How many attempts at processing a batch directory have failed so far.
    pub(crate) fn failed_attempts(batch_dir: &Path) -> u32 {
        u32::try_from(failure_lines(batch_dir).len()).unwrap_or(u32::MAX)
    }

    /// Appends a failure record to a batch directory.
    pub(crate) fn record_failure(&self, batch_dir: &Path, record: &str) -> io::Result<()> {
        append_synced(&batch_dir.join(FAILURES_FILE), record.as_bytes())
    }

    /// Copies a failed attempt's output file into a batch directory, as
    /// `output.attempt-<n>.log`; returns that name.
    pub(crate) fn keep_output(
        &self,
        batch_dir: &Path,
        attempt: u32,
        output: &Path,
    ) -> io::Result<String> {
        let name = format!("output.attempt-{attempt}.log");
        fs::copy(output, batch_dir.join(&name))?;
        Ok(name)
    }

    /// Moves a batch directory to the quarantine; returns where it went.
    pub(crate) fn quarantine_batch(
        &self,
        batch_dir: &Path,
        key: &str,
        suffix: &str,
    ) -> io::Result<PathBuf> {
        let target = self
            .quarantine()
            .join(format!("{}.{suffix}", patient_dir_name(key)));
        fs::rename(batch_dir, &target)?;
        fsync_dir(&self.quarantine())?;
        Ok(target)
    }

    /// Removes a batch directory (after success, or expiry).
    pub(crate) fn remove_batch(&self, batch_dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(batch_dir)?;
        if let Some(parent) = batch_dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// How many instance files of a batch directory are not among `held`.
    pub(crate) fn count_strays(&self, batch_dir: &Path, held: &HashSet<PathBuf>) -> usize {
        DiskLayout::files_of(batch_dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, path)| !held.contains(path))
            .count()
    }

    /// After success, when files the batch did not hold are beside it: deletes what it
    /// held (and its failure records) and moves the rest to `requeue/`, for processing.
    pub(crate) fn put_back_strays(
        &self,
        batch_dir: &Path,
        held: &HashSet<PathBuf>,
    ) -> io::Result<()> {
        for path in held {
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_file(batch_dir.join(FAILURES_FILE));
        let name = batch_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        fs::rename(batch_dir, self.requeue().join(name))?;
        fsync_dir(&self.requeue())
    }

    /// Removes half-written files left by a crash.
    pub(crate) fn clean_tmp(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.tmp())? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
            removed += 1;
        }
        fsync_dir(&self.tmp())?;
        Ok(removed)
    }

    /// Moves every file of a batch directory (from `processing/` or `requeue/`) back into
    /// its patient's directory; returns the patient key.
    pub(crate) fn merge_back(&self, batch_dir: &Path) -> io::Result<String> {
        let key = read_key(batch_dir)?;
        let patient = self.ensure_patient_dir(&key)?;
        // The failure records travel with the data: the attempts count on.
        for record in [FAILURES_FILE, HISTORY_FILE] {
            move_records(&batch_dir.join(record), &patient.join(record))?;
        }
        // A cluster's job submitted for the batch goes with it, to be adopted; beside
        // another batch's record (two batches of one patient), both are kept, a blank
        // line apart, for the executor to settle.
        let record = batch_dir.join(EXECUTOR_FILE);
        if record.exists() {
            let target = patient.join(EXECUTOR_FILE);
            if target.exists() {
                let mut both = fs::read(&target)?;
                both.push(b'\n');
                both.extend(fs::read(&record)?);
                write_synced(&patient, EXECUTOR_FILE, &both)?;
                fs::remove_file(&record)?;
            } else {
                fs::rename(&record, &target)?;
                fsync_dir(&patient)?;
            }
        }
        for input in fs::read_dir(batch_dir)? {
            let input = input?;
            if !input.file_type()?.is_dir() {
                continue;
            }
            let target_dir = patient.join(input.file_name());
            fs::create_dir_all(&target_dir)?;
            for file in fs::read_dir(input.path())? {
                let file = file?;
                let target = target_dir.join(file.file_name());
                if target.exists() {
                    fs::remove_file(file.path())?;
                } else {
                    fs::rename(file.path(), &target)?;
                }
            }
            fsync_dir(&target_dir)?;
        }
        fs::remove_dir_all(batch_dir)?;
        if let Some(parent) = batch_dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(key)
    }

    /// Makes an instance file's links in a patient's directory those of the input
    /// directories named `wanted`: links where they are missing, none elsewhere.
    pub(crate) fn relink(patient_dir: &Path, file: &Path, wanted: &[String]) -> io::Result<()> {
        let Some(file_name) = file.file_name() else {
            return Ok(());
        };
        for input_dir in wanted {
            let link = patient_dir.join(input_dir).join(file_name);
            if !link.exists() {
                fs::create_dir_all(patient_dir.join(input_dir))?;
                fs::hard_link(file, &link)?;
            }
        }
        for input_dir in DiskLayout::subdirs(patient_dir)? {
            let is_wanted = input_dir
                .file_name()
                .is_some_and(|name| wanted.iter().any(|w| name == w.as_str()));
            let link = input_dir.join(file_name);
            if !is_wanted && link.exists() {
                fs::remove_file(&link)?;
            }
        }
        Ok(())
    }

    /// Moves a stored instance file out of a patient's directory into the quarantine (its
    /// other links removed), where it cannot be swept out with a batch and deleted.
    pub(crate) fn set_aside(
        &self,
        patient_dir: &Path,
        key: &str,
        file: &Path,
        why: Aside,
    ) -> io::Result<()> {
        let (suffix, subdir) = why.names();
        let aside = self
            .quarantine()
            .join(format!("{}.{suffix}", patient_dir_name(key)));
        fs::create_dir_all(aside.join(subdir))?;
        write_key(&aside, key)?;
        for (_, linked) in DiskLayout::files_of(patient_dir)? {
            if linked.file_name() == file.file_name() && linked != file {
                fs::remove_file(&linked)?;
            }
        }
        let file_name = file.file_name().unwrap_or_default();
        fs::rename(file, aside.join(subdir).join(file_name))?;
        fsync_dir(&aside.join(subdir))
    }

    /// The batches in the quarantine, with their patient keys and failures.
    pub fn quarantined(&self) -> io::Result<Vec<QuarantinedBatch>> {
        let mut batches = Vec::new();
        for dir in DiskLayout::subdirs(&self.quarantine())? {
            batches.push(QuarantinedBatch {
                patient_key: read_key(&dir).unwrap_or_default(),
                files: DiskLayout::files_of(&dir).map_or(0, |f| f.len()),
                failures: failure_lines(&dir),
                dir,
            });
        }
        Ok(batches)
    }

    /// Puts a quarantined batch back for processing: a person decided to try again, so
    /// the attempts start over (the failure records are kept as its history). A running
    /// node adopts it within its maintenance interval, a stopped one at its start.
    /// Returns where it went.
    pub fn requeue_quarantined(&self, batch: &QuarantinedBatch) -> io::Result<PathBuf> {
        move_records(
            &batch.dir.join(FAILURES_FILE),
            &batch.dir.join(HISTORY_FILE),
        )?;
        let name = batch
            .dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let target = self.requeue().join(name);
        fs::rename(&batch.dir, &target)?;
        fsync_dir(&self.requeue())?;
        Ok(target)
    }

    /// The directories directly under `dir`.
    pub(crate) fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    /// Every instance file of a patient's directory: (input directory name, path).
    pub(crate) fn files_of(patient_dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
        let mut files = Vec::new();
        for input in Self::subdirs(patient_dir)? {
            let name = input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for file in fs::read_dir(&input)? {
                let path = file?.path();
                if path.extension().is_some_and(|e| e == "dcm") {
                    files.push((name.clone(), path));
                }
            }
        }
        Ok(files)
    }
}

/// Beside a batch processed but not yet deleted.
const SUCCEEDED_FILE: &str = "succeeded";
/// What an executor submitted for a batch (a cluster's job), kept beside its data so that
/// a restarted node adopts the job instead of submitting it again.
const EXECUTOR_FILE: &str = "executor-job";

/// Fsyncs a directory, so that renames and creations in it survive a crash.
pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The patient key kept in `dir` (a patient's, a batch's or a quarantined batch's).
pub(crate) fn read_key(dir: &Path) -> io::Result<String> {
    fs::read(dir.join(KEY_FILE)).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes the patient key into `dir` durably.
fn write_key(dir: &Path, key: &str) -> io::Result<()> {
    write_synced(dir, KEY_FILE, key.as_bytes())
}

/// Writes `dir/name` durably: a unique temporary file (two associations may write the
/// same name at once), fsynced, renamed over the old one, the directory fsynced.
fn write_synced(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

/// Appends `bytes` to a file (created if need be) and fsyncs it.
fn append_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Appends the failure records in `from` (if any) to `to`, then removes `from` at once: a
/// move interrupted later must not append the same records again.
fn move_records(from: &Path, to: &Path) -> io::Result<()> {
    let records = match fs::read(from) {
        Ok(records) => records,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    append_synced(to, &records)?;
    fs::remove_file(from)?;
    match from.parent() {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}

/// The `attempt ` lines of a batch directory's failure records (one per failed attempt).
fn failure_lines(batch_dir: &Path) -> Vec<String> {
    fs::read_to_string(batch_dir.join(FAILURES_FILE))
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("attempt "))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a temporary file of the receive path; it may be gone already.
pub(crate) fn remove_temp(path: &Path) {
    let _ = fs::remove_file(path);
}

/// When a stored file was last written (the arrival of its instance).
pub(crate) fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A file name from a UID that is unique even when the same UID arrives twice at once.
pub(super) fn uuid_like(uid: &str) -> String {
    format!(
        "{}-{}",
        safe_name(trim_uid(uid)),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mistyped = dir.path().join("no-such-dir");
        assert!(matches!(
            DiskLayout::open_existing(&mistyped),
            Err(StorageError::Io { .. })
        ));
        assert!(!mistyped.exists());
        assert!(matches!(
            DiskLayout::open_existing(dir.path()),
            Err(StorageError::NotADataDirectory { missing: "tmp", .. })
        ));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        DiskLayout::open(dir.path()).unwrap();
        let layout = DiskLayout::open_existing(dir.path()).unwrap();
        assert!(layout.quarantined().unwrap().is_empty());
    }

    #[test]
    fn requeue_keeps_the_records_as_history_and_restarts_the_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let batch = layout.quarantine().join("p.1");
        fs::create_dir_all(batch.join("in-ct")).unwrap();
        write_key(&batch, "P").unwrap();
        fs::write(batch.join("in-ct").join("1.dcm"), b"").unwrap();
        layout
            .record_failure(&batch, "attempt 1 of 1 failed: no\ndetails\n")
            .unwrap();
        let listed = layout.quarantined().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].patient_key, "P");
        assert_eq!(listed[0].files, 1);
        assert_eq!(listed[0].failures, ["attempt 1 of 1 failed: no"]);
        let target = layout.requeue_quarantined(&listed[0]).unwrap();
        assert_eq!(DiskLayout::failed_attempts(&target), 0);
        let history = fs::read_to_string(target.join(HISTORY_FILE)).unwrap();
        assert!(history.starts_with("attempt 1 of 1 failed"));
        assert!(layout.quarantined().unwrap().is_empty());
        assert_eq!(read_key(&target).unwrap(), "P");
    }

    #[test]
    fn job_records_travel_with_their_batches_and_two_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        // Two interrupted batches of one patient, each with the record of its job.
        for (n, record) in [(1, "name=a\nid=1\n"), (2, "name=b\nid=2\n")] {
            let batch = layout.processing().join(format!("p.{n}"));
            fs::create_dir_all(batch.join("in-ct")).unwrap();
            write_key(&batch, "P").unwrap();
            fs::write(batch.join("in-ct").join(format!("{n}.dcm")), b"").unwrap();
            layout.set_executor_record(&batch, record).unwrap();
            assert_eq!(
                DiskLayout::executor_record(&batch).unwrap().as_deref(),
                Some(record)
            );
            layout.merge_back(&batch).unwrap();
            assert!(!batch.exists());
        }
        let patient = layout.patient_dir("P");
        let both = DiskLayout::executor_record(&patient).unwrap().unwrap();
        assert_eq!(both, "name=a\nid=1\n\nname=b\nid=2\n");
        assert_eq!(DiskLayout::files_of(&patient).unwrap().len(), 2);
        layout.clear_executor_record(&patient).unwrap();
        assert_eq!(DiskLayout::executor_record(&patient).unwrap(), None);
    }
}

//! The durable layout of a data directory:
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

use super::names::{input_dir_name, patient_dir_name, safe_name};
use dicom_object::meta::FileMetaTable;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file holding a patient's key beside its data.
pub const KEY_FILE: &str = "key";
/// The file collecting a batch's failure records; its `attempt ` lines count the attempts
/// made, across restarts of the node.
pub const FAILURES_FILE: &str = "failures.log";
/// Failure records of attempts before a person requeued the batch.
pub const HISTORY_FILE: &str = "history.log";

/// A data directory.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    root: PathBuf,
}

/// Fsyncs a directory, so that renames and creations in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DiskLayout {
    /// Opens (and creates) a data directory.
    pub fn open(root: &Path) -> io::Result<DiskLayout> {
        let layout = DiskLayout {
            root: root.to_path_buf(),
        };
        for dir in [
            layout.tmp(),
            layout.patients(),
            layout.processing(),
            layout.quarantine(),
            layout.requeue(),
        ] {
            fs::create_dir_all(&dir)?;
        }
        fsync_dir(root)?;
        Ok(layout)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Where patients gather.
    pub fn patients(&self) -> PathBuf {
        self.root.join("patients")
    }
    /// Where batches being processed are.
    pub fn processing(&self) -> PathBuf {
        self.root.join("processing")
    }
    /// Where batches that failed every attempt are.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }
    /// Where `dicomnode requeue` puts batches back.
    pub fn requeue(&self) -> PathBuf {
        self.root.join("requeue")
    }

    /// The directory of a patient.
    pub fn patient_dir(&self, key: &str) -> PathBuf {
        self.patients().join(patient_dir_name(key))
    }

    /// Creates a temporary Part-10 file with its preamble and meta group written; the data
    /// set is appended by the caller as it arrives.
    pub fn new_temp_file(&self, meta: &FileMetaTable) -> io::Result<(BufWriter<File>, PathBuf)> {
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
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        Ok((writer, path))
    }

    /// Moves a received file (fsynced) into the patient's input directories: renamed into
    /// the first, hard-linked into the others; each directory fsynced.
    pub fn place(
        &self,
        key: &str,
        temp: &Path,
        inputs: &[&str],
        file_name: &str,
    ) -> io::Result<()> {
        let patient = self.ensure_patient_dir(key)?;
        let mut first: Option<PathBuf> = None;
        for input in inputs {
            let dir = patient.join(input_dir_name(input));
            if !dir.exists() {
                // Another association may create it at the same moment.
                match fs::create_dir(&dir) {
                    Ok(()) => fsync_dir(&patient)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            let target = dir.join(file_name);
            match &first {
                None => {
                    fs::rename(temp, &target)?;
                    first = Some(target);
                }
                Some(source) => {
                    let _ = fs::remove_file(&target);
                    fs::hard_link(source, &target)?;
                }
            }
            fsync_dir(&dir)?;
        }
        Ok(())
    }

    fn ensure_patient_dir(&self, key: &str) -> io::Result<PathBuf> {
        let patient = self.patient_dir(key);
        if !patient.join(KEY_FILE).exists() {
            fs::create_dir_all(&patient)?;
            // Unique: two associations may create the same patient at once.
            let key_tmp = patient.join(format!("key.{}.tmp", uuid::Uuid::new_v4().simple()));
            let mut file = File::create(&key_tmp)?;
            file.write_all(key.as_bytes())?;
            file.sync_all()?;
            fs::rename(&key_tmp, patient.join(KEY_FILE))?;
            fsync_dir(&patient)?;
            fsync_dir(&self.patients())?;
        }
        Ok(patient)
    }

    /// Takes a patient's directory out for processing (a rename); returns where it went.
    pub fn take_out(&self, key: &str, sequence: u64) -> io::Result<PathBuf> {
        let target = self
            .processing()
            .join(format!("{}.{sequence}", patient_dir_name(key)));
        fs::rename(self.patient_dir(key), &target)?;
        fsync_dir(&self.patients())?;
        fsync_dir(&self.processing())?;
        Ok(target)
    }

    /// How many attempts at processing a batch directory have failed so far.
    pub fn failed_attempts(batch_dir: &Path) -> u32 {
        fs::read_to_string(batch_dir.join(FAILURES_FILE))
            .map(|text| text.lines().filter(|l| l.starts_with("attempt ")).count())
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    /// Appends a failure record to a batch directory.
    pub fn record_failure(&self, batch_dir: &Path, record: &str) -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(batch_dir.join(FAILURES_FILE))?;
        file.write_all(record.as_bytes())?;
        file.sync_all()
    }

    /// Moves a batch directory to the quarantine; returns where it went.
    pub fn quarantine_batch(
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
    pub fn remove_batch(&self, batch_dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(batch_dir)?;
        if let Some(parent) = batch_dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// Removes half-written files left by a crash.
    pub fn clean_tmp(&self) -> io::Result<usize> {
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
    pub fn merge_back(&self, batch_dir: &Path) -> io::Result<String> {
        let key =
            fs::read(batch_dir.join(KEY_FILE)).map(|b| String::from_utf8_lossy(&b).into_owned())?;
        let patient = self.ensure_patient_dir(&key)?;
        // The failure records travel with the data: the attempts count on.
        for record in [FAILURES_FILE, HISTORY_FILE] {
            if let Ok(text) = fs::read(batch_dir.join(record)) {
                let mut file = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(patient.join(record))?;
                file.write_all(&text)?;
                file.sync_all()?;
                // Gone from the source at once: a merge interrupted later must not
                // append the same records again.
                fs::remove_file(batch_dir.join(record))?;
                fsync_dir(batch_dir)?;
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

    /// The directories directly under `dir`.
    pub fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
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
    pub fn files_of(patient_dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
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

/// A file name from a UID that is unique even when the same UID arrives twice at once.
fn uuid_like(uid: &str) -> String {
    format!(
        "{}-{}",
        safe_name(uid.trim_end_matches('\0')),
        uuid::Uuid::new_v4().simple()
    )
}

//! Placing instance files into a patient's input directories: durably (file and
//! directories fsynced), or for the write-ahead log (no fsync), and writing a logged
//! instance into place again at start-up.

use super::disk::{fsync_dir, remove_temp, uuid_like, DiskLayout};
use super::names::input_dir_name;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

impl DiskLayout {
    /// Moves a received file (fsynced) into the patient's input directories: renamed into
    /// the first, hard-linked into the others; each directory fsynced.
    pub(crate) fn place(
        &self,
        key: &str,
        temp: &Path,
        inputs: &[&str],
        file_name: &str,
    ) -> io::Result<()> {
        self.place_with(key, temp, inputs, file_name, true)
    }

    /// As [`DiskLayout::place`]; without `durable`, no directory is fsynced (the
    /// write-ahead log makes the instance durable instead).
    pub(crate) fn place_with(
        &self,
        key: &str,
        temp: &Path,
        inputs: &[&str],
        file_name: &str,
        durable: bool,
    ) -> io::Result<()> {
        let patient = self.ensure_patient_dir(key)?;
        let mut first: Option<PathBuf> = None;
        for input in inputs {
            let dir = patient.join(input_dir_name(input));
            if !dir.exists() {
                // Another association may create it at the same moment.
                match fs::create_dir(&dir) {
                    Ok(()) if durable => fsync_dir(&patient)?,
                    Ok(()) => {}
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
            if durable {
                fsync_dir(&dir)?;
            }
        }
        Ok(())
    }

    /// Writes a logged instance's file into place again (write-ahead log replay): the
    /// bytes to a temporary file, renamed into the first input directory (given as
    /// directory names), hard-linked into the others. Not fsynced: the checkpoint after
    /// the replay is.
    pub(crate) fn materialize(
        &self,
        key: &str,
        input_dirs: &[&str],
        file_name: &str,
        bytes: &[u8],
    ) -> io::Result<()> {
        let patient = self.ensure_patient_dir(key)?;
        let temp = self.tmp().join(format!("{}.tmp", uuid_like(file_name)));
        fs::write(&temp, bytes)?;
        let mut first: Option<PathBuf> = None;
        for dir_name in input_dirs {
            let dir = patient.join(dir_name);
            fs::create_dir_all(&dir)?;
            let target = dir.join(file_name);
            match &first {
                None => {
                    fs::rename(&temp, &target)?;
                    first = Some(target);
                }
                Some(source) => {
                    let _ = fs::remove_file(&target);
                    fs::hard_link(source, &target)?;
                }
            }
        }
        if first.is_none() {
            remove_temp(&temp);
        }
        Ok(())
    }
}

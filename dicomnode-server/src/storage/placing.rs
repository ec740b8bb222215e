//! Placing instance files into a patient's input directories: a received file durably
//! (file and directories fsynced), or a logged instance's file written from the
//! write-ahead log (not fsynced: the log holds it until a checkpoint).

use super::disk::{fsync_dir, remove_temp, uuid_like, DiskLayout};
use super::names::input_dir_name;
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use dicom_object::meta::{FileMetaTable, FileMetaTableBuilder};
use std::fs;
use std::io::{self, Write};
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

    /// Writes a logged instance's file into place (from the write-ahead log): its bytes,
    /// given in pieces, to a temporary file, renamed into the first input directory
    /// (given as directory names), hard-linked into the others. Not fsynced: the log
    /// holds it until a checkpoint has made it durable.
    pub(crate) fn materialize(
        &self,
        key: &str,
        input_dirs: &[&str],
        file_name: &str,
        pieces: &[&[u8]],
    ) -> io::Result<()> {
        let patient = self.ensure_patient_dir(key)?;
        let temp = self.tmp().join(format!("{}.tmp", uuid_like(file_name)));
        let written = fs::File::create(&temp)
            .and_then(|mut file| pieces.iter().try_for_each(|piece| file.write_all(piece)));
        if let Err(error) = written {
            remove_temp(&temp);
            return Err(error);
        }
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

/// The file meta group of an instance received as `sop_class`/`sop_instance` in
/// `transfer_syntax`, naming this node as the implementation that wrote it.
pub(crate) fn file_meta(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> io::Result<FileMetaTable> {
    FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(io::Error::other)
}

/// What precedes the data set in a Part-10 file: preamble, magic and meta group.
pub(crate) fn part10_head(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
) -> io::Result<Vec<u8>> {
    let meta = file_meta(sop_class, sop_instance, transfer_syntax)?;
    let mut head = vec![0u8; 128];
    head.extend_from_slice(b"DICM");
    meta.write(&mut head).map_err(io::Error::other)?;
    Ok(head)
}

//! Receiving: a data set is written where it will be stored as its fragments arrive (in
//! memory, or a temporary Part-10 file that the [`Incoming`] owns until it is complete),
//! then completed (fsynced) and its header read for the inputs' rules.

use super::disk;
use super::{InstanceData, ReceivedInstance, Storage};
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicomnode_core::uid::meta_uids;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why a received data set could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    /// Writing failed (disk full, I/O error, too large for memory): answer "out of
    /// resources".
    #[error("cannot store the data set: {0}")]
    Resources(#[source] io::Error),
    /// The data set cannot be parsed: answer "cannot understand".
    #[error("cannot parse the data set: {0}")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A data set being received, written where it will be stored as its bytes arrive. It
/// owns its temporary file: dropped before it is completed, it leaves no file behind.
pub(crate) struct Incoming {
    sink: Sink,
    failed: Option<io::Error>,
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
    pub(crate) fn push(&mut self, data: Vec<u8>) {
        if self.failed.is_some() {
            return;
        }
        match &mut self.sink {
            Sink::Memory(bytes) if bytes.len().saturating_add(data.len()) > self.limit => {
                *bytes = Vec::new();
                self.failed = Some(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!(
                        "the data set is larger than the {} MiB an instance may take in memory (store with a data directory instead)",
                        self.limit >> 20
                    ),
                ));
            }
            Sink::Memory(bytes) if bytes.is_empty() => *bytes = data,
            Sink::Memory(bytes) => bytes.extend_from_slice(&data),
            Sink::File { writer, .. } => {
                if let Err(error) = writer.write_all(&data) {
                    self.failed = Some(error);
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
            disk::remove_temp(path);
        }
    }
}

impl Storage {
    /// Prepares to receive a data set: in memory, or a temporary Part-10 file.
    pub(crate) fn incoming(
        &self,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
    ) -> Incoming {
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
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build();
        let opened = meta
            .map_err(io::Error::other)
            .and_then(|meta| layout.new_temp_file(&meta));
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
    /// On disk it returns the temporary file too, for [`Storage::offer`] to place.
    pub(crate) fn receive(
        &self,
        incoming: Incoming,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
    ) -> Result<(ReceivedInstance, Option<PathBuf>), ReceiveError> {
        let mut incoming = incoming;
        if let Some(error) = incoming.failed.take() {
            // Dropping it removes what was written.
            drop(incoming);
            return Err(ReceiveError::Resources(error));
        }
        // Taken out: from here on, this function decides what happens to the file.
        let sink = std::mem::replace(&mut incoming.sink, Sink::Memory(Vec::new()));
        let (data, header, temp) = match sink {
            Sink::Memory(bytes) => {
                let header = read_header(std::io::Cursor::new(&bytes), transfer_syntax)
                    .map_err(|e| ReceiveError::Unreadable(e.into()))?;
                (InstanceData::Memory(bytes), header, None)
            }
            Sink::File { writer, path } => {
                let logged = self.wal.is_some();
                let finished = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    // The data and the size it needs; the rename into place and its
                    // directory's fsync make the name durable. With the write-ahead log,
                    // an instance it takes is made durable there instead.
                    .and_then(|file| match file.metadata() {
                        Ok(meta) if logged && meta.len() <= super::wal::MAX_LOGGED => Ok(()),
                        _ => file.sync_data(),
                    });
                if let Err(error) = finished {
                    disk::remove_temp(&path);
                    return Err(ReceiveError::Resources(error));
                }
                match read_stored(&path) {
                    Ok(instance) => (InstanceData::Disk, instance.header, Some(path)),
                    Err(error) => {
                        disk::remove_temp(&path);
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
            arrived: std::time::SystemTime::now(),
        };
        Ok((instance, temp))
    }
}

/// Reads the elements before Pixel Data of a data set encoded in `transfer_syntax`: all
/// the rules need, without decoding the pixels.
pub(crate) fn read_header<R: std::io::Read + std::io::Seek>(
    source: R,
    transfer_syntax: &str,
) -> Result<InMemDicomObject, dicomnode_core::structure::HeaderError> {
    // Hostile lengths and nesting are refused before the parser sees them.
    dicomnode_core::structure::read_header(source, transfer_syntax)
}

/// Reads a stored Part-10 file's meta group and header.
pub(super) fn read_stored(
    path: &Path,
) -> Result<ReceivedInstance, Box<dyn std::error::Error + Send + Sync>> {
    // Hostile lengths and nesting are refused before the parser sees them.
    dicomnode_core::structure::check_file(path)?;
    // Stops before Pixel Data: a 1 GiB instance is not read into memory.
    let options = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA);
    let obj = options.open_file(path)?;
    let (sop_class_uid, sop_instance_uid, transfer_syntax) = meta_uids(obj.meta());
    Ok(ReceivedInstance {
        sop_class_uid: sop_class_uid.to_string(),
        sop_instance_uid: sop_instance_uid.to_string(),
        transfer_syntax: transfer_syntax.to_string(),
        data: InstanceData::Disk,
        header: obj.into_inner(),
        arrived: disk::modified(path).unwrap_or_else(std::time::SystemTime::now),
    })
}

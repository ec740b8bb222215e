//! Receiving: a data set is written where it will be stored as its fragments arrive (in
//! memory; with a data directory also into the write-ahead log, or, too large for it, a
//! temporary Part-10 file), then completed and its header read for the inputs' rules.
//! What it was written to waits in a [`Staged`] for the inputs' verdict: stored, or
//! dropped and gone.

use super::disk;
use super::placing;
use super::wal::{CommitInfo, Stream, Wal, MAX_LOGGED, PART_BYTES};
use super::{InstanceData, ReceivedInstance, Storage};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicomnode_core::uid::meta_uids;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
/// owns what it wrote: dropped before it is completed, it leaves no file behind.
pub(crate) struct Incoming {
    sink: Sink,
    failed: Option<io::Error>,
    /// In memory: the most a data set may take.
    limit: usize,
    /// With the write-ahead log: the data set goes there as it arrives.
    log: Option<Logging>,
}

enum Sink {
    Memory(Vec<u8>),
    File {
        writer: BufWriter<File>,
        path: PathBuf,
    },
}

/// A data set going to the write-ahead log as it arrives; one that grows past what the
/// log takes moves to a temporary file of its own.
struct Logging {
    wal: Arc<Wal>,
    stream: Stream,
    ids: (String, String, String),
}

impl Incoming {
    /// Appends a fragment of the data set (`last`: the data set ends with it). After a
    /// write error the rest is discarded and the error is reported when the data set is
    /// complete.
    pub(crate) fn push(&mut self, data: Vec<u8>, last: bool) {
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
        if self.failed.is_some() {
            return;
        }
        let written = match (&mut self.log, &self.sink) {
            (Some(_), Sink::Memory(bytes)) if bytes.len() > MAX_LOGGED => self.spill(),
            // The last bytes go with the commit: one flush for both.
            (Some(log), Sink::Memory(bytes))
                if !last && bytes.len() - log.stream.logged() >= PART_BYTES =>
            {
                let logged = log.stream.logged();
                log.wal.append_part(&mut log.stream, &bytes[logged..])
            }
            _ => Ok(()),
        };
        if let Err(error) = written {
            self.failed = Some(error);
        }
    }

    /// Moves a data set too large for the log to a temporary file of its own.
    fn spill(&mut self) -> io::Result<()> {
        let Some(log) = self.log.take() else {
            return Ok(());
        };
        log.wal.abort(&log.stream);
        let Sink::Memory(bytes) = std::mem::replace(&mut self.sink, Sink::Memory(Vec::new()))
        else {
            return Ok(());
        };
        let (class, uid, ts) = &log.ids;
        let meta = placing::file_meta(class, uid, ts)?;
        let (mut writer, path) = log.wal.layout().new_temp_file(&meta)?;
        // Owned from here: dropped, the file goes too.
        let written = writer.write_all(&bytes);
        self.sink = Sink::File { writer, path };
        written
    }
}

impl Drop for Incoming {
    /// A data set that was never completed (aborted association, a new command in the
    /// middle, a refusal) leaves no file behind, and its parts in the log are not needed.
    fn drop(&mut self) {
        if let Sink::File { path, .. } = &self.sink {
            disk::remove_temp(path);
        }
        if let Some(log) = &self.log {
            log.wal.abort(&log.stream);
        }
    }
}

/// Where a received data set waits until it is stored: nowhere else (in memory), in a
/// temporary file, or in the write-ahead log. Dropped without being stored, it leaves
/// nothing behind.
pub(crate) enum Staged {
    /// Only in memory.
    InMemory,
    /// In a temporary Part-10 file, fsynced.
    Temp(TempFile),
    /// Its parts in the write-ahead log, its commit not yet written.
    Logged(LoggedSet),
}

/// A temporary file, removed when dropped unless it was moved into place.
pub(crate) struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// It was moved into place: nothing to remove.
    pub(crate) fn placed(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            disk::remove_temp(path);
        }
    }
}

/// A data set in the log, waiting for its commit.
pub(crate) struct LoggedSet {
    wal: Arc<Wal>,
    stream: Option<Stream>,
}

impl LoggedSet {
    /// Commits the data set `bytes` (its start may be in the log already) with where it
    /// goes; returns, once it is durable, the LSN of its commit.
    pub(crate) fn commit(mut self, bytes: &[u8], info: CommitInfo) -> io::Result<u64> {
        let Some(stream) = self.stream.take() else {
            return Err(io::Error::other("a logged data set committed twice"));
        };
        self.wal.commit(stream, bytes, info)
    }
}

impl Drop for LoggedSet {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            self.wal.abort(stream);
        }
    }
}

impl Storage {
    /// Prepares to receive a data set: in memory, into the write-ahead log (and memory),
    /// or a temporary Part-10 file.
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
                log: None,
            };
        };
        if let Some(wal) = &self.wal {
            return Incoming {
                sink: Sink::Memory(Vec::new()),
                failed: None,
                limit: usize::MAX,
                log: Some(Logging {
                    wal: Arc::clone(wal),
                    stream: wal.stream(),
                    ids: (
                        sop_class.to_string(),
                        sop_instance.to_string(),
                        transfer_syntax.to_string(),
                    ),
                }),
            };
        }
        let opened = placing::file_meta(sop_class, sop_instance, transfer_syntax)
            .and_then(|meta| layout.new_temp_file(&meta));
        match opened {
            Ok((writer, path)) => Incoming {
                sink: Sink::File { writer, path },
                failed: None,
                limit: usize::MAX,
                log: None,
            },
            Err(error) => Incoming {
                sink: Sink::Memory(Vec::new()),
                failed: Some(error),
                limit: 0,
                log: None,
            },
        }
    }

    /// Completes a received data set: its header read, and (in a temporary file) flushed
    /// and fsynced. Returns where it waits to be stored, for [`Storage::offer`].
    pub(crate) fn receive(
        &self,
        incoming: Incoming,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
    ) -> Result<(ReceivedInstance, Staged), ReceiveError> {
        let mut incoming = incoming;
        if let Some(error) = incoming.failed.take() {
            // Dropping it removes what was written.
            drop(incoming);
            return Err(ReceiveError::Resources(error));
        }
        // Taken out: from here on, this function decides what happens to them.
        let sink = std::mem::replace(&mut incoming.sink, Sink::Memory(Vec::new()));
        let log = incoming.log.take();
        let (data, header, staged) = match sink {
            Sink::Memory(bytes) => {
                let staged = match log {
                    Some(log) => Staged::Logged(LoggedSet {
                        wal: log.wal,
                        stream: Some(log.stream),
                    }),
                    None => Staged::InMemory,
                };
                let header = read_header(std::io::Cursor::new(&bytes), transfer_syntax)
                    .map_err(|e| ReceiveError::Unreadable(e.into()))?;
                (InstanceData::Memory(bytes), header, staged)
            }
            Sink::File { writer, path } => {
                let temp = TempFile(Some(path));
                // The data and the size it needs; the rename into place and its
                // directory's fsync make the name durable.
                writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|file| file.sync_data())
                    .map_err(ReceiveError::Resources)?;
                let instance = read_stored(temp.path()).map_err(ReceiveError::Unreadable)?;
                (InstanceData::Disk, instance.header, Staged::Temp(temp))
            }
        };
        let instance = ReceivedInstance {
            sop_class_uid: sop_class.to_string(),
            sop_instance_uid: sop_instance.to_string(),
            transfer_syntax: transfer_syntax.to_string(),
            data,
            header,
            arrived: std::time::SystemTime::now(),
            logged: None,
        };
        Ok((instance, staged))
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
        logged: None,
    })
}

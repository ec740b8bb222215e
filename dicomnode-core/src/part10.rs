//! Part-10 files as bytes: the meta group parsed, the data set kept as encoded, so that an
//! instance can be sent or stored without decoding and re-encoding it.

use dicom_object::meta::FileMetaTable;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Why a file is not a readable Part-10 file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Part10Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No `DICM` after the preamble, or an unreadable meta group.
    #[error("{path} is not a DICOM Part-10 file: {reason}")]
    NotPart10 {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A Part-10 file: its meta group and its data set bytes, as encoded.
#[derive(Debug)]
pub struct Part10 {
    /// The file meta group.
    pub meta: FileMetaTable,
    bytes: Vec<u8>,
    dataset_start: usize,
}

/// Reads the meta group of a file, and the offset at which its data set starts.
fn meta_of(path: &Path, reader: impl Read + Seek) -> Result<(FileMetaTable, u64), Part10Error> {
    let mut reader = BufReader::new(reader);
    let not_part10 = |reason: String| Part10Error::NotPart10 {
        path: path.to_path_buf(),
        reason,
    };
    reader
        .seek(SeekFrom::Start(128))
        .map_err(|e| not_part10(e.to_string()))?;
    let meta = FileMetaTable::from_reader(&mut reader).map_err(|e| not_part10(e.to_string()))?;
    let start = reader
        .stream_position()
        .map_err(|e| not_part10(e.to_string()))?;
    Ok((meta, start))
}

impl Part10 {
    /// Reads only the meta group (e.g. to learn SOP class and transfer syntax).
    pub fn read_meta(path: &Path) -> Result<FileMetaTable, Part10Error> {
        let file = std::fs::File::open(path).map_err(|source| Part10Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(meta_of(path, file)?.0)
    }

    /// Reads a whole file.
    pub fn read(path: &Path) -> Result<Part10, Part10Error> {
        let bytes = std::fs::read(path).map_err(|source| Part10Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (meta, start) = meta_of(path, std::io::Cursor::new(&bytes))?;
        let dataset_start = usize::try_from(start)
            .unwrap_or(bytes.len())
            .min(bytes.len());
        Ok(Part10 {
            meta,
            bytes,
            dataset_start,
        })
    }

    /// The data set, encoded in the meta group's transfer syntax.
    pub fn dataset(&self) -> &[u8] {
        &self.bytes[self.dataset_start..]
    }

    /// SOP Class UID, SOP Instance UID and transfer syntax, without padding.
    pub fn uids(&self) -> (&str, &str, &str) {
        crate::uid::meta_uids(&self.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn splits_meta_and_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SyntheticSeries::ct("P", 1)
            .size(4, 4)
            .write_to(dir.path())
            .unwrap();
        let file = Part10::read(&paths[0]).unwrap();
        let (class, _, ts) = file.uids();
        assert_eq!(class, "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(ts, "1.2.840.10008.1.2.1");
        // The data set starts with the first element of group 0008.
        assert_eq!(&file.dataset()[..2], &[0x08, 0x00]);
        assert_eq!(Part10::read_meta(&paths[0]).unwrap().transfer_syntax(), ts);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not dicom").unwrap();
        assert!(matches!(
            Part10::read(&junk),
            Err(Part10Error::NotPart10 { .. })
        ));
    }
}

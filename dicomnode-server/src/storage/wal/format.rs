//! The log's bytes: a ring of segments holding records, each a header (magic, kind, LSN,
//! payload length, CRC-32 of LSN and payload) and a payload. A record never crosses a
//! segment's end; the rest of a segment too short for the next record is skipped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A record's header: magic, kind, LSN, payload length, CRC.
pub(super) const HEADER: u64 = 24;
const MAGIC: u32 = 0x4C57_4E44; // "DNWL"

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A whole Part-10 file and where it goes (written by earlier versions; replayed).
    Record = 1,
    /// The rest of the segment is unused.
    Skip = 2,
    /// A piece of a data set still arriving (its commit lists it).
    Part = 3,
    /// A data set complete: where it goes, its stream's parts, and its last bytes.
    Commit = 4,
    /// Instances processed (or removed) and deleted: not to be written again.
    Consumed = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Record),
            2 => Some(Kind::Skip),
            3 => Some(Kind::Part),
            4 => Some(Kind::Commit),
            5 => Some(Kind::Consumed),
            _ => None,
        }
    }
}

/// The ring's shape: how many segments of how many bytes. Recorded beside the log, so
/// that a log written with another shape (an older version's) is still read right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Segments in the ring.
    pub(super) segments: u64,
    /// Bytes per segment.
    pub(super) segment_bytes: u64,
}

impl Geometry {
    /// The shape new logs get: 4 segments of 64 MiB (a CT series of 300 slices fits
    /// without a checkpoint while it arrives).
    pub(super) const NEW: Geometry = Geometry {
        segments: 4,
        segment_bytes: 64 << 20,
    };
    /// The shape of logs written before the shape was recorded.
    pub(super) const UNRECORDED: Geometry = Geometry {
        segments: 4,
        segment_bytes: 16 << 20,
    };

    /// The ring's size.
    pub(super) fn ring(&self) -> u64 {
        self.segments * self.segment_bytes
    }

    /// The segment and offset of a log sequence number (bytes since the log began).
    pub(super) fn position(&self, lsn: u64) -> (usize, u64) {
        (
            ((lsn / self.segment_bytes) % self.segments) as usize,
            lsn % self.segment_bytes,
        )
    }

    /// Bytes skipped at `lsn` before a record of `total` bytes fits in one segment.
    pub(super) fn skip_before(&self, lsn: u64, total: u64) -> u64 {
        let (_, offset) = self.position(lsn);
        if offset + total > self.segment_bytes {
            self.segment_bytes - offset
        } else {
            0
        }
    }

    /// As written in the `geometry` file.
    pub(super) fn to_text(self) -> String {
        format!("{} {}\n", self.segments, self.segment_bytes)
    }

    /// Read from the `geometry` file.
    pub(super) fn parse(text: &str) -> Option<Geometry> {
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        let segments = words.next()?.ok()?;
        let segment_bytes = words.next()?.ok()?;
        let whole_mib = segment_bytes % (1 << 20) == 0;
        (segments >= 2 && segment_bytes >= 1 << 20 && whole_mib).then_some(Geometry {
            segments,
            segment_bytes,
        })
    }
}

/// A record's header for a payload given in pieces, written in run `epoch` (24 bits).
pub(super) fn header(kind: Kind, epoch: u32, lsn: u64, pieces: &[&[u8]]) -> [u8; HEADER as usize] {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    for piece in pieces {
        hasher.update(piece);
    }
    let mut h = [0u8; HEADER as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind as u8;
    h[5..8].copy_from_slice(&epoch.to_le_bytes()[..3]);
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
    h[20..24].copy_from_slice(&hasher.finalize().to_le_bytes());
    h
}

/// A record in one buffer: header and payload.
#[cfg(test)]
pub(super) fn encode(kind: Kind, epoch: u32, lsn: u64, pieces: &[&[u8]]) -> Vec<u8> {
    let mut bytes = header(kind, epoch, lsn, pieces).to_vec();
    for piece in pieces {
        bytes.extend_from_slice(piece);
    }
    bytes
}

/// A record read back whole.
pub(super) struct ReadRecord {
    pub(super) kind: Kind,
    pub(super) payload: Vec<u8>,
}

/// Reads the record at `lsn` written in run `epoch`; `None` where the log ends there: no
/// record, a record of another LSN (an older pass of the ring) or run, or a torn one (its
/// checksum is wrong).
pub(super) fn read_at(
    geometry: &Geometry,
    segments: &[File],
    epoch: u32,
    lsn: u64,
) -> io::Result<Option<ReadRecord>> {
    let (segment, offset) = geometry.position(lsn);
    if offset + HEADER > geometry.segment_bytes {
        return Ok(None);
    }
    let mut h = [0u8; HEADER as usize];
    segments[segment].read_exact_at(&mut h, offset)?;
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let mut at_bytes = [0u8; 8];
    at_bytes.copy_from_slice(&h[8..16]);
    let len = u64::from(word(16));
    let written_in = u32::from_le_bytes([h[5], h[6], h[7], 0]);
    if word(0) != MAGIC
        || written_in != epoch & 0xFF_FFFF
        || u64::from_le_bytes(at_bytes) != lsn
        || offset + HEADER + len > geometry.segment_bytes
    {
        return Ok(None);
    }
    let Some(kind) = Kind::from_byte(h[4]) else {
        return Ok(None);
    };
    let mut payload = vec![0u8; len as usize];
    segments[segment].read_exact_at(&mut payload, offset + HEADER)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&payload);
    if hasher.finalize() != word(20) {
        tracing::warn!(lsn, "a torn record ends the write-ahead log");
        return Ok(None);
    }
    Ok(Some(ReadRecord { kind, payload }))
}

/// Reads `len` bytes at `offset` into the payload of the record at `lsn` (checked when
/// it was written; read back to place its data).
pub(super) fn read_piece(
    geometry: &Geometry,
    segments: &[File],
    lsn: u64,
    offset: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let (segment, start) = geometry.position(lsn);
    let mut bytes = vec![0u8; len as usize];
    segments[segment].read_exact_at(&mut bytes, start + HEADER + offset)?;
    Ok(bytes)
}

/// Where a commit's parts are, what it is, and where it goes; encoded at the head of a
/// commit record's payload (after its length), the data set's last bytes after it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CommitInfo {
    /// The LSNs of the stream's part records, in order.
    pub(crate) parts: Vec<u64>,
    /// The group's key.
    pub(crate) key: String,
    /// The input directories it goes into.
    pub(crate) input_dirs: Vec<String>,
    /// Its file name.
    pub(crate) file_name: String,
    /// Its SOP Class UID.
    pub(crate) sop_class: String,
    /// Its SOP Instance UID.
    pub(crate) sop_instance: String,
    /// The transfer syntax of its data set.
    pub(crate) transfer_syntax: String,
}

/// A commit record's payload: the info's length, the info, the last bytes.
pub(super) fn commit_payload_head(info: &CommitInfo) -> io::Result<Vec<u8>> {
    let encoded = postcard::to_allocvec(info).map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(4 + encoded.len());
    head.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    head.extend_from_slice(&encoded);
    Ok(head)
}

/// Splits a commit record's payload: its info, and where its last bytes start.
pub(super) fn read_commit(payload: &[u8]) -> Option<(CommitInfo, usize)> {
    let len = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?) as usize;
    let info = postcard::from_bytes(payload.get(4..4 + len)?).ok()?;
    Some((info, 4 + len))
}

/// An instance logged whole by an earlier version (kind [`Kind::Record`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct WholeRecord {
    pub(super) key: String,
    pub(super) input_dirs: Vec<String>,
    pub(super) file_name: String,
    #[serde(with = "serde_bytes")]
    pub(super) bytes: Vec<u8>,
}

/// Instances processed (or removed, or refused after all) and deleted, by the LSNs of their
/// commits: a replay writes back none of them, nor an earlier commit of the same file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Consumed {
    pub(super) commits: Vec<u64>,
}

//! The write-ahead log of a data directory: what makes an instance durable before its
//! success status, at the cost of one overwrite of a preallocated file instead of a file
//! created, fsynced and renamed, and a directory fsynced.
//!
//! An instance is written into the patient's directory as before, but without any fsync;
//! then its bytes and where they went are appended to the log, and the log is flushed with
//! `fdatasync`. Associations that append at the same time share one flush (group commit).
//! A checkpoint (`syncfs` of the data directory, then the checkpoint's position written
//! durably) makes the files themselves durable; only then may the log's space be reused.
//! At start-up every record after the checkpoint is written again into place (the file
//! names are the SOP Instance UIDs, so writing twice leaves one file): an acknowledged
//! instance is there exactly once. A record is checked by its position and a CRC-32: a
//! half-written (torn) one ends the replay.
//!
//! The log is a ring of segments, zero-filled once when created so that overwriting them
//! touches no file-system metadata. A record never crosses a segment's end.

use super::disk::DiskLayout;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Segments in the ring.
const SEGMENTS: u64 = 4;
/// Bytes per segment.
const SEGMENT_BYTES: u64 = 16 << 20;
/// The ring's size.
const RING: u64 = SEGMENTS * SEGMENT_BYTES;
/// The largest instance logged; larger ones are made durable file by file (their data
/// dominate: logged, they would be written twice, to the log and at the checkpoint).
pub(crate) const MAX_LOGGED: u64 = 128 << 10;
/// A record's header: magic, kind, LSN, payload length, CRC.
const HEADER: u64 = 24;
const MAGIC: u32 = 0x4C57_4E44; // "DNWL"
const KIND_RECORD: u8 = 1;
const KIND_SKIP: u8 = 2;

/// One logged instance: where its file goes and its bytes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct WalRecord {
    /// The group's key.
    pub(crate) key: String,
    /// The input directories it is in.
    pub(crate) input_dirs: Vec<String>,
    /// Its file name.
    pub(crate) file_name: String,
    /// The whole Part-10 file.
    #[serde(with = "serde_bytes")]
    pub(crate) bytes: Vec<u8>,
}

struct State {
    /// The next record's position (log sequence number: bytes since the log began).
    head: u64,
    /// Everything before this is flushed.
    synced: u64,
    /// A flush is running.
    syncing: bool,
    /// Everything before this is durable in the files themselves.
    checkpoint: u64,
    /// Segments written since the last flush.
    dirty: [bool; SEGMENTS as usize],
    /// A flush failed: what it covered is unknown, so nothing more is acknowledged.
    failed: bool,
}

/// The write-ahead log.
pub(crate) struct Wal {
    dir: PathBuf,
    root: PathBuf,
    segments: Vec<File>,
    state: Mutex<State>,
    flushed: Condvar,
    /// Serializes checkpoints.
    checkpointing: Mutex<()>,
}

fn position(lsn: u64) -> (usize, u64) {
    (
        ((lsn / SEGMENT_BYTES) % SEGMENTS) as usize,
        lsn % SEGMENT_BYTES,
    )
}

fn crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn header(kind: u8, lsn: u64, payload: &[u8]) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&crc(lsn, payload).to_le_bytes());
    h
}

impl Wal {
    /// Opens the log of the data directory `root` (creating and zero-filling its segments
    /// the first time) and replays what follows its checkpoint into `layout`; returns the
    /// log and the number of records replayed.
    pub(crate) fn open(root: &Path, layout: &DiskLayout) -> io::Result<(Wal, usize)> {
        let dir = root.join("wal");
        fs::create_dir_all(&dir)?;
        let mut segments = Vec::new();
        for n in 0..SEGMENTS {
            let path = dir.join(format!("segment-{n}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            if file.metadata()?.len() < SEGMENT_BYTES {
                // Written once, so that overwriting later changes no extent.
                let zeros = vec![0u8; 1 << 20];
                let mut writer = io::BufWriter::new(&file);
                for _ in 0..(SEGMENT_BYTES >> 20) {
                    writer.write_all(&zeros)?;
                }
                writer.flush()?;
                drop(writer);
                file.sync_all()?;
            }
            segments.push(file);
        }
        File::open(&dir)?.sync_all()?;
        let checkpoint = fs::read_to_string(dir.join("checkpoint"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let wal = Wal {
            dir,
            root: root.to_path_buf(),
            segments,
            state: Mutex::new(State {
                head: checkpoint,
                synced: checkpoint,
                syncing: false,
                checkpoint,
                dirty: [false; SEGMENTS as usize],
                failed: false,
            }),
            flushed: Condvar::new(),
            checkpointing: Mutex::new(()),
        };
        // Only creating the segments may fail for want of room (the caller then runs
        // without a log); a replay that fails stops the start-up.
        let replayed = wal.replay(layout).map_err(|e| {
            io::Error::other(format!(
                "replaying the write-ahead log in {}: {e}",
                wal.dir.display()
            ))
        })?;
        Ok((wal, replayed))
    }

    /// Removes a log whose segments could not even be created (no checkpoint yet, so
    /// nothing in it was ever acknowledged).
    pub(crate) fn discard_unstarted(root: &Path) {
        let dir = root.join("wal");
        if !dir.join("checkpoint").exists() {
            let _ = fs::remove_dir_all(dir);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every valid record after the checkpoint into place, then checkpoints.
    fn replay(&self, layout: &DiskLayout) -> io::Result<usize> {
        let mut lsn = self.state().checkpoint;
        let mut replayed = 0;
        loop {
            let (segment, offset) = position(lsn);
            if offset + HEADER > SEGMENT_BYTES {
                lsn += SEGMENT_BYTES - offset;
                continue;
            }
            let mut h = [0u8; HEADER as usize];
            self.segments[segment].read_exact_at(&mut h, offset)?;
            let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let at = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
            let len = u64::from(u32::from_le_bytes([h[16], h[17], h[18], h[19]]));
            let sum = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
            if magic != MAGIC || at != lsn || offset + HEADER + len > SEGMENT_BYTES {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.segments[segment].read_exact_at(&mut payload, offset + HEADER)?;
            if crc(lsn, &payload) != sum {
                tracing::warn!(lsn, "a torn record ends the write-ahead log");
                break;
            }
            match h[4] {
                KIND_SKIP => {
                    lsn += SEGMENT_BYTES - offset;
                    continue;
                }
                KIND_RECORD => {}
                _ => break,
            }
            let Ok(record) = postcard::from_bytes::<WalRecord>(&payload) else {
                tracing::warn!(lsn, "an unreadable record ends the write-ahead log");
                break;
            };
            let names: Vec<&str> = record.input_dirs.iter().map(String::as_str).collect();
            layout.materialize(&record.key, &names, &record.file_name, &record.bytes)?;
            replayed += 1;
            lsn += HEADER + len;
        }
        {
            let mut state = self.state();
            state.head = lsn;
            state.synced = lsn;
        }
        self.checkpoint()?;
        Ok(replayed)
    }

    /// Appends a record and returns once it is flushed (with whatever others appended
    /// meanwhile: one `fdatasync` for all).
    pub(crate) fn log(&self, record: &WalRecord) -> io::Result<()> {
        let payload = postcard::to_allocvec(record).map_err(io::Error::other)?;
        let total = HEADER + payload.len() as u64;
        if total > SEGMENT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record larger than a log segment",
            ));
        }
        let end = {
            let mut state = self.state();
            if state.failed {
                return Err(io::Error::other(
                    "the write-ahead log failed to flush earlier; it takes nothing more",
                ));
            }
            // Space: a full ring is checkpointed (outside the lock) and tried again.
            let mut tries = 0;
            loop {
                let (_, offset) = position(state.head);
                let skip = if offset + total > SEGMENT_BYTES {
                    SEGMENT_BYTES - offset
                } else {
                    0
                };
                if state.head + skip + total - state.checkpoint <= RING {
                    break;
                }
                tries += 1;
                if tries > 3 {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "the write-ahead log is full and a checkpoint did not free it",
                    ));
                }
                drop(state);
                self.checkpoint()?;
                state = self.state();
            }
            let (segment, offset) = position(state.head);
            if offset + total > SEGMENT_BYTES {
                // The rest of this segment is skipped (marked, when a header fits).
                if offset + HEADER <= SEGMENT_BYTES {
                    let h = header(KIND_SKIP, state.head, &[]);
                    self.segments[segment].write_all_at(&h, offset)?;
                    state.dirty[segment] = true;
                }
                state.head += SEGMENT_BYTES - offset;
            }
            let lsn = state.head;
            let (segment, offset) = position(lsn);
            let mut bytes = Vec::with_capacity(total as usize);
            bytes.extend_from_slice(&header(KIND_RECORD, lsn, &payload));
            bytes.extend_from_slice(&payload);
            self.segments[segment].write_all_at(&bytes, offset)?;
            state.dirty[segment] = true;
            state.head = lsn + total;
            state.head
        };
        self.flush_through(end)
    }

    /// Returns once everything before `end` is flushed; one caller flushes for all.
    fn flush_through(&self, end: u64) -> io::Result<()> {
        let mut state = self.state();
        loop {
            if state.failed {
                return Err(io::Error::other("the write-ahead log failed to flush"));
            }
            if state.synced >= end {
                return Ok(());
            }
            if state.syncing {
                state = self.flushed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.syncing = true;
            let target = state.head;
            let dirty = std::mem::replace(&mut state.dirty, [false; SEGMENTS as usize]);
            drop(state);
            let mut result = Ok(());
            for (n, was) in dirty.iter().enumerate() {
                if *was {
                    if let Err(error) = self.segments[n].sync_data() {
                        result = Err(error);
                    }
                }
            }
            state = self.state();
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(target);
            } else {
                // A second fdatasync would report success for pages the failed one left
                // unwritten: nothing after this is acknowledged.
                state.failed = true;
                tracing::error!(
                    "the write-ahead log failed to flush: instances are refused until a restart"
                );
            }
            self.flushed.notify_all();
            result?;
        }
    }

    /// Whether records wait for a checkpoint.
    pub(crate) fn pending(&self) -> bool {
        let state = self.state();
        state.head > state.checkpoint
    }

    /// Whether the ring is over half used: time for a checkpoint in the background (a
    /// checkpoint writes the files out; done less often, it competes less with the
    /// flushes of the receive path).
    pub(crate) fn half_full(&self) -> bool {
        let state = self.state();
        state.head - state.checkpoint > RING / 2
    }

    /// Makes the files of every flushed record durable (`syncfs`), then records that the
    /// log before them is no longer needed.
    pub(crate) fn checkpoint(&self) -> io::Result<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let target = {
            let state = self.state();
            if state.synced <= state.checkpoint {
                return Ok(());
            }
            state.synced
        };
        let root = File::open(&self.root)?;
        nix::unistd::syncfs(&root).map_err(io::Error::from)?;
        let tmp = self.dir.join("checkpoint.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(target.to_string().as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join("checkpoint"))?;
        File::open(&self.dir)?.sync_all()?;
        let mut state = self.state();
        state.checkpoint = state.checkpoint.max(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize, size: usize) -> WalRecord {
        WalRecord {
            key: format!("P{n}"),
            input_dirs: vec!["in-any".into()],
            file_name: format!("1.2.{n}.dcm"),
            bytes: vec![(n % 251) as u8; size],
        }
    }

    #[test]
    fn records_replay_once_and_a_torn_one_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        {
            let (wal, replayed) = Wal::open(dir.path(), &layout).unwrap();
            assert_eq!(replayed, 0);
            for n in 0..3 {
                wal.log(&record(n, 1000)).unwrap();
            }
            // A crash: no checkpoint.
        }
        // The files of the three records are written again at start-up.
        for n in 0..3 {
            std::fs::remove_dir_all(layout.patient_dir(&format!("P{n}"))).ok();
        }
        let (wal, replayed) = Wal::open(dir.path(), &layout).unwrap();
        assert_eq!(replayed, 3);
        for n in 0..3 {
            let file = layout
                .patient_dir(&format!("P{n}"))
                .join("in-any")
                .join(format!("1.2.{n}.dcm"));
            assert_eq!(std::fs::read(file).unwrap(), vec![(n % 251) as u8; 1000]);
        }
        // Checkpointed at start-up: nothing again.
        drop(wal);
        let (wal, replayed) = Wal::open(dir.path(), &layout).unwrap();
        assert_eq!(replayed, 0);
        // Two records, the second torn (a byte of its payload changed on disk).
        wal.log(&record(7, 500)).unwrap();
        let second = wal.state().head;
        wal.log(&record(8, 500)).unwrap();
        drop(wal);
        let (segment, offset) = position(second);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("wal").join(format!("segment-{segment}")))
            .unwrap();
        file.write_all_at(&[0xEE], offset + HEADER + 10).unwrap();
        let (_wal, replayed) = Wal::open(dir.path(), &layout).unwrap();
        assert_eq!(replayed, 1, "the torn record and what follows are dropped");
    }

    #[test]
    fn the_ring_wraps_after_checkpoints_and_concurrent_logs_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let (wal, _) = Wal::open(dir.path(), &layout).unwrap();
        let wal = std::sync::Arc::new(wal);
        // More than the ring holds: checkpoints free it on the way.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = std::sync::Arc::clone(&wal);
                std::thread::spawn(move || {
                    for n in 0..40 {
                        wal.log(&record(t * 1000 + n, 1 << 20)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(wal.state().head > RING);
        wal.checkpoint().unwrap();
        assert!(!wal.pending());
    }
}

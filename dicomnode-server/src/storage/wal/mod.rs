//! The write-ahead log of a data directory: what makes an instance durable before its
//! success status at the cost of writing it once into a preallocated file, instead of a
//! file created, fsynced and renamed and a directory fsynced.
//!
//! A data set goes to the log while it arrives: every [`PART_BYTES`] received are
//! appended as a part record, and a flusher thread keeps `fdatasync`ing them in the
//! background, so that when the last bytes arrive only they are left to flush. The last
//! bytes go into a commit record with where the instance goes (group, inputs, file name);
//! the success status waits for the flush of the commit, which concurrent associations
//! share (group commit). Nothing else is written on the receive path.
//!
//! The instance's files are written later, from the log ([`placing`]): when its group is
//! taken out for processing, or at a checkpoint. A checkpoint writes the files of every
//! logged instance, makes them durable (`syncfs` of the data directory), and records its
//! position durably; only then may the log's space before it be reused. At start-up every
//! commit after the checkpoint is written into place again ([`replay`]; the file names
//! are the SOP Instance UIDs, so writing twice leaves one file), except those a later
//! record says were processed and deleted ([`Wal::consume`]): an acknowledged instance
//! is there exactly once, and a processed one not again. A record is checked by its position and a CRC-32: a half-written
//! (torn) one ends the replay, and parts without their commit are ignored.
//!
//! The log is a ring of segments, zero-filled once when created, so that overwriting them
//! touches no file-system metadata. A record never crosses a segment's end.

mod format;
mod placing;
mod replay;

#[cfg(test)]
use format::encode;
pub(crate) use format::CommitInfo;
use format::{header, Geometry, Kind, HEADER};

use super::disk::DiskLayout;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The largest data set logged; a larger one is streamed to its own file and fsynced
/// there (its data dominate, and the ring stays free for the many small ones).
pub(crate) const MAX_LOGGED: usize = 8 << 20;
/// Bytes gathered from an arriving data set before they go to the log as a part.
pub(crate) const PART_BYTES: usize = 64 << 10;

/// Where a piece of an instance's data set is: in the payload of the record at `lsn`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    lsn: u64,
    offset: u64,
    len: u64,
}

/// A data set going into the log as it arrives.
#[derive(Debug)]
pub(crate) struct Stream {
    id: u64,
    parts: Vec<u64>,
    pieces: Vec<Piece>,
    /// Bytes of the data set logged as parts so far.
    logged: usize,
}

impl Stream {
    /// Bytes of the data set logged so far (the rest goes with the commit).
    pub(crate) fn logged(&self) -> usize {
        self.logged
    }
}

/// A committed instance whose files are not written yet.
#[derive(Debug, Clone)]
struct Unplaced {
    info: CommitInfo,
    pieces: Vec<Piece>,
    /// The end of its commit record: flushed once `synced` reaches it.
    end: u64,
}

struct State {
    /// The next record's position (log sequence number: bytes since the log began).
    head: u64,
    /// Everything before this is flushed.
    synced: u64,
    /// Flushes running.
    syncing: usize,
    /// The furthest a running flush will have flushed to.
    syncing_to: u64,
    /// Everything before this is durable in the files themselves.
    checkpoint: u64,
    /// Each segment's end of the last record written into it.
    written: Vec<u64>,
    /// A flush failed: what it covered is unknown, so nothing more is acknowledged.
    failed: bool,
    /// Streams with parts in the log and no commit yet: the LSN of each one's first part.
    open: HashMap<u64, u64>,
    /// Committed instances whose files are not written, by the LSN of their first piece.
    unplaced: BTreeMap<u64, Unplaced>,
    /// The flusher has work until `synced` reaches this (the end of the last part).
    parts_through: u64,
    /// The next stream's number.
    next_stream: u64,
    /// When the last record was appended.
    last_append: Instant,
}

impl State {
    /// Where a checkpoint may go: flushed, and before every piece still needed.
    fn checkpoint_limit(&self) -> u64 {
        let mut limit = self.synced;
        if let Some(first) = self.open.values().min() {
            limit = limit.min(*first);
        }
        if let Some((first, _)) = self.unplaced.first_key_value() {
            limit = limit.min(*first);
        }
        limit
    }
}

/// The write-ahead log.
pub(crate) struct Wal {
    dir: PathBuf,
    root: PathBuf,
    layout: DiskLayout,
    geometry: Geometry,
    segments: Vec<File>,
    state: Mutex<State>,
    flushed: Condvar,
    /// Wakes the flusher.
    wake: Condvar,
    /// Serializes checkpoints.
    checkpointing: Mutex<()>,
    /// Serializes writing files from the log.
    placing: Mutex<()>,
}

impl Wal {
    /// Opens the log of the data directory `root` (creating and zero-filling its segments
    /// the first time) and replays what follows its checkpoint into `layout`; returns the
    /// log and the number of instances replayed. A thread keeps parts flushed.
    pub(crate) fn open(root: &Path, layout: &DiskLayout) -> io::Result<(Arc<Wal>, usize)> {
        Wal::open_shaped(root, layout, Geometry::NEW)
    }

    /// As [`Wal::open`], new segments shaped as `wanted`.
    fn open_shaped(
        root: &Path,
        layout: &DiskLayout,
        wanted: Geometry,
    ) -> io::Result<(Arc<Wal>, usize)> {
        let dir = root.join("wal");
        fs::create_dir_all(&dir)?;
        let recorded = match fs::read_to_string(dir.join("geometry")) {
            Ok(text) => Geometry::parse(&text).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "an unreadable wal/geometry")
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir.join("segment-0").exists() {
                    Geometry::UNRECORDED
                } else {
                    wanted
                }
            }
            Err(e) => return Err(e),
        };
        let checkpoint = fs::read_to_string(dir.join("checkpoint"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let wal = Wal::with_segments(root, layout, recorded, checkpoint)?;
        // Only creating the segments may fail for want of room (the caller then runs
        // without a log); a replay that fails stops the start-up.
        let replayed = wal.replay().map_err(|e| {
            io::Error::other(format!(
                "replaying the write-ahead log in {}: {e}",
                wal.dir.display()
            ))
        })?;
        let wal = if recorded == wanted {
            wal
        } else {
            // Replayed and checkpointed, the old ring holds nothing needed: new segments.
            let head = wal.state().checkpoint;
            drop(wal);
            for n in 0..recorded.segments {
                let _ = fs::remove_file(dir.join(format!("segment-{n}")));
            }
            Wal::with_segments(root, layout, wanted, head)?
        };
        let wal = Arc::new(wal);
        let weak = Arc::downgrade(&wal);
        if let Err(error) = std::thread::Builder::new()
            .name("wal-flusher".into())
            .spawn(move || flusher(&weak))
        {
            tracing::warn!(%error, "cannot start the log's flusher: each instance flushes all of itself");
        }
        Ok((wal, replayed))
    }

    /// The log with its segments open (created and zero-filled where missing), the shape
    /// recorded, positioned at `checkpoint`.
    fn with_segments(
        root: &Path,
        layout: &DiskLayout,
        geometry: Geometry,
        checkpoint: u64,
    ) -> io::Result<Wal> {
        let dir = root.join("wal");
        let mut segments = Vec::new();
        for n in 0..geometry.segments {
            let path = dir.join(format!("segment-{n}"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            if file.metadata()?.len() < geometry.segment_bytes {
                // Written once, so that overwriting later changes no extent.
                let zeros = vec![0u8; 1 << 20];
                let mut writer = io::BufWriter::new(&file);
                for _ in 0..(geometry.segment_bytes >> 20) {
                    writer.write_all(&zeros)?;
                }
                writer.flush()?;
                drop(writer);
                file.sync_all()?;
            }
            segments.push(file);
        }
        if fs::read_to_string(dir.join("geometry")).ok().as_deref()
            != Some(geometry.to_text().as_str())
        {
            write_durably(&dir, "geometry", geometry.to_text().as_bytes())?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(Wal {
            dir,
            root: root.to_path_buf(),
            layout: layout.clone(),
            geometry,
            segments,
            state: Mutex::new(State {
                head: checkpoint,
                synced: checkpoint,
                syncing: 0,
                syncing_to: checkpoint,
                checkpoint,
                written: vec![0; geometry.segments as usize],
                failed: false,
                open: HashMap::new(),
                unplaced: BTreeMap::new(),
                parts_through: 0,
                next_stream: 0,
                last_append: Instant::now(),
            }),
            flushed: Condvar::new(),
            wake: Condvar::new(),
            checkpointing: Mutex::new(()),
            placing: Mutex::new(()),
        })
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

    /// A new data set arriving.
    pub(crate) fn stream(&self) -> Stream {
        let mut state = self.state();
        state.next_stream += 1;
        Stream {
            id: state.next_stream,
            parts: Vec::new(),
            pieces: Vec::new(),
            logged: 0,
        }
    }

    /// Appends the next bytes of an arriving data set (the flusher flushes them).
    pub(crate) fn append_part(&self, stream: &mut Stream, data: &[u8]) -> io::Result<()> {
        let id = stream.id;
        let lsn = self.append(Kind::Part, &[data], |state, lsn| {
            state.open.entry(id).or_insert(lsn);
            state.parts_through = state.head;
        })?;
        stream.parts.push(lsn);
        stream.pieces.push(Piece {
            lsn,
            offset: 0,
            len: data.len() as u64,
        });
        stream.logged += data.len();
        self.wake.notify_one();
        Ok(())
    }

    /// A data set abandoned (refused, cut off): its parts are no longer needed.
    pub(crate) fn abort(&self, stream: &Stream) {
        self.state().open.remove(&stream.id);
    }

    /// Commits a data set: its last bytes `tail` and where it goes. Returns once it is
    /// flushed (with whatever others appended meanwhile: one `fdatasync` for all); from
    /// then on its files are written from the log when needed.
    pub(crate) fn commit(&self, stream: Stream, tail: &[u8], info: CommitInfo) -> io::Result<()> {
        let info = CommitInfo {
            parts: stream.parts.clone(),
            ..info
        };
        let head = format::commit_payload_head(&info)?;
        let head_len = head.len() as u64;
        let id = stream.id;
        let mut pieces = stream.pieces;
        let appended = self.append(Kind::Commit, &[&head, tail], |state, lsn| {
            state.open.remove(&id);
            pieces.push(Piece {
                lsn,
                offset: head_len,
                len: tail.len() as u64,
            });
            let first = pieces.first().map_or(lsn, |p| p.lsn);
            let end = state.head;
            state.unplaced.insert(first, Unplaced { info, pieces, end });
        });
        let end = match appended {
            Ok(_) => self.state().head,
            Err(error) => {
                self.state().open.remove(&id);
                return Err(error);
            }
        };
        self.flush_through(end)
    }

    /// Records, durably, that the group's instances `file_names` were processed (or
    /// removed): after a crash, the replay does not bring them back.
    pub(crate) fn consume(&self, key: &str, file_names: Vec<String>) -> io::Result<()> {
        let payload = postcard::to_allocvec(&format::Consumed {
            key: key.to_string(),
            file_names,
        })
        .map_err(io::Error::other)?;
        self.append(Kind::Consumed, &[&payload], |_, _| {})?;
        let end = self.state().head;
        self.flush_through(end)
    }

    /// Appends a record of `pieces` (making room with a checkpoint when the ring is full);
    /// `register` runs under the state's lock once it is written. Returns its LSN.
    fn append(
        &self,
        kind: Kind,
        pieces: &[&[u8]],
        register: impl FnOnce(&mut State, u64),
    ) -> io::Result<u64> {
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let total = HEADER + len;
        let geometry = self.geometry;
        if total > geometry.segment_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record larger than a log segment",
            ));
        }
        let mut state = self.state();
        let mut tries = 0;
        loop {
            if state.failed {
                return Err(io::Error::other(
                    "the write-ahead log failed to flush earlier; it takes nothing more",
                ));
            }
            let skip = geometry.skip_before(state.head, total);
            if state.head + skip + total - state.checkpoint <= geometry.ring() {
                break;
            }
            tries += 1;
            if tries > 3 {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the write-ahead log is full and a checkpoint did not free it",
                ));
            }
            // Flushed first, so that every commit in the ring can be written out.
            let head = state.head;
            drop(state);
            self.flush_through(head)?;
            self.checkpoint()?;
            state = self.state();
        }
        let skip = geometry.skip_before(state.head, total);
        if skip > 0 {
            // The rest of this segment is skipped (marked, when a header fits).
            let (segment, offset) = geometry.position(state.head);
            if skip >= HEADER {
                let marker = header(Kind::Skip, state.head, &[]);
                self.segments[segment].write_all_at(&marker, offset)?;
                state.written[segment] = state.head + HEADER;
            }
            state.head += skip;
        }
        let lsn = state.head;
        let (segment, offset) = geometry.position(lsn);
        // Written where they are (no copy into one buffer): the header, then each piece.
        let file = &self.segments[segment];
        file.write_all_at(&header(kind, lsn, pieces), offset)?;
        let mut at = offset + HEADER;
        for piece in pieces {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        state.head = lsn + total;
        state.written[segment] = state.head;
        state.last_append = Instant::now();
        register(&mut state, lsn);
        Ok(lsn)
    }

    /// Returns once everything before `end` is flushed. A flush running that reaches
    /// `end` is waited for (one `fdatasync` for all who wait); else this caller starts its
    /// own at once, beside a running one (the kernel waits for the pages that one is
    /// writing and the device flushes both), rather than queueing behind it.
    fn flush_through(&self, end: u64) -> io::Result<()> {
        let mut state = self.state();
        loop {
            if state.failed {
                return Err(io::Error::other("the write-ahead log failed to flush"));
            }
            if state.synced >= end {
                return Ok(());
            }
            if state.syncing > 0 && state.syncing_to >= end {
                state = self.flushed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Everything up to `target` is in the segments written after `from`.
            let (from, target) = (state.synced, state.head);
            let segments: Vec<usize> = (0..self.segments.len())
                .filter(|&n| state.written[n] > from)
                .collect();
            state.syncing += 1;
            state.syncing_to = state.syncing_to.max(target);
            drop(state);
            let mut result = Ok(());
            for n in segments {
                if let Err(error) = self.segments[n].sync_data() {
                    result = Err(error);
                }
            }
            state = self.state();
            state.syncing -= 1;
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
            self.wake.notify_one();
            result?;
        }
    }

    /// Whether records wait for a checkpoint.
    pub(crate) fn pending(&self) -> bool {
        let state = self.state();
        state.head > state.checkpoint
    }

    /// Whether a checkpoint is due in the background: the ring is three quarters used,
    /// or records wait and nothing was appended for `quiet` (a checkpoint writes the
    /// instances' files: done while data arrive, it competes with their flushes).
    pub(crate) fn due(&self, quiet: Duration) -> bool {
        let state = self.state();
        let used = state.head - state.checkpoint;
        used > self.geometry.ring() / 4 * 3 || (used > 0 && state.last_append.elapsed() >= quiet)
    }

    /// Writes the files of every flushed logged instance, makes them durable (`syncfs`),
    /// then records that the log before them is no longer needed.
    pub(crate) fn checkpoint(&self) -> io::Result<()> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        self.place_flushed()?;
        let target = {
            let state = self.state();
            let limit = state.checkpoint_limit();
            if limit <= state.checkpoint {
                return Ok(());
            }
            limit
        };
        let root = File::open(&self.root)?;
        nix::unistd::syncfs(&root).map_err(io::Error::from)?;
        write_durably(&self.dir, "checkpoint", target.to_string().as_bytes())?;
        let mut state = self.state();
        state.checkpoint = state.checkpoint.max(target);
        Ok(())
    }
}

/// Writes `name` in `dir` so that a crash leaves the old or the new content.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Keeps the parts of arriving data sets flushed, so that a commit finds little left to
/// flush. Ends when the log is dropped or failed.
fn flusher(wal: &Weak<Wal>) {
    loop {
        let Some(wal) = wal.upgrade() else {
            return;
        };
        let head = {
            let state = wal.state();
            if state.failed {
                return;
            }
            if state.syncing > 0 || state.synced >= state.parts_through {
                let _ = wal.wake.wait_timeout(state, Duration::from_millis(100));
                continue;
            }
            state.head
        };
        // A failure is reported to the commits that wait for it.
        let _ = wal.flush_through(head);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::WholeRecord;

    fn info(n: usize) -> CommitInfo {
        CommitInfo {
            parts: Vec::new(),
            key: format!("P{n}"),
            input_dirs: vec!["in-any".into()],
            file_name: format!("1.2.{n}.dcm"),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: format!("1.2.{n}"),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        }
    }

    /// The data set of instance `n`: `size` bytes.
    fn data(n: usize, size: usize) -> Vec<u8> {
        let mut bytes = vec![(n % 251) as u8; size];
        for (i, byte) in bytes.iter_mut().enumerate().step_by(4093) {
            *byte = (i % 253) as u8;
        }
        bytes
    }

    /// A small ring for the tests: 4 segments of 1 MiB.
    const SMALL: Geometry = Geometry {
        segments: 4,
        segment_bytes: 1 << 20,
    };

    fn open(dir: &Path, layout: &DiskLayout) -> (Arc<Wal>, usize) {
        Wal::open_shaped(dir, layout, SMALL).unwrap()
    }

    /// Logs instance `n` as the receive path does: parts while it arrives, then a commit.
    fn log(wal: &Wal, n: usize, size: usize) {
        let bytes = data(n, size);
        let mut stream = wal.stream();
        while bytes.len() - stream.logged() >= PART_BYTES {
            let from = stream.logged();
            wal.append_part(&mut stream, &bytes[from..from + PART_BYTES])
                .unwrap();
        }
        let from = stream.logged();
        wal.commit(stream, &bytes[from..], info(n)).unwrap();
    }

    fn file_of(layout: &DiskLayout, n: usize) -> PathBuf {
        layout
            .patient_dir(&format!("P{n}"))
            .join("in-any")
            .join(format!("1.2.{n}.dcm"))
    }

    /// The data set in instance `n`'s written file (after preamble, magic and meta).
    fn data_set_in(layout: &DiskLayout, n: usize) -> Vec<u8> {
        let bytes = fs::read(file_of(layout, n)).unwrap();
        let info = info(n);
        let head = crate::storage::placing::part10_head(
            &info.sop_class,
            &info.sop_instance,
            &info.transfer_syntax,
        )
        .unwrap();
        assert_eq!(&bytes[..head.len()], &head[..]);
        bytes[head.len()..].to_vec()
    }

    #[test]
    fn commits_are_written_once_at_start_up_and_a_torn_one_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        {
            let (wal, replayed) = open(dir.path(), &layout);
            assert_eq!(replayed, 0);
            // A small one (its commit alone), a streamed one (parts and a commit), and
            // one cut off (parts, no commit).
            log(&wal, 0, 1000);
            log(&wal, 1, 3 * PART_BYTES + 123);
            let mut cut = wal.stream();
            wal.append_part(&mut cut, &data(2, PART_BYTES)).unwrap();
            // Nothing is written into files until asked: a crash now.
            assert!(!file_of(&layout, 0).exists());
        }
        let (wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 2);
        assert_eq!(data_set_in(&layout, 0), data(0, 1000));
        assert_eq!(data_set_in(&layout, 1), data(1, 3 * PART_BYTES + 123));
        assert!(!layout.patient_dir("P2").exists(), "no commit, no file");
        // Checkpointed at start-up: nothing again.
        drop(wal);
        let (wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 0);
        // Two commits, the second torn (a byte of its payload changed on disk).
        log(&wal, 7, 500);
        let second = wal.state().head;
        log(&wal, 8, 500);
        let geometry = wal.geometry;
        drop(wal);
        let (segment, offset) = geometry.position(second);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("wal").join(format!("segment-{segment}")))
            .unwrap();
        file.write_all_at(&[0xEE], offset + HEADER + 10).unwrap();
        let (_wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 1, "the torn record and what follows are dropped");
        assert!(file_of(&layout, 7).exists());
        assert!(!file_of(&layout, 8).exists());
    }

    #[test]
    fn a_consumed_instance_is_not_written_back_but_one_sent_again_after_is() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        {
            let (wal, _) = open(dir.path(), &layout);
            log(&wal, 1, 100);
            log(&wal, 2, 2 * PART_BYTES);
            wal.place_group("P1").unwrap();
            wal.place_group("P2").unwrap();
            wal.consume("P1", vec!["1.2.1.dcm".into()]).unwrap();
            wal.consume("P2", vec!["1.2.2.dcm".into()]).unwrap();
            fs::remove_dir_all(layout.patients()).unwrap();
            // Sent again after it was processed: a new instance.
            log(&wal, 2, 2 * PART_BYTES);
        }
        let (_wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 1);
        assert!(!layout.patient_dir("P1").exists());
        assert_eq!(data_set_in(&layout, 2), data(2, 2 * PART_BYTES));
    }

    #[test]
    fn a_group_is_written_on_demand_and_a_checkpoint_waits_for_open_streams() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let (wal, _) = open(dir.path(), &layout);
        log(&wal, 1, 2 * PART_BYTES + 5);
        log(&wal, 2, 10);
        wal.place_group("P1").unwrap();
        assert_eq!(data_set_in(&layout, 1), data(1, 2 * PART_BYTES + 5));
        assert!(!file_of(&layout, 2).exists(), "another group's waits");
        // A stream still arriving holds the checkpoint before its first part.
        let mut open = wal.stream();
        wal.append_part(&mut open, &data(3, PART_BYTES)).unwrap();
        let first_part = wal.state().open[&open.id];
        log(&wal, 4, 10);
        wal.checkpoint().unwrap();
        assert!(
            file_of(&layout, 2).exists(),
            "a checkpoint writes every file"
        );
        assert!(file_of(&layout, 4).exists());
        assert_eq!(wal.state().checkpoint, first_part);
        let rest = data(3, PART_BYTES + 7);
        wal.commit(open, &rest[PART_BYTES..], info(3)).unwrap();
        wal.checkpoint().unwrap();
        assert_eq!(data_set_in(&layout, 3), rest);
        assert!(!wal.pending());
    }

    #[test]
    fn the_ring_wraps_after_checkpoints_and_concurrent_commits_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let (wal, _) = open(dir.path(), &layout);
        // More than the ring holds: checkpoints free it on the way.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    for n in 0..40 {
                        log(&wal, t * 1000 + n, 100_000);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(wal.state().head > wal.geometry.ring());
        wal.checkpoint().unwrap();
        assert!(!wal.pending());
        assert_eq!(data_set_in(&layout, 3039), data(3039, 100_000));
    }

    #[test]
    fn a_log_of_the_unrecorded_shape_is_replayed_then_reshaped() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let wal_dir = dir.path().join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        // An earlier version's log: 4 segments of 16 MiB, a whole record at LSN 0.
        let old = Geometry::UNRECORDED;
        for n in 0..old.segments {
            let file = File::create(wal_dir.join(format!("segment-{n}"))).unwrap();
            file.set_len(old.segment_bytes).unwrap();
        }
        let whole = WholeRecord {
            key: "P9".into(),
            input_dirs: vec!["in-any".into()],
            file_name: "1.2.9.dcm".into(),
            bytes: b"a whole file".to_vec(),
        };
        let payload = postcard::to_allocvec(&whole).unwrap();
        let record = encode(Kind::Record, 0, &[&payload]);
        OpenOptions::new()
            .write(true)
            .open(wal_dir.join("segment-0"))
            .unwrap()
            .write_all_at(&record, 0)
            .unwrap();
        let (wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 1);
        assert_eq!(fs::read(file_of(&layout, 9)).unwrap(), b"a whole file");
        assert_eq!(wal.geometry, SMALL);
        assert_eq!(
            fs::metadata(wal_dir.join("segment-0")).unwrap().len(),
            SMALL.segment_bytes
        );
        log(&wal, 10, 100);
        drop(wal);
        let (_wal, replayed) = open(dir.path(), &layout);
        assert_eq!(replayed, 1, "the new shape is read back");
    }
}

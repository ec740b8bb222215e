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

mod flush;
mod format;
mod open;
mod placing;
mod replay;

#[cfg(test)]
use format::encode;
pub(crate) use format::CommitInfo;
use format::{header, Geometry, Kind, HEADER};

use super::disk::DiskLayout;
use open::write_durably;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
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
    /// Streams with parts in the log and no commit yet.
    open: HashMap<u64, OpenStream>,
    /// Committed instances whose files are not written, by the LSN of their commit.
    unplaced: BTreeMap<u64, Unplaced>,
    /// The flusher has work until `synced` reaches this (the end of the last part).
    parts_through: u64,
    /// The next stream's number.
    next_stream: u64,
    /// When the last record was appended.
    last_append: Instant,
}

/// A stream with parts in the log.
#[derive(Debug, Clone, Copy)]
struct OpenStream {
    /// The LSN of its first part.
    first: u64,
    /// A full ring let a checkpoint pass its parts: its commit logs the data set whole.
    evicted: bool,
}

impl State {
    /// Where a checkpoint may go: flushed, and before every piece still needed.
    fn checkpoint_limit(&self) -> u64 {
        let open = self.open.values().filter(|o| !o.evicted).map(|o| o.first);
        let unplaced = self
            .unplaced
            .values()
            .map(|u| u.pieces.first().map_or(u.end, |p| p.lsn));
        open.chain(unplaced).fold(self.synced, u64::min)
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
    /// Records are written with this number, changed at every start: a record an earlier
    /// run left beyond the log's end is never taken for one of this run's.
    epoch: u32,
}

impl Wal {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data directory the log writes files into.
    pub(crate) fn layout(&self) -> &DiskLayout {
        &self.layout
    }

    /// A new data set arriving.
    pub(crate) fn stream(&self) -> Stream {
        let mut state = self.state();
        state.next_stream += 1;
        Stream {
            id: state.next_stream,
            pieces: Vec::new(),
            logged: 0,
        }
    }

    /// Appends the next bytes of an arriving data set (the flusher flushes them). A
    /// stream a full ring evicted logs nothing more until its commit.
    pub(crate) fn append_part(&self, stream: &mut Stream, data: &[u8]) -> io::Result<()> {
        let id = stream.id;
        if self.state().open.get(&id).is_some_and(|o| o.evicted) {
            return Ok(());
        }
        let (lsn, _) = self.append(
            Kind::Part,
            &[data],
            |_| true,
            |state, lsn| {
                state.open.entry(id).or_insert(OpenStream {
                    first: lsn,
                    evicted: false,
                });
                state.parts_through = state.head;
            },
        )?;
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

    /// Commits a data set, `bytes` (the start of which its parts hold), with where it
    /// goes. Returns once it is flushed (with whatever others appended meanwhile: one
    /// `fdatasync` for all) with the commit's LSN; from then on its files are written
    /// from the log when needed. A stream whose parts a full ring evicted is logged whole.
    pub(crate) fn commit(&self, stream: Stream, bytes: &[u8], info: CommitInfo) -> io::Result<u64> {
        let id = stream.id;
        let result = self.commit_stream(&stream, bytes, info);
        self.state().open.remove(&id);
        let (lsn, end) = result?;
        self.flush_through(end)?;
        Ok(lsn)
    }

    fn commit_stream(
        &self,
        stream: &Stream,
        bytes: &[u8],
        info: CommitInfo,
    ) -> io::Result<(u64, u64)> {
        let id = stream.id;
        let evicted = |state: &State| state.open.get(&id).is_some_and(|o| o.evicted);
        // With its parts, unless they were evicted (checked again once there is room).
        if !evicted(&self.state()) {
            let tail = bytes.get(stream.logged..).unwrap_or_default();
            let info = CommitInfo {
                parts: stream.pieces.iter().map(|p| p.lsn).collect(),
                ..info.clone()
            };
            let head = format::commit_payload_head(&info)?;
            let mut pieces = stream.pieces.clone();
            let appended = self.append(
                Kind::Commit,
                &[&head, tail],
                |state| !evicted(state),
                |state, lsn| {
                    pieces.push(Piece {
                        lsn,
                        offset: head.len() as u64,
                        len: tail.len() as u64,
                    });
                    let end = state.head;
                    state.unplaced.insert(lsn, Unplaced { info, pieces, end });
                },
            );
            match appended {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
        let info = CommitInfo {
            parts: Vec::new(),
            ..info
        };
        let head = format::commit_payload_head(&info)?;
        self.append(
            Kind::Commit,
            &[&head, bytes],
            |_| true,
            |state, lsn| {
                let pieces = vec![Piece {
                    lsn,
                    offset: head.len() as u64,
                    len: bytes.len() as u64,
                }];
                let end = state.head;
                state.unplaced.insert(lsn, Unplaced { info, pieces, end });
            },
        )
    }

    /// Records, durably, that the instances committed at `commits` were processed (or
    /// removed, or refused after all): after a crash, the replay does not bring them back,
    /// nor an earlier commit of the same file.
    pub(crate) fn consume(&self, commits: Vec<u64>) -> io::Result<()> {
        if commits.is_empty() {
            return Ok(());
        }
        {
            let mut state = self.state();
            for lsn in &commits {
                state.unplaced.remove(lsn);
            }
        }
        let payload =
            postcard::to_allocvec(&format::Consumed { commits }).map_err(io::Error::other)?;
        let (_, end) = self.append(Kind::Consumed, &[&payload], |_| true, |_, _| {})?;
        self.flush_through(end)
    }

    /// Makes every file written from the log durable (`syncfs` of the data directory).
    pub(crate) fn sync_files(&self) -> io::Result<()> {
        let root = File::open(&self.root)?;
        nix::unistd::syncfs(&root).map_err(io::Error::from)
    }

    /// Appends a record of `pieces`, making room with checkpoints when the ring is full
    /// (evicting open streams when nothing else frees it). Once there is room, `valid`
    /// decides under the state's lock whether the record is still wanted (else
    /// `Interrupted`); `register` runs under the lock once it is written. Returns its LSN
    /// and end.
    fn append(
        &self,
        kind: Kind,
        pieces: &[&[u8]],
        valid: impl Fn(&State) -> bool,
        register: impl FnOnce(&mut State, u64),
    ) -> io::Result<(u64, u64)> {
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
        let mut evicted = false;
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
            // Flushed first, so that every commit in the ring can be written out.
            let (head, before) = (state.head, state.checkpoint);
            drop(state);
            self.flush_through(head)?;
            self.checkpoint()?;
            state = self.state();
            if state.checkpoint == before {
                if evicted {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "the write-ahead log is full and a checkpoint did not free it",
                    ));
                }
                // Data sets still arriving hold the ring: their parts are given up (each
                // is logged whole with its commit).
                for open in state.open.values_mut() {
                    open.evicted = true;
                }
                evicted = true;
            }
        }
        if !valid(&state) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the record is no longer wanted",
            ));
        }
        let skip = geometry.skip_before(state.head, total);
        if skip > 0 {
            // The rest of this segment is skipped (marked, when a header fits).
            let (segment, offset) = geometry.position(state.head);
            if skip >= HEADER {
                let marker = header(Kind::Skip, self.epoch, state.head, &[]);
                self.segments[segment].write_all_at(&marker, offset)?;
                state.written[segment] = state.head + HEADER;
            }
            state.head += skip;
        }
        let lsn = state.head;
        let (segment, offset) = geometry.position(lsn);
        // Written where they are (no copy into one buffer): the header, then each piece.
        let file = &self.segments[segment];
        file.write_all_at(&header(kind, self.epoch, lsn, pieces), offset)?;
        let mut at = offset + HEADER;
        for piece in pieces {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        state.head = lsn + total;
        state.written[segment] = state.head;
        state.last_append = Instant::now();
        register(&mut state, lsn);
        Ok((lsn, state.head))
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
        self.sync_files()?;
        self.write_checkpoint(target)
    }

    /// Records, durably, that the log before `target` is no longer needed (and the
    /// number this run writes its records with).
    fn write_checkpoint(&self, target: u64) -> io::Result<()> {
        let text = format!("{target} {}", self.epoch);
        write_durably(&self.dir, "checkpoint", text.as_bytes())?;
        let mut state = self.state();
        state.checkpoint = state.checkpoint.max(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Opening a data directory's log: its shape and checkpoint read, its segments created
//! (zero-filled) where missing, what follows the checkpoint replayed, and a log of another
//! shape (an earlier version's) replaced once replayed.

use super::format::Geometry;
use super::{flush::flusher, State, Wal};
use crate::storage::disk::DiskLayout;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

impl Wal {
    /// Opens the log of the data directory `root` (creating and zero-filling its segments
    /// the first time) and replays what follows its checkpoint into `layout`; returns the
    /// log and the number of instances replayed. A thread keeps parts flushed.
    pub(crate) fn open(root: &Path, layout: &DiskLayout) -> io::Result<(Arc<Wal>, usize)> {
        Wal::open_shaped(root, layout, Geometry::NEW)
    }

    /// As [`Wal::open`], new segments shaped as `wanted`.
    pub(super) fn open_shaped(
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
        // The checkpoint and the number its run wrote records with (none: a log of an
        // earlier version, or new).
        let (checkpoint, written_with) = match fs::read_to_string(dir.join("checkpoint")) {
            Ok(text) => parse_checkpoint(&text).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "an unreadable wal/checkpoint")
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(e),
        };
        let epoch = (written_with + 1) & 0xFF_FFFF;
        let epoch = epoch.max(1);
        let wal = Wal::with_segments(root, layout, recorded, checkpoint, epoch)?;
        // Only creating the segments may fail for want of room (the caller then runs
        // without a log); a replay that fails stops the start-up.
        let replayed = wal.replay(written_with).map_err(|e| {
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
            Wal::with_segments(root, layout, wanted, head, epoch)?
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
        epoch: u32,
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
            let len = file.metadata()?.len();
            if len > 0 && len < geometry.segment_bytes && checkpoint > 0 {
                // Zero-filling it would wipe records a checkpoint may still need.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is shorter than the log's segments", path.display()),
                ));
            }
            if len < geometry.segment_bytes {
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
            epoch,
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
}

/// A checkpoint file: the LSN, then the number its run wrote records with (absent in
/// logs of earlier versions: 0).
fn parse_checkpoint(text: &str) -> Option<(u64, u32)> {
    let mut words = text.split_whitespace();
    let lsn = words.next()?.parse().ok()?;
    let epoch = match words.next() {
        Some(word) => word.parse().ok()?,
        None => 0,
    };
    Some((lsn, epoch))
}

/// Writes `name` in `dir` so that a crash leaves the old or the new content.
pub(super) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

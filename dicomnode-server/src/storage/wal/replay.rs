//! Start-up: every instance committed after the checkpoint is written into place again,
//! but for those consumed (processed and deleted) since, and those an instance of the same
//! file consumed later replaced.

use super::format::{
    read_at, read_commit, CommitInfo, Consumed, Kind, ReadRecord, WholeRecord, HEADER,
};
use super::Wal;
use std::collections::{HashMap, HashSet};
use std::io;

/// What the log says was consumed: the commits, and for each file the last consumed
/// commit of it.
#[derive(Default)]
struct ConsumedCommits {
    commits: HashSet<u64>,
    latest: HashMap<(String, String), u64>,
}

impl ConsumedCommits {
    /// Whether the commit at `lsn` of `key`'s `file_name` is not to be written back.
    fn covers(&self, lsn: u64, key: &str, file_name: &str) -> bool {
        self.commits.contains(&lsn)
            || self
                .latest
                .get(&(key.to_string(), file_name.to_string()))
                .is_some_and(|at| *at > lsn)
    }
}

impl Wal {
    /// Writes every instance committed after the checkpoint into place (unless it was
    /// consumed), then records a checkpoint at the log's end with this run's number;
    /// returns how many. `written_with`: the number the records were written with.
    pub(super) fn replay(&self, written_with: u32) -> io::Result<usize> {
        // First the consumed commits, and where each commit's file goes.
        let mut consumed = ConsumedCommits::default();
        let mut files: HashMap<u64, (String, String)> = HashMap::new();
        self.scan(written_with, |lsn, record| {
            match record.kind {
                Kind::Consumed => {
                    if let Ok(c) = postcard::from_bytes::<Consumed>(&record.payload) {
                        consumed.commits.extend(c.commits);
                    }
                }
                Kind::Commit => {
                    if let Some((info, _)) = read_commit(&record.payload) {
                        files.insert(lsn, (info.key, info.file_name));
                    }
                }
                _ => {}
            }
            Ok(true)
        })?;
        for lsn in &consumed.commits {
            if let Some(file) = files.get(lsn) {
                let latest = consumed.latest.entry(file.clone()).or_insert(*lsn);
                *latest = (*latest).max(*lsn);
            }
        }
        let mut replayed = 0;
        let end = self.scan(written_with, |lsn, record| {
            match record.kind {
                // Read with their commit; without one, the data set never completed.
                Kind::Part | Kind::Skip | Kind::Consumed => {}
                Kind::Commit => {
                    if self.replay_commit(written_with, lsn, &record.payload, &consumed)? {
                        replayed += 1;
                    }
                }
                Kind::Record => {
                    let Ok(whole) = postcard::from_bytes::<WholeRecord>(&record.payload) else {
                        tracing::warn!(lsn, "an unreadable record ends the write-ahead log");
                        return Ok(false);
                    };
                    if !consumed.covers(lsn, &whole.key, &whole.file_name) {
                        let dirs: Vec<&str> = whole.input_dirs.iter().map(String::as_str).collect();
                        self.layout.materialize(
                            &whole.key,
                            &dirs,
                            &whole.file_name,
                            &[&whole.bytes],
                        )?;
                        replayed += 1;
                    }
                }
            }
            Ok(true)
        })?;
        {
            let mut state = self.state();
            state.head = end;
            state.synced = end;
            state.syncing_to = end;
        }
        // Always written: from now on records carry this run's number.
        self.sync_files()?;
        self.write_checkpoint(end)?;
        Ok(replayed)
    }

    /// Calls `each` with every valid record after the checkpoint, in order, until it
    /// returns `false`; returns where the log ends.
    fn scan(
        &self,
        written_with: u32,
        mut each: impl FnMut(u64, &ReadRecord) -> io::Result<bool>,
    ) -> io::Result<u64> {
        let geometry = self.geometry;
        let start = self.state().checkpoint;
        let mut lsn = start;
        // A ring's worth at most: beyond it, records are an older pass's.
        while lsn - start < geometry.ring() {
            let (_, offset) = geometry.position(lsn);
            if offset + HEADER > geometry.segment_bytes {
                lsn += geometry.segment_bytes - offset;
                continue;
            }
            let Some(record) = read_at(&geometry, &self.segments, written_with, lsn)? else {
                break;
            };
            if record.kind == Kind::Skip {
                lsn += geometry.segment_bytes - offset;
                continue;
            }
            if !each(lsn, &record)? {
                break;
            }
            lsn += HEADER + record.payload.len() as u64;
        }
        Ok(lsn)
    }

    /// Writes the instance of the commit at `lsn` into place; `false` (logged) when its
    /// record or a part of it cannot be read back, or it was consumed.
    fn replay_commit(
        &self,
        written_with: u32,
        lsn: u64,
        payload: &[u8],
        consumed: &ConsumedCommits,
    ) -> io::Result<bool> {
        let Some((info, tail_at)) = read_commit(payload) else {
            tracing::warn!(
                lsn,
                "an unreadable commit in the write-ahead log is skipped"
            );
            return Ok(false);
        };
        if consumed.covers(lsn, &info.key, &info.file_name) {
            return Ok(false);
        }
        let CommitInfo {
            sop_class,
            sop_instance,
            transfer_syntax,
            ..
        } = &info;
        let mut pieces = vec![crate::storage::placing::part10_head(
            sop_class,
            sop_instance,
            transfer_syntax,
        )?];
        for &part in &info.parts {
            match read_at(&self.geometry, &self.segments, written_with, part)? {
                Some(record) if record.kind == Kind::Part => pieces.push(record.payload),
                _ => {
                    tracing::error!(lsn, part, sop_instance = %info.sop_instance, "a part of a logged instance cannot be read back; the instance is skipped");
                    return Ok(false);
                }
            }
        }
        pieces.push(payload[tail_at..].to_vec());
        let parts: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let dirs: Vec<&str> = info.input_dirs.iter().map(String::as_str).collect();
        self.layout
            .materialize(&info.key, &dirs, &info.file_name, &parts)?;
        Ok(true)
    }
}

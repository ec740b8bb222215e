//! Start-up: every instance committed after the checkpoint is written into place again,
//! but for those consumed (processed and deleted) after their commit.

use super::format::{read_at, read_commit, Consumed, Kind, ReadRecord, WholeRecord, HEADER};
use super::Wal;
use std::collections::HashMap;
use std::io;

impl Wal {
    /// Writes every instance committed after the checkpoint into place (unless it was
    /// consumed later), then checkpoints; returns how many.
    pub(super) fn replay(&self) -> io::Result<usize> {
        let mut consumed = HashMap::new();
        self.scan(|lsn, record| {
            if record.kind == Kind::Consumed {
                if let Ok(c) = postcard::from_bytes::<Consumed>(&record.payload) {
                    for name in c.file_names {
                        consumed.insert((c.key.clone(), name), lsn);
                    }
                }
            }
            Ok(true)
        })?;
        let later = |key: &str, name: &str, lsn: u64| {
            consumed
                .get(&(key.to_string(), name.to_string()))
                .is_some_and(|at| *at > lsn)
        };
        let mut replayed = 0;
        let end = self.scan(|lsn, record| {
            match record.kind {
                // Read with their commit; without one, the data set never completed.
                Kind::Part | Kind::Skip | Kind::Consumed => {}
                Kind::Commit => {
                    if self.replay_commit(lsn, &record.payload, &later)? {
                        replayed += 1;
                    }
                }
                Kind::Record => {
                    let Ok(whole) = postcard::from_bytes::<WholeRecord>(&record.payload) else {
                        tracing::warn!(lsn, "an unreadable record ends the write-ahead log");
                        return Ok(false);
                    };
                    if !later(&whole.key, &whole.file_name, lsn) {
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
        }
        self.checkpoint()?;
        Ok(replayed)
    }

    /// Calls `each` with every valid record after the checkpoint, in order, until it
    /// returns `false`; returns where the log ends.
    fn scan(&self, mut each: impl FnMut(u64, &ReadRecord) -> io::Result<bool>) -> io::Result<u64> {
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
            let Some(record) = read_at(&geometry, &self.segments, lsn)? else {
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
    /// record or a part of it cannot be read back, or it was consumed later.
    fn replay_commit(
        &self,
        lsn: u64,
        payload: &[u8],
        consumed_later: &impl Fn(&str, &str, u64) -> bool,
    ) -> io::Result<bool> {
        let Some((info, tail_at)) = read_commit(payload) else {
            tracing::warn!(
                lsn,
                "an unreadable commit in the write-ahead log is skipped"
            );
            return Ok(false);
        };
        if consumed_later(&info.key, &info.file_name, lsn) {
            return Ok(false);
        }
        let mut pieces = vec![crate::storage::placing::part10_head(
            &info.sop_class,
            &info.sop_instance,
            &info.transfer_syntax,
        )?];
        for &part in &info.parts {
            match read_at(&self.geometry, &self.segments, part)? {
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

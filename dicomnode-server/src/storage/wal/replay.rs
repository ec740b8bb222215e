//! Start-up: every instance committed after the checkpoint is written into place again.

use super::format::{read_at, read_commit, Kind, WholeRecord, HEADER};
use super::Wal;
use std::io;

impl Wal {
    /// Writes every instance committed after the checkpoint into place, then checkpoints;
    /// returns how many.
    pub(super) fn replay(&self) -> io::Result<usize> {
        let geometry = self.geometry;
        let start = self.state().checkpoint;
        let mut lsn = start;
        let mut replayed = 0;
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
            let len = record.payload.len() as u64;
            match record.kind {
                Kind::Skip => {
                    lsn += geometry.segment_bytes - offset;
                    continue;
                }
                // Read with their commit; without one, the data set never completed.
                Kind::Part => {}
                Kind::Commit => {
                    if self.replay_commit(lsn, &record.payload)? {
                        replayed += 1;
                    }
                }
                Kind::Record => {
                    let Ok(whole) = postcard::from_bytes::<WholeRecord>(&record.payload) else {
                        tracing::warn!(lsn, "an unreadable record ends the write-ahead log");
                        break;
                    };
                    let dirs: Vec<&str> = whole.input_dirs.iter().map(String::as_str).collect();
                    self.layout
                        .materialize(&whole.key, &dirs, &whole.file_name, &[&whole.bytes])?;
                    replayed += 1;
                }
            }
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

    /// Writes the instance of the commit at `lsn` into place; `false` (logged) when its
    /// record or a part of it cannot be read back.
    fn replay_commit(&self, lsn: u64, payload: &[u8]) -> io::Result<bool> {
        let Some((info, tail_at)) = read_commit(payload) else {
            tracing::warn!(lsn, "an unreadable commit in the write-ahead log is skipped");
            return Ok(false);
        };
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

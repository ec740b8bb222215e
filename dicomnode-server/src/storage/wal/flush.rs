//! Flushing the log: group commit, a commit's own `fdatasync` beside a running one, and
//! the thread that keeps arriving parts flushed.

use super::Wal;
use std::io;
use std::sync::Weak;
use std::time::Duration;

impl Wal {
    /// Returns once everything before `end` is flushed. A flush running that reaches
    /// `end` is waited for (one `fdatasync` for all who wait); else this caller starts its
    /// own at once, beside a running one (the kernel waits for the pages that one is
    /// writing and the device flushes both), rather than queueing behind it.
    pub(super) fn flush_through(&self, end: u64) -> io::Result<()> {
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
            // The flusher waited for this flush only if parts are left to flush.
            if state.parts_through > state.synced {
                self.wake.notify_one();
            }
            result?;
        }
    }
}

/// Keeps the parts of arriving data sets flushed, so that a commit finds little left to
/// flush. Ends when the log is dropped or failed.
pub(super) fn flusher(wal: &Weak<Wal>) {
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

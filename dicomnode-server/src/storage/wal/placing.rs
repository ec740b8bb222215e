//! Writing logged instances into their files: a group's before it is taken out for
//! processing, and every flushed one before a checkpoint.

use super::format::read_piece;
use super::{Unplaced, Wal};
use std::io;

impl Wal {
    /// Writes the files of the group's logged instances (before the group's directory is
    /// taken out for processing). On failure the rest stay in the log, to be written by a
    /// later attempt or at the next start.
    pub(crate) fn place_group(&self, key: &str) -> io::Result<()> {
        self.place(|u| u.info.key == key, false)
    }

    /// Writes the files of every flushed logged instance (before a checkpoint).
    pub(super) fn place_flushed(&self) -> io::Result<()> {
        self.place(|_| true, true)
    }

    fn place(&self, which: impl Fn(&Unplaced) -> bool, flushed_only: bool) -> io::Result<()> {
        let _one = self.placing.lock().unwrap_or_else(|p| p.into_inner());
        let todo: Vec<(u64, Unplaced)> = {
            let state = self.state();
            state
                .unplaced
                .iter()
                .filter(|(_, u)| which(u) && (!flushed_only || u.end <= state.synced))
                .map(|(commit, u)| (*commit, u.clone()))
                .collect()
        };
        // One that cannot be written does not keep the others from theirs.
        let mut first_error = None;
        for (commit, unplaced) in todo {
            match self.write_files(&unplaced) {
                Ok(()) => {
                    self.state().unplaced.remove(&commit);
                }
                Err(error) => {
                    tracing::error!(%error, sop_instance = %unplaced.info.sop_instance, "cannot write a logged instance's file; it stays in the log");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes one logged instance's file into its input directories, from the log.
    fn write_files(&self, unplaced: &Unplaced) -> io::Result<()> {
        let info = &unplaced.info;
        let head = crate::storage::placing::part10_head(
            &info.sop_class,
            &info.sop_instance,
            &info.transfer_syntax,
        )?;
        let mut pieces = vec![head];
        for piece in &unplaced.pieces {
            pieces.push(read_piece(
                &self.geometry,
                &self.segments,
                piece.lsn,
                piece.offset,
                piece.len,
            )?);
        }
        let parts: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let dirs: Vec<&str> = info.input_dirs.iter().map(String::as_str).collect();
        self.layout
            .materialize(&info.key, &dirs, &info.file_name, &parts)
    }
}

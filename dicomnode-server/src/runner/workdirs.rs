//! The runner's own directory under the work root, which holds its children's job
//! directories (and those hold the working directories of each patient).
//!
//! A node killed with SIGKILL cannot clean up, so ownership is made visible instead: the
//! runner holds an exclusive `flock` on `owner.lock` in its directory for as long as it
//! lives, and the kernel releases it however the node dies. A starting runner removes
//! every runner directory of the work root whose lock it can take (its owner is gone) and
//! leaves alone those whose lock is held (another live node's).

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Prefix of runner directories in the work root.
const PREFIX: &str = "dicomnode-node-";
const LOCK_FILE: &str = "owner.lock";

/// A runner's directory, owned while this value lives.
#[derive(Debug)]
pub(crate) struct RunnerDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl RunnerDir {
    /// Removes the directories of runners that are gone, then makes this runner's own.
    pub(crate) fn claim(work_root: &Path) -> io::Result<RunnerDir> {
        std::fs::create_dir_all(work_root)?;
        let swept = sweep(work_root);
        if swept > 0 {
            tracing::info!(work_root = %work_root.display(), removed = swept, "removed the work directories of nodes that are gone");
        }
        // Locked before it gets a name a sweeper looks at, so no sweeper can take it.
        let starting = tempfile::Builder::new()
            .prefix("dicomnode-starting-")
            .tempdir_in(work_root)?;
        let file = File::create(starting.path().join(LOCK_FILE))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let path = work_root.join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::rename(starting.path(), &path)?;
        // Renamed away: the guard has nothing left to remove.
        drop(starting);
        Ok(RunnerDir { path, _lock: lock })
    }

    /// Removes the directory now (the node is stopping; a process that exits does not
    /// drop what other threads hold).
    pub(crate) fn remove(&self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), %error, "cannot remove the runner's directory");
            }
        }
    }

    /// Where this runner's job directories go.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunnerDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the runner directories whose owner is gone; returns how many.
fn sweep(work_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
            // Being created by a starting node (or not ours): left alone.
            continue;
        };
        // The lock is ours only if its owner is gone; held while the directory goes.
        if let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot remove the work directory of a node that is gone")
                }
            }
        }
    }
    removed
}

//! What a child prints, bounded: logged line by line within a budget per patient, its last
//! lines kept (each cut short) for the failure record, and all of it, up to a cap, in a
//! file in the job's directory, which the runner keeps beside a failed batch.
//!
//! A child that prints 20 MiB must not turn the node's log into 44 MB of INFO lines, nor
//! its failure record into hundreds of KiB.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// The file, in the job's directory, holding everything the child printed for the current
/// patient.
pub(crate) const OUTPUT_FILE: &str = "output.log";
/// Lines of a child's output kept for its failure record.
pub const TAIL_LINES: usize = 40;
/// Characters kept of each of those lines.
pub const TAIL_LINE_CHARS: usize = 500;
/// Lines of output (and log records) of one patient's processing logged by the node.
pub const LOG_LINES: u64 = 2_000;
/// Bytes of output (and log records) of one patient's processing logged by the node.
pub const LOG_BYTES: u64 = 512 * 1024;
/// Bytes of output kept in the output file.
const FILE_BYTES: u64 = 64 << 20;

/// One child's output, shared by its two pumps and the relay of its log records.
pub(crate) struct ChildOutput {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    patient: String,
    tail: VecDeque<String>,
    logged_lines: u64,
    logged_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    file: Option<BufWriter<File>>,
    file_bytes: u64,
}

impl ChildOutput {
    pub(crate) fn new(path: PathBuf) -> Self {
        ChildOutput {
            path,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new patient: a fresh budget, tail and file (made at the first line: creating a
    /// file costs about 0.4 ms here, and most children print nothing).
    pub(crate) fn start_job(&self, patient: &str) {
        let mut state = self.lock();
        *state = State {
            patient: patient.to_string(),
            ..State::default()
        };
    }

    /// Records a line the child printed; returns the patient to log it for, or `None`
    /// when the budget is spent.
    pub(crate) fn line(&self, stream: &str, text: &str) -> Option<String> {
        let mut state = self.lock();
        let bytes = text.len() as u64 + 1;
        if state.file_bytes < FILE_BYTES {
            if state.file.is_none() {
                state.file = File::create(&self.path).ok().map(BufWriter::new);
            }
            if let Some(file) = &mut state.file {
                let _ = writeln!(file, "{stream}: {text}");
            }
            state.file_bytes += bytes;
        }
        if state.tail.len() == TAIL_LINES {
            state.tail.pop_front();
        }
        let mut kept: String = text.chars().take(TAIL_LINE_CHARS).collect();
        if kept.len() < text.len() {
            kept.push_str(" [...]");
        }
        state.tail.push_back(format!("{stream}: {kept}"));
        state.spend(bytes).then(|| state.patient.clone())
    }

    /// Whether a log record of `bytes` the child sent may be logged.
    pub(crate) fn admit(&self, bytes: usize) -> bool {
        self.lock().spend(bytes as u64)
    }

    /// The patient's processing ended: says what was not logged.
    pub(crate) fn end_job(&self, pid: u32) {
        let mut state = self.lock();
        if let Some(file) = &mut state.file {
            let _ = file.flush();
        }
        if state.dropped_lines > 0 {
            tracing::warn!(
                pid,
                lines_not_logged = state.dropped_lines,
                bytes_not_logged = state.dropped_bytes,
                "the child's output went over its budget of {LOG_LINES} lines or {} KiB per patient: the rest was not logged (a failed attempt keeps all of it, up to {} MiB, beside its failure record)",
                LOG_BYTES >> 10,
                FILE_BYTES >> 20
            );
        }
    }

    /// The last lines printed for the current patient.
    pub(crate) fn tail(&self) -> Vec<String> {
        self.lock().tail.iter().cloned().collect()
    }

    /// The file with everything printed for the current patient, flushed.
    pub(crate) fn file(&self) -> Option<PathBuf> {
        let mut state = self.lock();
        let file = state.file.as_mut()?;
        file.flush().ok()?;
        Some(self.path.clone())
    }
}

impl State {
    fn spend(&mut self, bytes: u64) -> bool {
        if self.logged_lines < LOG_LINES && self.logged_bytes + bytes <= LOG_BYTES {
            self.logged_lines += 1;
            self.logged_bytes += bytes;
            true
        } else {
            self.dropped_lines += 1;
            self.dropped_bytes += bytes;
            false
        }
    }
}

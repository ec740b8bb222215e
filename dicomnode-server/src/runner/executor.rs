//! Where an attempt runs. The runner decides *when* a batch runs and what its ending
//! means (retry, quarantine, success); an executor decides *where*: a local child
//! ([`super::local::LocalChildren`]), a Slurm job ([`super::slurm::SlurmExecutor`]), and
//! later a Kubernetes Job. The job a child receives and the report it sends back are the
//! same whatever the executor (see [`super::wire`]).
//!
//! An executor that hands jobs to a system outliving the node (a cluster) records what it
//! submitted beside the batch, so that a restarted node adopts the job instead of
//! submitting it again; [`Executor::release`] removes that record once the runner has
//! recorded the attempt's ending.

use super::wire::Report;
use super::{unix_micros, Outcome};
use crate::storage::PatientBatch;
use std::path::Path;
use std::time::Duration;

/// How one attempt ended, as the executor saw it.
pub(crate) struct Attempt {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The last lines the processing printed.
    pub(crate) tail: Vec<String>,
    /// For a failure: the name under which all of its output is kept beside the batch.
    pub(crate) output: Option<String>,
}

impl Attempt {
    /// An attempt that did not run, with why.
    pub(crate) fn not_run(message: impl Into<String>) -> Self {
        Attempt {
            outcome: Outcome::NotRun(message.into()),
            tail: Vec::new(),
            output: None,
        }
    }
}

/// Runs attempts at patients' batches somewhere.
pub(crate) trait Executor: Send + Sync {
    /// Runs one attempt at `batch` (or follows the one a previous run of the node
    /// started) and blocks the calling runner thread until it ends, or until the node
    /// stops ([`Executor::stop`]).
    fn run(&self, batch: &PatientBatch) -> Attempt;
    /// The runner recorded the attempt's ending (success marked, failure written): what
    /// the executor kept for it (a job's record and directory) may go.
    fn release(&self, batch: &PatientBatch);
    /// The node is stopping: no attempt starts any more; running ones may finish within
    /// `grace` (or, for a cluster, are left running or cancelled).
    fn stop(&self, grace: Duration);
    /// Ends every running attempt now (a second signal).
    fn kill_all(&self);
    /// The grace is over: ends what is still running here (a local child) and, when
    /// `all_ended`, removes the executor's own directories.
    fn finish(&self, all_ended: bool);
    /// A word for the log and `--help`: "local", "slurm".
    fn name(&self) -> &'static str;
}

/// Where a report came from, for the log.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ran {
    /// A local child process.
    Pid(u32),
    /// A Slurm job.
    SlurmJob(u32),
}

/// Logs what a report tells besides its outcome: the child's timings and working
/// directory.
pub(crate) fn log_report(batch: &PatientBatch, report: &Report, ran: Ran) {
    let ms = |us: u64| us as f64 / 1000.0;
    let timings = report.entered_process_us.map(|entered| {
        (
            ms(entered.saturating_sub(unix_micros(batch.triggered_at))),
            report.process_us.map(ms),
            report.export_us.map(ms),
        )
    });
    let removed = report.workdir_removed && !Path::new(&report.workdir).exists();
    let workdir = &report.workdir;
    match ran {
        Ran::Pid(pid) => {
            if let Some((trigger_to_process_ms, process_ms, export_ms)) = timings {
                tracing::info!(
                    pid,
                    trigger_to_process_ms,
                    process_ms,
                    export_ms,
                    "child timings"
                );
            }
            tracing::info!(pid, %workdir, removed, "child working directory");
        }
        Ran::SlurmJob(slurm_job) => {
            if let Some((trigger_to_process_ms, process_ms, export_ms)) = timings {
                tracing::info!(
                    slurm_job,
                    trigger_to_process_ms,
                    process_ms,
                    export_ms,
                    "child timings"
                );
            }
            tracing::info!(slurm_job, %workdir, removed, "child working directory");
        }
    }
}

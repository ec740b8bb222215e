//! Runs each patient's processing in a child process: the node's own executable,
//! re-executed (never forked into our code) with [`CHILD_ENV`] set, in a process group of
//! its own.
//!
//! At most `max_children` run at once; batches beyond wait in arrival order. A child is
//! fresh for each patient by default; with warm workers, one child takes patients one
//! after another (each in a fresh working directory) and is replaced after a number of
//! patients and after any failure. See [`wire`] for what crosses between them.

mod child;
mod executor;
mod local;
mod output;
pub(crate) mod slurm;
mod supervise;
pub mod wire;
mod workdirs;

pub use child::{child_entry_among, is_child, ChildEntry};
pub use slurm::{ControlError as SlurmToolError, SlurmError};

use crate::config::{ChildPolicy, ExecutorChoice, NodeConfig};
use crate::storage::{InstanceData, PatientBatch, Storage};
use dicomnode_core::{Pipeline, RetryPolicy};
use executor::{Attempt, Executor};
use local::LocalChildren;
use slurm::SlurmExecutor;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wire::{ChildOutcome, Job, JobInput, JobInstance};
use workdirs::RunnerDir;

/// Set in the environment of a processing child, to the type name of the pipeline whose
/// jobs it runs. A process that has it runs jobs and exits; it never binds a port.
pub const CHILD_ENV: &str = "DICOMNODE_CHILD";
/// Set in a child's environment to its memory limit (RLIMIT_AS, bytes).
pub const MEMORY_LIMIT_ENV: &str = "DICOMNODE_MEMORY_LIMIT";
/// Set in a cluster job's environment to the job's directory: the child reads its job
/// from [`JOB_FILE`] there and appends its messages to [`EVENTS_FILE`], instead of
/// talking over a socket to a parent on the same machine.
pub const JOB_DIR_ENV: &str = "DICOMNODE_CHILD_JOB_DIR";
/// The job, one frame (see [`wire`]), in a cluster job's directory.
pub(crate) const JOB_FILE: &str = "job.bin";
/// The child's messages (log records, then the report), frames appended one after
/// another, in a cluster job's directory.
pub(crate) const EVENTS_FILE: &str = "events.bin";

/// Why the runner could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The pipeline's state could not be encoded.
    #[error("cannot encode the pipeline's state for the child: {0}")]
    EncodePipeline(#[source] postcard::Error),
    /// The worker executable is unknown.
    #[error("cannot find the node's own executable to re-execute: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// The runner's directory under the work root could not be made.
    #[error("cannot make the runner's directory in {root}")]
    WorkDir {
        /// The work root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Slurm executor could not be prepared.
    #[error("cannot prepare the Slurm executor")]
    Slurm(#[source] slurm::SlurmError),
}

/// How a patient's processing ended, as the node tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The child reported success.
    Success(String),
    /// The child reported a failure (error, panic, failed export, ...).
    Failed(ChildOutcome),
    /// The time limit passed: the child's process group was killed.
    TimedOut(Duration),
    /// The child ran out of its memory limit.
    OutOfMemory(u64),
    /// The child was killed by a signal (abort, segfault, ...).
    Signalled(i32),
    /// The child exited with this code without a report.
    Exited(i32),
    /// The child could not be started or talked to.
    NotRun(String),
    /// The job was cancelled from outside (a cluster's `scancel`, an administrator).
    Cancelled(String),
    /// The job ended for a reason outside it (its cluster node failed, it was
    /// preempted): run again without counting as an attempt, a few times in a row.
    Transient(String),
}

impl Outcome {
    /// A short word for the metrics: how an attempt ended.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            Outcome::Success(_) | Outcome::Failed(ChildOutcome::Success(_)) => "success",
            Outcome::Failed(ChildOutcome::Setup(_)) => "setup",
            Outcome::Failed(ChildOutcome::BuildFailed(_)) => "build",
            Outcome::Failed(ChildOutcome::ProcessFailed(_)) => "process",
            Outcome::Failed(ChildOutcome::Panicked(_)) => "panicked",
            Outcome::Failed(ChildOutcome::ExportFailed(_)) => "export",
            Outcome::TimedOut(_) => "timed_out",
            Outcome::OutOfMemory(_) => "out_of_memory",
            Outcome::Signalled(_) => "signalled",
            Outcome::Exited(_) => "exited",
            Outcome::NotRun(_) => "not_run",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Transient(_) => "transient",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success(summary) => write!(f, "success: {summary}"),
            Outcome::Failed(ChildOutcome::Setup(m)) => write!(f, "child set-up failed: {m}"),
            Outcome::Failed(ChildOutcome::BuildFailed(m)) => {
                write!(f, "building the processor failed: {m}")
            }
            Outcome::Failed(ChildOutcome::ProcessFailed(m)) => {
                write!(f, "process returned an error: {m}")
            }
            Outcome::Failed(ChildOutcome::Panicked(m)) => write!(f, "processor panicked: {m}"),
            Outcome::Failed(ChildOutcome::ExportFailed(m)) => write!(f, "export failed: {m}"),
            Outcome::Failed(ChildOutcome::Success(m)) => write!(f, "success: {m}"),
            Outcome::TimedOut(limit) => write!(f, "timed out after {} s", limit.as_secs_f64()),
            Outcome::OutOfMemory(limit) => {
                write!(
                    f,
                    "killed for memory: exceeded its limit of {} MiB",
                    limit >> 20
                )
            }
            Outcome::Signalled(signal) => write!(
                f,
                "child killed by signal {signal} ({})",
                signal_name(*signal)
            ),
            Outcome::Exited(code) => write!(f, "child exited with code {code} without a report"),
            Outcome::NotRun(m) => write!(f, "child could not run: {m}"),
            Outcome::Cancelled(m) => write!(f, "cancelled: {m}"),
            Outcome::Transient(m) => write!(f, "ended for a reason outside the job: {m}"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("unknown")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Hands patients' batches to the executor, at most `max_children` at once, and applies
/// the failure policy to how each attempt ended.
pub struct ChildRunner {
    executor: Box<dyn Executor>,
    storage: Arc<Storage>,
    failure: RetryPolicy,
    policy: ChildPolicy,
    queue: Mutex<VecDeque<PatientBatch>>,
    wake: Condvar,
    /// Jobs being processed now.
    busy: AtomicUsize,
    stopping: AtomicBool,
    /// The patients being processed now, by worker thread, and since when.
    running: Mutex<HashMap<std::thread::ThreadId, (String, SystemTime)>>,
}

/// How often in a row an attempt may end for a reason outside the job (a cluster node
/// failed, the job was preempted) without counting as a failed attempt.
const TRANSIENT_IN_A_ROW: u32 = 3;

impl ChildRunner {
    /// Prepares the runner and starts its worker threads.
    pub fn start<P: Pipeline>(
        pipeline: &P,
        config: &NodeConfig,
        storage: Arc<Storage>,
    ) -> Result<Arc<Self>, RunnerError> {
        let exe = match &config.worker_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(RunnerError::CurrentExe)?,
        };
        let pipeline_name = std::any::type_name::<P>();
        let encoded =
            Arc::new(postcard::to_allocvec(pipeline).map_err(RunnerError::EncodePipeline)?);
        let policy = ChildPolicy {
            max_children: config.children.max_children.max(1),
            ..config.children
        };
        let executor: Box<dyn Executor> = match &config.executor {
            ExecutorChoice::Local => {
                let work_root = config.work_root.clone().unwrap_or_else(std::env::temp_dir);
                let dir = RunnerDir::claim(&work_root).map_err(|source| RunnerError::WorkDir {
                    root: work_root.clone(),
                    source,
                })?;
                Box::new(LocalChildren::new(
                    exe,
                    pipeline_name,
                    encoded,
                    dir,
                    Arc::clone(&storage),
                    policy,
                ))
            }
            ExecutorChoice::Slurm(slurm) => Box::new(
                SlurmExecutor::start(
                    exe,
                    pipeline_name,
                    encoded,
                    slurm.clone(),
                    Arc::clone(&storage),
                    policy,
                )
                .map_err(RunnerError::Slurm)?,
            ),
        };
        let runner = Arc::new(ChildRunner {
            executor,
            storage,
            failure: config.failure,
            policy,
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            busy: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
        });
        tracing::info!(
            executor = runner.executor.name(),
            at_once = policy.max_children,
            "runner started"
        );
        for index in 0..runner.policy.max_children {
            let worker = Arc::clone(&runner);
            let spawned = std::thread::Builder::new()
                .name(format!("runner-{index}"))
                .spawn(move || worker.work());
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a runner thread");
            }
        }
        Ok(runner)
    }

    /// Queues a batch for processing; returns at once.
    pub fn submit(&self, batch: PatientBatch) {
        if self.stopping.load(Ordering::SeqCst) {
            tracing::warn!(patient = %dicomnode_core::completion::display_group_key(&batch.patient_key), "shutting down: not processed now{}", if batch.dir.is_some() { "; kept in the data directory for the next start" } else { "" });
            return;
        }
        if let Some(reason) = batch.missing_required_priors.clone() {
            // The pipeline declared it cannot run without them: a failure, kept.
            let patient = dicomnode_core::completion::display_group_key(&batch.patient_key);
            let place = self.storage.quarantine(batch);
            tracing::error!(%patient, %reason, %place, "the pipeline requires prior studies and they are unavailable: quarantined, not processed");
            return;
        }
        let waiting = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push_back(batch);
            queue.len()
        };
        let busy = self.busy.load(Ordering::SeqCst);
        if busy >= self.policy.max_children {
            tracing::info!(
                waiting,
                running = busy,
                "all children busy: the patient waits its turn"
            );
        }
        self.wake.notify_one();
    }

    fn next(&self) -> Option<PatientBatch> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(batch) = queue.pop_front() {
                return Some(batch);
            }
            queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The patients being processed now, with how long (seconds) each has been.
    pub(crate) fn running(&self) -> Vec<(String, f64)> {
        let now = SystemTime::now();
        let mut out: Vec<(String, f64)> = self
            .running
            .lock()
            .map(|r| {
                r.values()
                    .map(|(key, since)| {
                        (
                            key.clone(),
                            now.duration_since(*since).unwrap_or_default().as_secs_f64(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A worker thread: takes batches in arrival order, one at a time.
    fn work(self: Arc<Self>) {
        while let Some(batch) = self.next() {
            self.busy.fetch_add(1, Ordering::SeqCst);
            crate::metrics::global().children(1);
            let me = std::thread::current().id();
            if let Ok(mut running) = self.running.lock() {
                running.insert(
                    me,
                    (
                        dicomnode_core::completion::display_group_key(&batch.patient_key),
                        SystemTime::now(),
                    ),
                );
            }
            self.process(batch);
            if let Ok(mut running) = self.running.lock() {
                running.remove(&me);
            }
            crate::metrics::global().children(-1);
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs one attempt at a batch and applies the failure policy. Success deletes the
    /// batch's data; a failure is recorded beside the data and retried after the backoff;
    /// after the last attempt the batch goes to the quarantine.
    fn process(self: &Arc<Self>, mut batch: PatientBatch) {
        let span = tracing::info_span!("patient", key = %dicomnode_core::completion::display_group_key(&batch.patient_key));
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let Attempt {
            outcome,
            tail,
            output,
        } = self.executor.run(&batch);
        if let Outcome::Success(_) = outcome {
            crate::metrics::global().processed(started.elapsed());
            let attempt = batch.attempt;
            // Recorded first: a crash before the data are deleted does not process the
            // batch again at the next start.
            self.storage.mark_succeeded(&batch);
            self.executor.release(&batch);
            self.storage.batch_succeeded(batch);
            tracing::info!(%outcome, attempt, "processing finished");
            return;
        }
        if self.stopping.load(Ordering::SeqCst) {
            // Killed or cut short by the shutdown: not the processor's failure.
            tracing::warn!(%outcome, "processing interrupted by the shutdown; not counted as an attempt{}", if batch.dir.is_some() { ", kept for the next start" } else { "" });
            return;
        }
        if let Outcome::Transient(_) = outcome {
            if batch.transient < TRANSIENT_IN_A_ROW {
                batch.transient += 1;
                self.executor.release(&batch);
                tracing::warn!(%outcome, in_a_row = batch.transient, "the attempt ended for a reason outside the job: run again, not counted as an attempt");
                self.resubmit_after(batch, Duration::from_secs(1));
                return;
            }
        }
        batch.transient = 0;
        crate::metrics::global().failed(outcome.cause());
        let attempts = self.failure.attempts();
        tracing::error!(
            %outcome,
            instances = batch.instance_count(),
            attempt = batch.attempt,
            attempts,
            "processing failed; the patient's instances are kept"
        );
        // Named, not pathed: the batch's directory moves (to the quarantine, say).
        let output = output.map_or(String::new(), |name| {
            format!("all of the child's output: {name}, beside this file\n")
        });
        let record = format!(
            "attempt {} of {attempts} failed at {} (unix time): {outcome}\n{output}last lines of the child's output:\n{}\n\n",
            batch.attempt,
            unix_micros(SystemTime::now()) / 1_000_000,
            tail.join("\n")
        );
        self.storage.record_failure(&batch, &record);
        self.executor.release(&batch);
        if batch.attempt >= attempts {
            let place = self.storage.quarantine(batch);
            tracing::error!(%place, "every attempt failed: the patient is quarantined (put it back with `dicomnode requeue`)");
            return;
        }
        let backoff = self.failure.wait_after(batch.attempt);
        tracing::warn!(retry_in = ?backoff, "processing will be retried");
        batch.attempt += 1;
        self.resubmit_after(batch, backoff);
    }

    /// Queues the batch again after `wait`, which does not hold a child slot.
    fn resubmit_after(self: &Arc<Self>, batch: PatientBatch, wait: Duration) {
        let runner = Arc::clone(self);
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            let mut batch = batch;
            batch.triggered_at = SystemTime::now();
            runner.submit(batch);
        });
    }

    /// Stops starting attempts, lets the running ones finish within `grace` (a cluster's
    /// jobs are left running or cancelled, as configured), then ends those still
    /// running. Waiting batches stay stored (on disk they are processed at the next
    /// start).
    pub fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        self.executor.stop(grace);
        let waiting = self.queue.lock().map(|q| q.len()).unwrap_or(0);
        while self.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.executor.finish(self.busy.load(Ordering::SeqCst) == 0);
        tracing::info!(
            waiting,
            "runner stopped{}",
            if self.storage.data_dir().is_some() {
                ": waiting patients stay in the data directory"
            } else {
                ": waiting patients were only in memory and are not kept"
            }
        );
    }

    /// Ends every running attempt now.
    pub fn kill_all(&self) {
        self.executor.kill_all();
    }
}

/// The job for a batch: paths for instances on disk, bytes for those in memory.
fn job_for<'a>(batch: &'a PatientBatch, pipeline: &'a [u8], work_root: &'a str) -> Job<'a> {
    Job {
        pipeline,
        patient_key: &batch.patient_key,
        origin: batch.origin.clone(),
        work_root,
        triggered_at_us: unix_micros(batch.triggered_at),
        inputs: batch
            .inputs
            .iter()
            .map(|(name, instances)| JobInput {
                name,
                instances: instances
                    .iter()
                    .map(|i| JobInstance {
                        sop_class_uid: &i.sop_class_uid,
                        sop_instance_uid: &i.sop_instance_uid,
                        transfer_syntax: &i.transfer_syntax,
                        dataset: match &i.data {
                            InstanceData::Memory(bytes) => bytes,
                            InstanceData::Disk => &[],
                        },
                        // A path, not a copy of the data.
                        file: batch
                            .file_of(name, i)
                            .map(|p| p.to_string_lossy().into_owned()),
                    })
                    .collect(),
            })
            .collect(),
        priors: batch.priors.clone(),
    }
}

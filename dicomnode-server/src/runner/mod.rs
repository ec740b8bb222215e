//! Runs each patient's processing in a child process: the node's own executable,
//! re-executed (never forked into our code) with [`CHILD_ENV`] set, in a process group of
//! its own.
//!
//! At most `max_children` run at once; batches beyond wait in arrival order. A child is
//! fresh for each patient by default; with warm workers, one child takes patients one
//! after another (each in a fresh working directory) and is replaced after a number of
//! patients and after any failure. See [`wire`] for what crosses between them.

mod child;
mod output;
mod supervise;
pub mod wire;
mod workdirs;

pub use child::{child_entry_among, is_child, ChildEntry};

use crate::config::{ChildPolicy, NodeConfig};
use crate::storage::{InstanceData, PatientBatch, Storage};
use dicomnode_core::{Pipeline, RetryPolicy};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use supervise::{ChildProcess, Launch};
use wire::{ChildOutcome, Job, JobInput, JobInstance, Report};
use workdirs::RunnerDir;

/// Set in the environment of a processing child, to the type name of the pipeline whose
/// jobs it runs. A process that has it runs jobs and exits; it never binds a port.
pub const CHILD_ENV: &str = "DICOMNODE_CHILD";
/// Set in a child's environment to its memory limit (RLIMIT_AS, bytes).
pub const MEMORY_LIMIT_ENV: &str = "DICOMNODE_MEMORY_LIMIT";

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

/// Starts children for patients, at most `max_children` at once, and supervises them.
pub struct ChildRunner {
    exe: PathBuf,
    pipeline_name: &'static str,
    pipeline: Vec<u8>,
    /// Holds the children's job directories; owned (locked) while the runner lives.
    dir: RunnerDir,
    storage: Arc<Storage>,
    failure: RetryPolicy,
    policy: ChildPolicy,
    queue: Mutex<VecDeque<PatientBatch>>,
    wake: Condvar,
    /// Process groups of the children alive now.
    alive: Mutex<HashSet<u32>>,
    /// Jobs being processed now.
    busy: AtomicUsize,
    stopping: AtomicBool,
    /// The patients being processed now, by worker thread, and since when.
    running: Mutex<HashMap<std::thread::ThreadId, (String, SystemTime)>>,
}

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
        let work_root = config.work_root.clone().unwrap_or_else(std::env::temp_dir);
        let dir = RunnerDir::claim(&work_root).map_err(|source| RunnerError::WorkDir {
            root: work_root.clone(),
            source,
        })?;
        let runner = Arc::new(ChildRunner {
            exe,
            pipeline_name: std::any::type_name::<P>(),
            pipeline: postcard::to_allocvec(pipeline).map_err(RunnerError::EncodePipeline)?,
            dir,
            storage,
            failure: config.failure,
            policy: ChildPolicy {
                max_children: config.children.max_children.max(1),
                ..config.children
            },
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            alive: Mutex::new(HashSet::new()),
            busy: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
        });
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
        let mut warm: Option<ChildProcess> = None;
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
            self.process(batch, &mut warm);
            if let Ok(mut running) = self.running.lock() {
                running.remove(&me);
            }
            crate::metrics::global().children(-1);
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(child) = warm.take() {
            self.retire(child, false);
        }
    }

    /// Runs one attempt at a batch and applies the failure policy. Success deletes the
    /// batch's data; a failure is recorded beside the data and retried after the backoff;
    /// after the last attempt the batch goes to the quarantine.
    fn process(self: &Arc<Self>, mut batch: PatientBatch, warm: &mut Option<ChildProcess>) {
        let span = tracing::info_span!("patient", key = %dicomnode_core::completion::display_group_key(&batch.patient_key));
        let _entered = span.enter();
        let started = std::time::Instant::now();
        // The batch's logged instances are made durable in their files before a child
        // acts on them: after a crash, the log cannot bring back what was processed.
        if !self.storage.checkpoint() {
            tracing::warn!("processing before the write-ahead log's checkpoint: a crash before the next one may process this batch again");
        }
        let (outcome, tail, output) = self.attempt(&batch, warm);
        if let Outcome::Success(_) = outcome {
            crate::metrics::global().processed(started.elapsed());
            let attempt = batch.attempt;
            // Recorded first: a crash before the data are deleted does not process the
            // batch again at the next start.
            self.storage.mark_succeeded(&batch);
            self.storage.batch_succeeded(batch);
            tracing::info!(%outcome, attempt, "processing finished");
            return;
        }
        if self.stopping.load(Ordering::SeqCst) {
            // Killed or cut short by the shutdown: not the processor's failure.
            tracing::warn!(%outcome, "processing interrupted by the shutdown; not counted as an attempt{}", if batch.dir.is_some() { ", kept for the next start" } else { "" });
            return;
        }
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
        if batch.attempt >= attempts {
            let place = self.storage.quarantine(batch);
            tracing::error!(%place, "every attempt failed: the patient is quarantined (put it back with `dicomnode requeue`)");
            return;
        }
        let backoff = self.failure.wait_after(batch.attempt);
        tracing::warn!(retry_in = ?backoff, "processing will be retried");
        batch.attempt += 1;
        // The wait does not hold a child slot.
        let runner = Arc::clone(self);
        std::thread::spawn(move || {
            std::thread::sleep(backoff);
            let mut batch = batch;
            batch.triggered_at = SystemTime::now();
            runner.submit(batch);
        });
    }

    /// One attempt: a child (fresh, or the warm one) runs the job. Returns how it ended,
    /// the last lines the child printed and, for a failure, where all of its output is kept.
    fn attempt(
        &self,
        batch: &PatientBatch,
        warm: &mut Option<ChildProcess>,
    ) -> (Outcome, Vec<String>, Option<String>) {
        let mut child = match warm.take() {
            Some(child) => child,
            None => match ChildProcess::spawn(&Launch {
                exe: &self.exe,
                pipeline_name: self.pipeline_name,
                memory_limit: self.policy.memory_limit,
                work_root: self.dir.path(),
            }) {
                Ok(child) => {
                    self.alive
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(child.pid());
                    child
                }
                Err(message) => return (Outcome::NotRun(message), Vec::new(), None),
            },
        };
        let job_root = child.job_root();
        let job = job_for(batch, &self.pipeline, &job_root);
        let end = child.run(&batch.patient_key, &job, self.policy.time_limit);
        let pid = child.pid();
        // A report that arrived counts, even if the time limit passed just after it.
        let outcome = end
            .report
            .as_ref()
            .map(|report| self.outcome_of_report(batch, report, pid));
        match outcome {
            Some(outcome @ Outcome::Success(_))
                if self
                    .policy
                    .warm_patients
                    .is_some_and(|limit| child.jobs < limit)
                    && !end.timed_out
                    && !self.stopping.load(Ordering::SeqCst) =>
            {
                let tail = child.tail();
                *warm = Some(child);
                (outcome, tail, None)
            }
            Some(outcome) => {
                // A fresh child's work is done; a warm one is replaced after a failure or
                // after its last patient.
                let tail = child.tail();
                let output = match outcome {
                    Outcome::Success(_) => None,
                    _ => self.keep_output(batch, &child),
                };
                self.retire(child, end.timed_out);
                (outcome, tail, output)
            }
            None => {
                // No report: the child died or was killed. Its status says how.
                let tail = child.tail();
                let output = self.keep_output(batch, &child);
                let status = self.retire(child, true);
                let outcome = if end.timed_out {
                    Outcome::TimedOut(self.policy.time_limit.unwrap_or_default())
                } else {
                    match status {
                        Some(status) => match (status.signal(), status.code()) {
                            (Some(6), _)
                                if self.policy.memory_limit.is_some()
                                    && tail.iter().any(|l| l.contains("memory allocation of")) =>
                            {
                                Outcome::OutOfMemory(self.policy.memory_limit.unwrap_or_default())
                            }
                            (Some(signal), _) => Outcome::Signalled(signal),
                            (None, Some(code)) => Outcome::Exited(code),
                            (None, None) => Outcome::NotRun(format!("child ended: {status}")),
                        },
                        None => Outcome::NotRun("the child's status is unknown".into()),
                    }
                };
                (outcome, tail, output)
            }
        }
    }

    fn outcome_of_report(&self, batch: &PatientBatch, report: &Report, pid: u32) -> Outcome {
        if let Some(entered) = report.entered_process_us {
            let ms = |us: u64| us as f64 / 1000.0;
            tracing::info!(
                pid,
                trigger_to_process_ms = ms(entered.saturating_sub(unix_micros(batch.triggered_at))),
                process_ms = report.process_us.map(ms),
                export_ms = report.export_us.map(ms),
                "child timings"
            );
        }
        tracing::info!(
            pid,
            workdir = %report.workdir,
            removed = report.workdir_removed && !Path::new(&report.workdir).exists(),
            "child working directory"
        );
        match &report.outcome {
            ChildOutcome::Success(summary) => Outcome::Success(summary.clone()),
            other => Outcome::Failed(other.clone()),
        }
    }

    /// Keeps all of a failed attempt's output beside its failure record (on disk); returns
    /// the name it is kept under.
    fn keep_output(&self, batch: &PatientBatch, child: &ChildProcess) -> Option<String> {
        self.storage.keep_output(batch, &child.output_file()?)
    }

    fn retire(&self, child: ChildProcess, kill_now: bool) -> Option<std::process::ExitStatus> {
        let pid = child.pid();
        let status = child.finish(kill_now);
        self.alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        status
    }

    /// Stops starting children, lets the running ones finish within `grace`, then kills
    /// the process groups of those still alive. Waiting batches stay stored (on disk they
    /// are processed at the next start).
    pub fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_all();
        let waiting = self.queue.lock().map(|q| q.len()).unwrap_or(0);
        let deadline = Instant::now() + grace;
        while self.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_all();
        if self.busy.load(Ordering::SeqCst) == 0 {
            self.dir.remove();
        }
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

    /// Kills the process group of every child alive.
    pub fn kill_all(&self) {
        let alive: Vec<u32> = self
            .alive
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        for pid in alive {
            tracing::warn!(pid, "killing the child's process group");
            supervise::kill_group(pid);
        }
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

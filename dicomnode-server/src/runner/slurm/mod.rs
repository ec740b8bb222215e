//! The Slurm executor: each attempt at a patient is a Slurm job.
//!
//! A job is a directory in the shared job directory (see [`jobdir`]); `sbatch --parsable`
//! submits its script, which runs the node's own binary in child mode on it. The job's ID
//! is recorded beside the batch (durably, on disk) before the job counts as submitted, so
//! a node that restarts adopts the jobs still pending or running, and collects those that
//! ended meanwhile, instead of submitting them again. The node follows a job by reading
//! what it writes (its messages and output, relayed into the node's log in the patient's
//! span, as with local children) and asks the controller about all of its jobs at most
//! once per poll interval, with one `squeue`.
//!
//! How a job ended, when it sent no report, comes from `scontrol show job` (or `sacct`):
//! FAILED with its exit code or signal, TIMEOUT, OUT_OF_MEMORY, CANCELLED, and NODE_FAIL,
//! PREEMPTED and BOOT_FAIL as transient endings (run again, not counted as attempts).

pub(crate) mod control;
pub(crate) mod jobdir;

use super::executor::{log_report, Attempt, Executor, Ran};
use super::output::ChildOutput;
use super::supervise::relay_job;
use super::wire::{ChildMessage, ChildOutcome, Report};
use super::Outcome;
use crate::config::{ChildPolicy, SlurmSettings};
use crate::storage::{PatientBatch, Storage};
pub use control::ControlError;
use control::{JobState, Queue};
use jobdir::{Events, JobSource, Lines};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a job's directory is looked at for new messages and output.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Why the Slurm executor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// The job directory could not be made.
    #[error("cannot make the job directory {dir}")]
    JobDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Slurm's tools cannot be run here.
    #[error("Slurm's tools (sbatch, squeue, scontrol, scancel) cannot be used")]
    Tools(#[source] ControlError),
}

/// Patients' jobs on a Slurm cluster.
pub(crate) struct SlurmExecutor {
    exe: PathBuf,
    pipeline_name: &'static str,
    pipeline: Arc<Vec<u8>>,
    settings: SlurmSettings,
    storage: Arc<Storage>,
    policy: ChildPolicy,
    queue: Queue,
    stopping: AtomicBool,
    /// The jobs followed now, by batch: ID, directory, and whether its end was seen.
    in_flight: Mutex<HashMap<String, (u32, PathBuf, bool)>>,
}

/// What is recorded beside a batch about its job: `name=`, `dir=` and, once `sbatch`
/// answered, `id=` lines.
struct JobRecord {
    name: String,
    dir: PathBuf,
    id: Option<u32>,
}

impl JobRecord {
    fn text(&self) -> String {
        let mut text = format!("name={}\ndir={}\n", self.name, self.dir.display());
        if let Some(id) = self.id {
            text.push_str(&format!("id={id}\n"));
        }
        text
    }

    fn parse(text: &str) -> Option<JobRecord> {
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_string))
        };
        Some(JobRecord {
            name: value("name=")?,
            dir: PathBuf::from(value("dir=")?),
            id: value("id=").and_then(|id| id.parse().ok()),
        })
    }
}

/// An attempt that ended for a reason outside the job (not counted).
fn transient(message: String) -> Attempt {
    Attempt {
        outcome: Outcome::Transient(message),
        tail: Vec::new(),
        output: None,
    }
}

/// Whether a tool failed because the controller could not be reached (or did not answer).
fn controller_unreachable(error: &ControlError) -> bool {
    match error {
        ControlError::Failed { status, stderr, .. } => {
            use std::os::unix::process::ExitStatusExt;
            status.signal().is_some()
                || [
                    "Unable to contact slurm controller",
                    "Socket timed out",
                    "Zero Bytes were transmitted",
                    "Connection refused",
                ]
                .iter()
                .any(|s| stderr.contains(s))
        }
        ControlError::Start { .. } | ControlError::Unexpected { .. } => false,
    }
}

/// A batch's identity while it is followed.
fn batch_id(batch: &PatientBatch) -> String {
    format!(
        "{}\u{1}{}",
        batch.patient_key,
        super::unix_micros(batch.triggered_at)
    )
}

impl SlurmExecutor {
    pub(crate) fn start(
        exe: PathBuf,
        pipeline_name: &'static str,
        pipeline: Arc<Vec<u8>>,
        settings: SlurmSettings,
        storage: Arc<Storage>,
        policy: ChildPolicy,
    ) -> Result<Self, SlurmError> {
        std::fs::create_dir_all(&settings.job_dir).map_err(|source| SlurmError::JobDir {
            dir: settings.job_dir.clone(),
            source,
        })?;
        let version = control::version().map_err(SlurmError::Tools)?;
        if let Some(limit) = policy.time_limit {
            if limit.as_secs() % 60 != 0 || limit.subsec_nanos() > 0 {
                tracing::warn!(
                    ?limit,
                    minutes = minutes(limit),
                    "Slurm counts time limits in whole minutes: the jobs' limit is rounded up"
                );
            }
        }
        tracing::info!(
            job_dir = %settings.job_dir.display(),
            slurm = %version.trim(),
            poll = ?settings.poll,
            jobs_at_once = policy.max_children,
            "patients' processing runs as Slurm jobs"
        );
        Ok(SlurmExecutor {
            exe,
            pipeline_name,
            pipeline,
            queue: Queue::new(settings.poll),
            settings,
            storage,
            policy,
            stopping: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// `sbatch`'s arguments for a job in `dir` named `name`.
    fn sbatch_args(&self, name: &str, dir: &Path) -> Vec<String> {
        // Slurm expands %-patterns in output paths.
        let path = |file: &str| dir.join(file).display().to_string().replace('%', "%%");
        let mut args = vec![
            format!("--job-name={name}"),
            format!("--chdir={}", dir.display()),
            format!("--output={}", path(jobdir::STDOUT_FILE)),
            format!("--error={}", path(jobdir::STDERR_FILE)),
            // The node owns retries: a job Slurm ran again would append to the same
            // files under the same ID. A failed cluster node ends the job (NODE_FAIL),
            // and the node submits it again.
            "--no-requeue".to_string(),
        ];
        if let Some(limit) = self.policy.time_limit {
            // Slurm counts time limits in whole minutes (and checks them about every
            // 30 s): the limit is rounded up.
            args.push(format!("--time={}", minutes(limit)));
        }
        if let Some(bytes) = self.policy.memory_limit {
            args.push(format!("--mem={}M", (bytes >> 20).max(1)));
        }
        if let Some(partition) = &self.settings.partition {
            args.push(format!("--partition={partition}"));
        }
        if let Some(account) = &self.settings.account {
            args.push(format!("--account={account}"));
        }
        if let Some(gres) = &self.settings.gres {
            args.push(format!("--gres={gres}"));
        }
        args.extend(self.settings.extra_args.iter().cloned());
        args
    }

    /// The job a previous run of the node submitted for this batch, if it can be
    /// adopted: `Ok(None)` means submit one.
    fn adopt(&self, batch: &PatientBatch) -> Result<Option<JobRecord>, Attempt> {
        let text = match self.storage.executor_record(batch) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(None),
            Err(error) => {
                return Err(transient(format!(
                    "cannot read the record of the batch's job: {error}"
                )))
            }
        };
        let mut records: Vec<JobRecord> = text.split("\n\n").filter_map(JobRecord::parse).collect();
        if records.len() > 1 {
            // Two batches of the patient, each with its job, were put back together (a
            // restart): their jobs are cancelled and one is submitted for all of it.
            for id in records.iter().filter_map(|r| r.id) {
                if let Err(error) = control::cancel(id) {
                    return Err(transient(format!(
                        "cannot cancel the earlier job {id}: {error}"
                    )));
                }
            }
            tracing::warn!(jobs = ?records.iter().filter_map(|r| r.id).collect::<Vec<_>>(), "the batch held several earlier jobs: they are cancelled and one job is submitted for all of it");
            for record in &records {
                self.remove_job_dir(&record.dir);
            }
            return Ok(None);
        }
        let Some(mut record) = records.pop() else {
            tracing::warn!(record = %text, "an unreadable record of the batch's job: a new job is submitted");
            return Ok(None);
        };
        if record.id.is_none() {
            // The node stopped between sbatch and recording its answer.
            match control::find_by_name(&record.name) {
                Ok(Some(id)) => {
                    record.id = Some(id);
                    if let Err(error) = self.storage.set_executor_record(batch, &record.text()) {
                        tracing::warn!(%error, slurm_job = id, "cannot record the job's ID");
                    }
                }
                Ok(None) => return Ok(None),
                Err(error) => {
                    return Err(transient(format!(
                        "cannot ask Slurm whether job {} was submitted: {error}",
                        record.name
                    )))
                }
            }
        }
        let Some(id) = record.id else { return Ok(None) };
        // A job covers the instances it was given: if the batch holds others now (they
        // arrived after a restart), it is run anew on all of them.
        let given =
            std::fs::read_to_string(record.dir.join(jobdir::INSTANCES_FILE)).unwrap_or_default();
        if given != jobdir::instance_list(batch) {
            tracing::warn!(slurm_job = id, "the batch changed since its job was submitted: the job is cancelled and a new one submitted for all of it");
            if let Err(error) = control::cancel(id) {
                // Kept: the next attempt tries again rather than run two jobs.
                return Err(transient(format!(
                    "cannot cancel the old job {id}: {error}"
                )));
            }
            return Ok(None);
        }
        tracing::info!(slurm_job = id, dir = %record.dir.display(), "adopting the job the node's previous run submitted");
        Ok(Some(record))
    }

    /// Makes the job's directory, records it beside the batch, and submits it.
    fn submit(&self, batch: &PatientBatch) -> Result<JobRecord, Attempt> {
        let started = Instant::now();
        let name = format!("dicomnode-{}", uuid::Uuid::new_v4().simple());
        let dir = self.settings.job_dir.join(&name);
        let source = JobSource {
            batch,
            pipeline: &self.pipeline,
            pipeline_name: self.pipeline_name,
            exe: &self.exe,
        };
        if let Err(error) = jobdir::prepare(&dir, &source) {
            remove_job_dir(&dir);
            return Err(Attempt::not_run(format!(
                "cannot prepare the job's directory {}: {error}",
                dir.display()
            )));
        }
        let mut record = JobRecord {
            name,
            dir,
            id: None,
        };
        // Recorded before sbatch: a node that dies in between finds the job by its name.
        if let Err(error) = self.storage.set_executor_record(batch, &record.text()) {
            remove_job_dir(&record.dir);
            return Err(Attempt::not_run(format!(
                "cannot record the job beside the batch: {error}"
            )));
        }
        let args = self.sbatch_args(&record.name, &record.dir);
        match control::submit(&args, &record.dir.join(jobdir::SCRIPT_FILE)) {
            Ok(id) => {
                record.id = Some(id);
                if let Err(error) = self.storage.set_executor_record(batch, &record.text()) {
                    tracing::warn!(%error, slurm_job = id, "cannot record the job's ID (a restarted node finds it by its name)");
                }
                tracing::info!(
                    slurm_job = id,
                    dir = %record.dir.display(),
                    submit_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "job submitted"
                );
                Ok(record)
            }
            Err(error) => {
                self.storage.clear_executor_record(batch);
                remove_job_dir(&record.dir);
                let message = format!("sbatch did not take the job: {error}");
                Err(if controller_unreachable(&error) {
                    transient(message)
                } else {
                    Attempt::not_run(message)
                })
            }
        }
    }

    /// Follows a job until its report arrives or it ends, relaying what it writes.
    fn follow(&self, batch: &PatientBatch, record: &JobRecord, id: u32, since: Instant) -> Attempt {
        let dir = record.dir.as_path();
        let output = ChildOutput::new(dir.join("output.log"));
        output.start_job(&batch.patient_key);
        let mut events = Events::new(dir);
        let mut streams = [
            ("stdout", Lines::new(dir.join(jobdir::STDOUT_FILE))),
            ("stderr", Lines::new(dir.join(jobdir::STDERR_FILE))),
        ];
        let mut next_ask = Instant::now() + self.settings.poll.min(Duration::from_secs(1));
        let mut said_unreachable = false;
        let (report, ending) = loop {
            if let Some(report) = relay(&mut events, &mut streams, &output, id, false) {
                break (Some(report), None);
            }
            if self.stopping.load(Ordering::SeqCst) {
                // A report that came with the stop counts as the ending.
                if let Some(report) = relay(&mut events, &mut streams, &output, id, false) {
                    break (Some(report), None);
                }
                return self.left_at_stop(batch, id, dir, &output);
            }
            if Instant::now() >= next_ask {
                next_ask = Instant::now() + self.settings.poll;
                let asked = match self.queue.state(id, since) {
                    Ok(Some((state, name))) if name == record.name && !is_over(&state) => Ok(None),
                    Ok(_) => control::ending(id).map_err(|e| e.to_string()).map(|found| {
                        match found {
                            // Another job's: the controller forgot ours (its state was reset).
                            Some((_, Some(name))) if name != record.name => Some(None),
                            Some((state, _)) if state.is_over() => Some(Some(state)),
                            Some(_) => None,
                            None => Some(None),
                        }
                    }),
                    Err(error) => Err(error),
                };
                match asked {
                    Ok(None) => {}
                    Ok(Some(ending)) => break (None, ending),
                    Err(error) => {
                        if !said_unreachable {
                            tracing::warn!(slurm_job = id, %error, "cannot ask Slurm about the job; still following it");
                            said_unreachable = true;
                        }
                    }
                }
            }
            std::thread::sleep(LOOK_EVERY);
        };
        // What the job wrote last (a report that raced its end, its output's last lines).
        let report = report.or_else(|| relay(&mut events, &mut streams, &output, id, true));
        output.end_job(id);
        self.saw_end(batch);
        let outcome = match (&report, &ending) {
            (Some(report), _) => {
                log_report(batch, report, Ran::SlurmJob(id));
                match &report.outcome {
                    ChildOutcome::Success(summary) => Outcome::Success(summary.clone()),
                    other => Outcome::Failed(other.clone()),
                }
            }
            (None, Some(state)) => {
                let over_memory = output
                    .tail()
                    .iter()
                    .any(|line| line.contains("exceeded memory limit"));
                self.outcome_of(id, state, over_memory)
            }
            (None, None) => Outcome::NotRun(format!(
                "Slurm no longer knows job {id} and it left no report"
            )),
        };
        let tail = output.tail();
        let kept = match outcome {
            Outcome::Success(_) => None,
            _ => output
                .file()
                .and_then(|file| self.storage.keep_output(batch, &file)),
        };
        Attempt {
            outcome,
            tail,
            output: kept,
        }
    }

    /// Notes that the batch's job was seen to end (its record may go at release).
    fn saw_end(&self, batch: &PatientBatch) {
        if let Some(entry) = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&batch_id(batch))
        {
            entry.2 = true;
        }
    }

    /// Removes a job's directory, only ever one inside the job directory.
    fn remove_job_dir(&self, dir: &Path) {
        if dir.parent() == Some(self.settings.job_dir.as_path()) {
            remove_job_dir(dir);
        } else {
            tracing::warn!(dir = %dir.display(), job_dir = %self.settings.job_dir.display(), "a job directory outside the job directory is left alone");
        }
    }

    /// How a job that sent no report ended. `over_memory`: Slurm said in the job's output
    /// that it killed it for exceeding its memory (without cgroups, such a job ends as
    /// FAILED by SIGKILL, not OUT_OF_MEMORY).
    fn outcome_of(&self, id: u32, state: &JobState, over_memory: bool) -> Outcome {
        let reason = state
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        match state.state.as_str() {
            "TIMEOUT" | "DEADLINE" => Outcome::TimedOut(self.policy.time_limit.unwrap_or_default()),
            "OUT_OF_MEMORY" => Outcome::OutOfMemory(self.policy.memory_limit.unwrap_or_default()),
            "CANCELLED" => Outcome::Cancelled(format!("Slurm job {id} was cancelled{reason}")),
            "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL" => {
                Outcome::Transient(format!("Slurm job {id} ended as {}{reason}", state.state))
            }
            "FAILED" if over_memory && state.signal == Some(9) => {
                Outcome::OutOfMemory(self.policy.memory_limit.unwrap_or_default())
            }
            "FAILED" | "COMPLETED" => match (state.signal, state.exit_code) {
                (Some(signal), _) if signal > 0 => Outcome::Signalled(signal),
                (_, Some(code)) => Outcome::Exited(code),
                _ => Outcome::NotRun(format!("Slurm job {id} ended as {}{reason}", state.state)),
            },
            other => Outcome::NotRun(format!("Slurm job {id} ended as {other}{reason}")),
        }
    }

    /// The node stops while job `id` runs: it is left running, to be adopted at the next
    /// start, or cancelled (and its batch submitted anew then), as configured.
    fn left_at_stop(
        &self,
        batch: &PatientBatch,
        id: u32,
        dir: &Path,
        output: &ChildOutput,
    ) -> Attempt {
        output.end_job(id);
        let in_memory = batch.dir.is_none();
        let outcome = if self.settings.cancel_jobs_on_exit {
            match control::cancel(id) {
                Ok(()) => {
                    self.storage.clear_executor_record(batch);
                    self.remove_job_dir(dir);
                    Outcome::Cancelled(format!("Slurm job {id} cancelled as the node stops"))
                }
                Err(error) => Outcome::NotRun(format!(
                    "Slurm job {id} could not be cancelled as the node stops ({error}): adopted at the next start"
                )),
            }
        } else if in_memory {
            Outcome::NotRun(format!(
                "Slurm job {id} left running as the node stops (in memory: its result is not collected)"
            ))
        } else {
            Outcome::NotRun(format!(
                "Slurm job {id} left running as the node stops: adopted at the next start"
            ))
        };
        Attempt {
            outcome,
            tail: output.tail(),
            output: None,
        }
    }
}

/// A time limit in whole minutes, rounded up, at least one.
fn minutes(limit: Duration) -> u64 {
    (limit.as_secs_f64() / 60.0).ceil().max(1.0) as u64
}

/// Whether a state `squeue` lists is an ending.
fn is_over(state: &str) -> bool {
    JobState {
        state: state.to_string(),
        exit_code: None,
        signal: None,
        reason: None,
    }
    .is_over()
}

/// Relays what the job wrote since the last look; returns its report, if it came. With
/// `all` (the job is over), reads to the end of everything it wrote.
fn relay(
    events: &mut Events,
    streams: &mut [(&'static str, Lines); 2],
    output: &ChildOutput,
    id: u32,
    all: bool,
) -> Option<Report> {
    for (name, lines) in streams.iter_mut() {
        loop {
            let new = lines.read_new(all);
            if new.is_empty() {
                break;
            }
            for line in new {
                if let Some(patient) = output.line(name, &line) {
                    tracing::info!(target: "dicomnode::child", slurm_job = id, %patient, stream = *name, "{line}");
                }
            }
            if !all {
                break;
            }
        }
    }
    let mut report = None;
    loop {
        let messages = events.read_new();
        if messages.is_empty() {
            break;
        }
        for message in messages {
            match message {
                ChildMessage::Log(record) => {
                    if output.admit(record.message.len() + record.fields.len()) {
                        relay_job(&record, id);
                    }
                }
                ChildMessage::Report(r) => report = Some(r),
            }
        }
        if !all && report.is_some() {
            break;
        }
    }
    report
}

fn remove_job_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove the job's directory");
        }
    }
}

impl Executor for SlurmExecutor {
    fn run(&self, batch: &PatientBatch) -> Attempt {
        let record = match self.adopt(batch) {
            Ok(Some(record)) => record,
            Ok(None) => match self.submit(batch) {
                Ok(record) => record,
                Err(attempt) => return attempt,
            },
            Err(attempt) => return attempt,
        };
        let Some(id) = record.id else {
            return Attempt::not_run("the job has no ID");
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch_id(batch), (id, record.dir.clone(), false));
        let attempt = self.follow(batch, &record, id, Instant::now());
        if let Outcome::Cancelled(_) | Outcome::NotRun(_) = attempt.outcome {
            if self.stopping.load(Ordering::SeqCst) {
                // Left for the next start (or cancelled): the record says which.
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&batch_id(batch));
            }
        }
        attempt
    }

    /// Forgets the job only when its end was seen: a job whose fate is unknown (Slurm
    /// could not be asked) keeps its record, so the next attempt adopts it instead of
    /// submitting a second one.
    fn release(&self, batch: &PatientBatch) {
        let followed = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&batch_id(batch));
        if let Some((_, dir, true)) = followed {
            self.storage.clear_executor_record(batch);
            self.remove_job_dir(&dir);
        }
    }

    fn stop(&self, _grace: Duration) {
        // The followers notice within a look and return; their jobs are left running or
        // cancelled as configured.
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn kill_all(&self) {
        let jobs: Vec<u32> = self
            .in_flight
            .lock()
            .map(|f| f.values().map(|(id, _, _)| *id).collect())
            .unwrap_or_default();
        if !self.settings.cancel_jobs_on_exit {
            if !jobs.is_empty() {
                tracing::warn!(?jobs, "Slurm jobs left running: the next start adopts them");
            }
            return;
        }
        for id in jobs {
            match control::cancel(id) {
                Ok(()) => tracing::warn!(slurm_job = id, "job cancelled"),
                Err(error) => tracing::error!(slurm_job = id, %error, "cannot cancel the job"),
            }
        }
    }

    fn finish(&self, _all_ended: bool) {
        self.kill_all();
    }

    fn name(&self) -> &'static str {
        "slurm"
    }
}

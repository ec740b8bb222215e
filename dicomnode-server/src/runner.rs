//! Runs each patient's processing in a child process: the node's own executable,
//! re-executed (never forked) with [`CHILD_ENV`] set.
//!
//! The parent and the child talk over a Unix socket pair that is the child's standard
//! input: the parent writes the postcard-encoded [`Job`] and shuts its side for writing;
//! the child reads it to the end, works in a fresh temporary directory, and writes a
//! postcard-encoded [`Report`] back on the same socket. The child's stdout and stderr are
//! read line by line, as they come, into the node's log.

use crate::config::FailurePolicy;
use crate::storage::{InstanceData, PatientBatch, Storage};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicomnode_core::{DicomInstance, InputContainer, Pipeline, Processor, Sender};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Set in the environment of a processing child, to the type name of the pipeline whose job
/// it runs. A process that has it runs one job and exits; it never binds a port.
pub const CHILD_ENV: &str = "DICOMNODE_CHILD";

/// A child's stdout/stderr line longer than this is logged in pieces.
const MAX_LINE: usize = 8 * 1024;

/// Why the runner could not run a child.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The pipeline's state could not be encoded.
    #[error("cannot encode the pipeline's state for the child: {0}")]
    EncodePipeline(postcard::Error),
    /// The worker executable is unknown.
    #[error("cannot find the node's own executable to re-execute: {0}")]
    CurrentExe(std::io::Error),
}

/// One patient's job, as sent to the child.
#[derive(Serialize, Deserialize)]
pub struct Job<'a> {
    /// The postcard-encoded pipeline.
    #[serde(with = "serde_bytes")]
    pub pipeline: &'a [u8],
    /// The patient key.
    pub patient_key: &'a str,
    /// The peer that completed the batch.
    pub sender: Sender,
    /// Where the child makes its working directory.
    pub work_root: &'a str,
    /// When the batch was triggered, microseconds since the Unix epoch.
    pub triggered_at_us: u64,
    /// Each input's instances.
    #[serde(borrow)]
    pub inputs: Vec<JobInput<'a>>,
}

/// One input of a job.
#[derive(Serialize, Deserialize)]
pub struct JobInput<'a> {
    /// The input's name.
    pub name: &'a str,
    /// Its instances.
    #[serde(borrow)]
    pub instances: Vec<JobInstance<'a>>,
}

/// One instance of a job: the data set bytes as received.
#[derive(Serialize, Deserialize)]
pub struct JobInstance<'a> {
    /// SOP Class UID.
    pub sop_class_uid: &'a str,
    /// SOP Instance UID.
    pub sop_instance_uid: &'a str,
    /// Transfer syntax of `dataset`.
    pub transfer_syntax: &'a str,
    /// The data set, when it is in memory (else empty).
    #[serde(with = "serde_bytes")]
    pub dataset: &'a [u8],
    /// The Part-10 file holding the instance, when it is on disk.
    pub file: Option<String>,
}

/// What the child reports back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The child's working directory (removed before the report is sent).
    pub workdir: String,
    /// Whether the working directory was removed.
    pub workdir_removed: bool,
    /// When the child entered `process`, microseconds since the Unix epoch.
    pub entered_process_us: Option<u64>,
    /// How long `process` took, in microseconds.
    pub process_us: Option<u64>,
    /// How long the export took, in microseconds.
    pub export_us: Option<u64>,
    /// How it ended.
    pub outcome: ChildOutcome,
}

/// How a job ended inside the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildOutcome {
    /// Processed and exported; the export's summary.
    Success(String),
    /// The job could not be read or the working directory made.
    Setup(String),
    /// `Processor::build` returned an error.
    BuildFailed(String),
    /// `process` returned an error.
    ProcessFailed(String),
    /// The processor panicked: message and location.
    Panicked(String),
    /// The output could not be exported.
    ExportFailed(String),
}

/// The outcome of a patient's processing, as the parent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The child reported success.
    Success(String),
    /// The child reported a failure.
    Failed(ChildOutcome),
    /// The child ended without a report: killed by a signal.
    Signalled(i32),
    /// The child ended without a report, with this exit code.
    Exited(i32),
    /// The child could not be started or talked to.
    NotRun(String),
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
            Outcome::Signalled(signal) => write!(f, "child killed by signal {signal}"),
            Outcome::Exited(code) => write!(f, "child exited with code {code} without a report"),
            Outcome::NotRun(m) => write!(f, "child could not run: {m}"),
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Starts a child per patient and supervises it, on a thread of its own.
pub struct ChildRunner {
    exe: PathBuf,
    pipeline_name: &'static str,
    pipeline: Vec<u8>,
    work_root: PathBuf,
    storage: Arc<Storage>,
    failure: FailurePolicy,
}

impl ChildRunner {
    /// A runner re-executing `exe` (the node's own executable if `None`).
    pub fn new<P: Pipeline>(
        pipeline: &P,
        exe: Option<PathBuf>,
        work_root: Option<PathBuf>,
        storage: Arc<Storage>,
        failure: FailurePolicy,
    ) -> Result<Self, RunnerError> {
        let exe = match exe {
            Some(exe) => exe,
            None => std::env::current_exe().map_err(RunnerError::CurrentExe)?,
        };
        Ok(ChildRunner {
            exe,
            pipeline_name: std::any::type_name::<P>(),
            pipeline: postcard::to_allocvec(pipeline).map_err(RunnerError::EncodePipeline)?,
            work_root: work_root.unwrap_or_else(std::env::temp_dir),
            storage,
            failure,
        })
    }

    /// Processes a batch on a new thread; returns at once.
    pub fn submit(self: &Arc<Self>, batch: PatientBatch) {
        let runner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("patient-runner".into())
            .spawn(move || runner.process(batch));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a runner thread; the patient's data is lost from memory");
        }
    }

    /// Runs the batch in a child and logs the outcome. Success deletes the batch's data;
    /// a failure is recorded beside the data and retried after the policy's backoff; after
    /// the last attempt the batch goes to the quarantine. Nothing is dropped silently.
    pub fn process(&self, mut batch: PatientBatch) -> Outcome {
        let span = tracing::info_span!("patient", key = %batch.patient_key);
        let _entered = span.enter();
        let attempts = self.failure.attempts.max(1);
        let mut backoff = self.failure.backoff;
        loop {
            let (outcome, log_tail) = self.run_child(&batch);
            if let Outcome::Success(_) = outcome {
                tracing::info!(%outcome, attempt = batch.attempt, "processing finished");
                self.storage.batch_succeeded(batch);
                return outcome;
            }
            tracing::error!(
                %outcome,
                instances = batch.instance_count(),
                attempt = batch.attempt,
                attempts,
                "processing failed; the patient's instances are kept"
            );
            let record = format!(
                "attempt {} of {attempts} failed at {} (unix time): {outcome}\nlast lines of the child's output:\n{}\n\n",
                batch.attempt,
                unix_micros(SystemTime::now()) / 1_000_000,
                log_tail.join("\n")
            );
            self.storage.record_failure(&batch, &record);
            if batch.attempt >= attempts {
                let place = self.storage.quarantine(batch);
                tracing::error!(%place, "every attempt failed: the patient is quarantined (put it back with `dicomnode requeue`)");
                return outcome;
            }
            tracing::warn!(retry_in = ?backoff, "processing will be retried");
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2);
            batch.attempt += 1;
            batch.triggered_at = SystemTime::now();
        }
    }

    /// Runs one attempt; returns its outcome and the last lines the child printed.
    fn run_child(&self, batch: &PatientBatch) -> (Outcome, Vec<String>) {
        // The parent owns a directory for the job: whatever the child leaves behind (it may
        // be killed before it cleans up) goes when this guard drops.
        let job_dir = match tempfile::Builder::new()
            .prefix("dicomnode-job-")
            .tempdir_in(&self.work_root)
        {
            Ok(dir) => dir,
            Err(e) => {
                return (
                    Outcome::NotRun(format!(
                        "cannot create a job directory in {}: {e}",
                        self.work_root.display()
                    )),
                    Vec::new(),
                )
            }
        };
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                return (
                    Outcome::NotRun(format!("cannot create a socket pair: {e}")),
                    Vec::new(),
                )
            }
        };
        let mut child = match Command::new(&self.exe)
            .env(CHILD_ENV, self.pipeline_name)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return (
                    Outcome::NotRun(format!("cannot start {}: {e}", self.exe.display())),
                    Vec::new(),
                )
            }
        };
        let pid = child.id();
        tracing::info!(pid, node_pid = std::process::id(), "child started");

        let span = tracing::Span::current();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let pumps: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stdout")),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stderr")),
        ]
        .into_iter()
        .flatten()
        .map(|(stream, name)| {
            let span = span.clone();
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                let _entered = span.enter();
                pump_lines(stream, pid, name, &tail)
            })
        })
        .collect();

        let job_root = job_dir.path().to_string_lossy().into_owned();
        let report = send_job(&ours, batch, &self.pipeline, &job_root).and_then(|()| {
            let mut bytes = Vec::new();
            (&ours)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the child's report: {e}"))?;
            Ok(bytes)
        });
        let status = child.wait();
        for pump in pumps {
            let _ = pump.join();
        }
        let triggered = unix_micros(batch.triggered_at);

        let outcome = match (&report, &status) {
            (Ok(bytes), _) if !bytes.is_empty() => match postcard::from_bytes::<Report>(bytes) {
                Ok(report) => {
                    if let Some(entered) = report.entered_process_us {
                        let ms = |us: u64| us as f64 / 1000.0;
                        tracing::info!(
                            pid,
                            trigger_to_process_ms = ms(entered.saturating_sub(triggered)),
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
                    match report.outcome {
                        ChildOutcome::Success(summary) => Outcome::Success(summary),
                        other => Outcome::Failed(other),
                    }
                }
                Err(e) => Outcome::NotRun(format!("unreadable report from the child: {e}")),
            },
            (_, Ok(status)) => outcome_of_status(*status),
            (Err(e), Err(wait)) => Outcome::NotRun(format!("{e}; wait failed: {wait}")),
            (Ok(_), Err(wait)) => Outcome::NotRun(format!("wait failed: {wait}")),
        };
        if let Ok(status) = status {
            tracing::info!(pid, %status, "child exited");
        }
        if let Err(e) = job_dir.close() {
            tracing::warn!(error = %e, "cannot remove the job directory");
        }
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        (outcome, tail)
    }
}

fn outcome_of_status(status: ExitStatus) -> Outcome {
    match (status.signal(), status.code()) {
        (Some(signal), _) => Outcome::Signalled(signal),
        (None, Some(code)) => Outcome::Exited(code),
        (None, None) => Outcome::NotRun(format!("child ended: {status}")),
    }
}

fn send_job(
    socket: &UnixStream,
    batch: &PatientBatch,
    pipeline: &[u8],
    work_root: &str,
) -> Result<(), String> {
    let job = Job {
        pipeline,
        patient_key: &batch.patient_key,
        sender: batch.sender.clone(),
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
    };
    let mut writer = BufWriter::with_capacity(256 * 1024, socket);
    postcard::to_io(&job, &mut writer)
        .map_err(|e| format!("cannot send the job to the child: {e}"))?;
    writer
        .flush()
        .map_err(|e| format!("cannot send the job to the child: {e}"))?;
    drop(writer);
    socket
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("cannot finish sending the job: {e}"))
}

/// Lines of a child's output kept for its failure record.
const TAIL_LINES: usize = 40;

/// Logs a child's output line by line as it comes; never blocks the child for long. Keeps
/// the last lines in `tail`.
fn pump_lines(
    stream: Box<dyn Read + Send>,
    pid: u32,
    name: &'static str,
    tail: &Mutex<VecDeque<String>>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!(target: "dicomnode::child", pid, stream = name, "{text}");
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(format!("{name}: {text}"));
                }
            }
            Err(e) => {
                tracing::warn!(pid, stream = name, error = %e, "cannot read the child's output");
                return;
            }
        }
    }
}

/// Whether this process is a processing child.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// A pipeline a program can run jobs of, when it is re-executed as a child.
#[derive(Debug, Clone, Copy)]
pub struct ChildEntry {
    name: &'static str,
    main: fn() -> ExitCode,
}

impl ChildEntry {
    /// The entry for jobs of pipeline `P`.
    pub fn of<P: Pipeline>() -> Self {
        ChildEntry {
            name: std::any::type_name::<P>(),
            main: child_main::<P>,
        }
    }
}

/// In a processing child, runs the job with the entry its pipeline names and returns the
/// exit code; otherwise `None`. For programs that run several pipelines (a demo, a test).
pub fn child_entry_among(entries: &[ChildEntry]) -> Option<ExitCode> {
    let wanted = std::env::var(CHILD_ENV).ok()?;
    match entries.iter().find(|e| e.name == wanted) {
        Some(entry) => Some((entry.main)()),
        None => {
            let known: Vec<&str> = entries.iter().map(|e| e.name).collect();
            eprintln!(
                "dicomnode child: this program has no child entry for pipeline {wanted:?} (it has {known:?})"
            );
            Some(ExitCode::from(3))
        }
    }
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// The child's `main`: reads the job from standard input, processes it, reports, exits.
pub fn child_main<P: Pipeline>() -> ExitCode {
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("dicomnode child: cannot use standard input: {e}");
            return ExitCode::from(2);
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = (&socket).read_to_end(&mut bytes) {
        eprintln!("dicomnode child: cannot read the job: {e}");
        return ExitCode::from(2);
    }
    let report = match postcard::from_bytes::<Job>(&bytes) {
        Ok(job) => run_job::<P>(job),
        Err(e) => Report {
            workdir: String::new(),
            workdir_removed: true,
            entered_process_us: None,
            process_us: None,
            export_us: None,
            outcome: ChildOutcome::Setup(format!("cannot decode the job: {e}")),
        },
    };
    let success = matches!(report.outcome, ChildOutcome::Success(_));
    let written = postcard::to_allocvec(&report)
        .map_err(|e| e.to_string())
        .and_then(|b| (&socket).write_all(&b).map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("dicomnode child: cannot send the report: {e}");
        return ExitCode::from(2);
    }
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_job<P: Pipeline>(job: Job<'_>) -> Report {
    let mut report = Report {
        workdir: String::new(),
        workdir_removed: false,
        entered_process_us: None,
        process_us: None,
        export_us: None,
        outcome: ChildOutcome::Setup(String::new()),
    };
    let workdir = match tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(job.work_root)
    {
        Ok(dir) => dir,
        Err(e) => {
            report.outcome = ChildOutcome::Setup(format!("cannot create a working directory: {e}"));
            return report;
        }
    };
    report.workdir = workdir.path().to_string_lossy().into_owned();
    let home = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    if let Err(e) = std::env::set_current_dir(workdir.path()) {
        report.outcome = ChildOutcome::Setup(format!("cannot enter the working directory: {e}"));
        return report;
    }

    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".to_string());
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            *slot = Some(format!("{payload}{location}"));
        }
        default_hook(info);
    }));

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process_in_child::<P>(&job, &mut report)
    }));
    report.outcome = match result {
        Ok(outcome) => outcome,
        Err(_) => ChildOutcome::Panicked(
            PANIC_MESSAGE
                .lock()
                .ok()
                .and_then(|mut m| m.take())
                .unwrap_or_else(|| "unknown panic".to_string()),
        ),
    };
    // Leave the directory before removing it, whatever happened inside.
    let _ = std::env::set_current_dir(&home);
    report.workdir_removed = workdir.close().is_ok();
    report
}

fn process_in_child<P: Pipeline>(job: &Job<'_>, report: &mut Report) -> ChildOutcome {
    let pipeline: P = match postcard::from_bytes(job.pipeline) {
        Ok(p) => p,
        Err(e) => return ChildOutcome::Setup(format!("cannot decode the pipeline's state: {e}")),
    };
    let mut inputs = Vec::with_capacity(job.inputs.len());
    for input in &job.inputs {
        let mut instances = Vec::with_capacity(input.instances.len());
        for instance in &input.instances {
            match decode_instance(instance) {
                Ok(obj) => instances.push(obj),
                Err(e) => return ChildOutcome::Setup(e),
            }
        }
        inputs.push((input.name.to_string(), instances));
    }
    let container = InputContainer::new(job.patient_key.to_string(), job.sender.clone(), inputs);
    let mut processor = match P::Processor::build(&pipeline) {
        Ok(p) => p,
        Err(e) => return ChildOutcome::BuildFailed(e.to_string()),
    };
    let started = std::time::Instant::now();
    report.entered_process_us = Some(unix_micros(SystemTime::now()));
    let output = processor.process(&pipeline, container);
    report.process_us = Some(micros(started.elapsed()));
    let output = match output {
        Ok(output) => output,
        Err(e) => return ChildOutcome::ProcessFailed(e.to_string()),
    };
    let started = std::time::Instant::now();
    let exported = output.export();
    report.export_us = Some(micros(started.elapsed()));
    match exported {
        Ok(summary) => ChildOutcome::Success(summary),
        Err(e) => ChildOutcome::ExportFailed(e.to_string()),
    }
}

/// Turns received bytes (or a stored file) into a DICOM object with its file meta group.
pub fn decode_instance(instance: &JobInstance<'_>) -> Result<DicomInstance, String> {
    if let Some(file) = &instance.file {
        return dicom_object::open_file(file).map_err(|e| format!("cannot read {file}: {e}"));
    }
    let ts = TransferSyntaxRegistry
        .get(instance.transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {}", instance.transfer_syntax))?;
    let obj = InMemDicomObject::read_dataset_with_ts(instance.dataset, ts)
        .map_err(|e| format!("cannot parse instance {}: {e}", instance.sop_instance_uid))?;
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(instance.transfer_syntax)
        .media_storage_sop_class_uid(instance.sop_class_uid)
        .media_storage_sop_instance_uid(instance.sop_instance_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(|e| format!("cannot build the file meta group: {e}"))?;
    Ok(obj.with_exact_meta(meta))
}

/// The Implementation Class UID this node writes into file meta groups.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.302143227262591287434591426338478069411";
/// The Implementation Version Name this node writes into file meta groups.
pub const IMPLEMENTATION_VERSION_NAME: &str = "DICOMNODE_RS_01";

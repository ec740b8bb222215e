//! The child's side: connect to the job channel, read jobs, process each in a fresh
//! working directory, report, and send the code's log events to the parent as records.
//!
//! Before any user code runs, the child forgets that it is one: the markers are removed
//! from its environment (a program the processor starts, the node's own binary included,
//! is an ordinary program), its end of the channel moves from standard input to a
//! close-on-exec descriptor, and standard input becomes `/dev/null`.

use super::wire::{
    read_frame, write_frame, ChildMessage, ChildOutcome, Job, JobInstance, LogRecord, Report,
};
use super::{micros, unix_micros};
use super::{CHILD_ENV, JOB_DIR_ENV, MEMORY_LIMIT_ENV};
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicomnode_core::{DicomInstance, InputContainer, Pipeline, Processor};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

/// In a processing child, runs the jobs with the entry its pipeline names and returns the
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

/// Where the child's messages go (the socket to the parent, or a job's events file),
/// shared by the job loop and the log layer.
type Channel = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(channel: &Channel, message: &ChildMessage) -> Result<(), String> {
    let bytes = postcard::to_allocvec(message).map_err(|e| e.to_string())?;
    let mut stream = channel
        .lock()
        .map_err(|_| "the channel lock is poisoned".to_string())?;
    write_frame(&mut *stream, &bytes).map_err(|e| e.to_string())
}

/// A tracing layer that sends every event to the parent as a [`LogRecord`].
struct ToParent {
    channel: Channel,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            if !self.rest.is_empty() {
                self.rest.push(' ');
            }
            self.rest.push_str(&format!("{}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ToParent {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => 0,
            tracing::Level::WARN => 1,
            tracing::Level::INFO => 2,
            tracing::Level::DEBUG => 3,
            tracing::Level::TRACE => 4,
        };
        let record = LogRecord {
            level,
            target: event.metadata().target().to_string(),
            message: fields.message,
            fields: fields.rest,
        };
        if send(&self.channel, &ChildMessage::Log(record)).is_err() {
            // The parent is gone; nothing else to tell.
        }
    }
}

fn install_logging(channel: &Channel) {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry().with(filter).with(ToParent {
        channel: Arc::clone(channel),
    });
    // A program that set its own subscriber keeps it; its events go to stderr then.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Applies the limits the parent asked for, on this process (inherited by its children).
fn apply_limits() {
    // If the node dies, its children go too.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Some(bytes) = std::env::var(MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        use nix::sys::resource::{setrlimit, Resource};
        if let Err(error) = setrlimit(Resource::RLIMIT_AS, bytes, bytes) {
            eprintln!("dicomnode child: cannot set the memory limit: {error}");
        }
    }
}

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
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
}

/// Moves the channel from standard input to a close-on-exec descriptor and puts
/// `/dev/null` in its place.
fn take_channel_from_stdin() -> nix::Result<UnixStream> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let channel = nix::unistd::dup(std::io::stdin())?;
    fcntl(&channel, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| {
        e.raw_os_error()
            .map_or(nix::errno::Errno::EIO, nix::errno::Errno::from_raw)
    })?;
    nix::unistd::dup2_stdin(&null)?;
    Ok(UnixStream::from(channel))
}

/// Where jobs are read from.
type JobSource = Box<dyn Read>;

/// Where jobs come from and messages go: the socket pair's end on standard input (a
/// local child), or the files of a job's directory (a cluster's job: `job.bin` holds the
/// job, `events.bin` gets the messages, which the node reads as they are appended).
fn open_channel() -> Result<(JobSource, Box<dyn Write + Send>), String> {
    if let Some(dir) = std::env::var_os(JOB_DIR_ENV) {
        let dir = PathBuf::from(dir);
        let job = std::fs::File::open(dir.join(super::JOB_FILE))
            .map_err(|e| format!("cannot open the job in {}: {e}", dir.display()))?;
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(super::EVENTS_FILE))
            .map_err(|e| format!("cannot open the events file in {}: {e}", dir.display()))?;
        return Ok((Box::new(job), Box::new(events)));
    }
    // The channel arrives as standard input: moved to a descriptor of its own,
    // close-on-exec, and /dev/null put in its place, so that nothing the processor starts
    // can read job frames or hold the channel open.
    let socket = take_channel_from_stdin()
        .map_err(|e| format!("cannot take the job channel from standard input: {e}"))?;
    let reader = socket
        .try_clone()
        .map_err(|e| format!("cannot use the channel: {e}"))?;
    Ok((Box::new(reader), Box::new(socket)))
}

/// The child's `main`: runs the jobs it is sent, one after another, until the parent
/// closes the channel (or the job file ends).
pub fn child_main<P: Pipeline>() -> ExitCode {
    apply_limits();
    let (mut reader, writer) = match open_channel() {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("dicomnode child: {e}");
            return ExitCode::from(2);
        }
    };
    // From here on nothing this process starts believes it is a child. (Single-threaded
    // still: nothing else reads the environment now.)
    for marker in [CHILD_ENV, MEMORY_LIMIT_ENV, JOB_DIR_ENV] {
        std::env::remove_var(marker);
    }
    let channel: Channel = Arc::new(Mutex::new(writer));
    install_logging(&channel);
    install_panic_hook();
    // Built on the first job and kept: a warm worker builds its processor once.
    let mut processor: Option<P::Processor> = None;
    let mut all_succeeded = true;
    loop {
        // The parent's jobs are as large as the batch is (u32 frames).
        let frame = match read_frame(&mut reader, u32::MAX as usize) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                eprintln!("dicomnode child: cannot read a job: {e}");
                return ExitCode::from(2);
            }
        };
        // The frame is dropped once the instances are decoded: a batch is not held twice
        // while the processor runs.
        let prepared = std::panic::catch_unwind(|| prepare::<P>(frame)).unwrap_or_else(|_| {
            Err(ChildOutcome::Panicked(
                PANIC_MESSAGE
                    .lock()
                    .ok()
                    .and_then(|mut m| m.take())
                    .unwrap_or_else(|| "unknown panic while decoding the job".to_string()),
            ))
        });
        let report = match prepared {
            Ok(job) => run_job::<P>(job, &mut processor),
            Err(outcome) => Report {
                workdir: String::new(),
                workdir_removed: true,
                entered_process_us: None,
                process_us: None,
                export_us: None,
                outcome,
            },
        };
        all_succeeded &= matches!(report.outcome, ChildOutcome::Success(_));
        if let Err(e) = send(&channel, &ChildMessage::Report(report)) {
            eprintln!("dicomnode child: cannot send the report: {e}");
            return ExitCode::from(2);
        }
    }
    if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A job with its pipeline and instances decoded, owning everything.
struct Prepared<P> {
    pipeline: P,
    container: InputContainer,
    work_root: String,
}

/// Decodes a job frame: the pipeline's state and every instance.
fn prepare<P: Pipeline>(frame: Vec<u8>) -> Result<Prepared<P>, ChildOutcome> {
    let job: Job = postcard::from_bytes(&frame)
        .map_err(|e| ChildOutcome::Setup(format!("cannot decode the job: {e}")))?;
    let pipeline: P = postcard::from_bytes(job.pipeline)
        .map_err(|e| ChildOutcome::Setup(format!("cannot decode the pipeline's state: {e}")))?;
    let mut inputs = Vec::with_capacity(job.inputs.len());
    for input in &job.inputs {
        let mut instances = Vec::with_capacity(input.instances.len());
        for instance in &input.instances {
            instances.push(decode_instance(instance).map_err(ChildOutcome::Setup)?);
        }
        inputs.push((input.name.to_string(), instances));
    }
    let mut container =
        InputContainer::new(job.patient_key.to_string(), job.origin.clone(), inputs);
    for (name, status) in &job.priors {
        container = container.with_prior_status(name.clone(), status.clone());
    }
    Ok(Prepared {
        pipeline,
        container,
        work_root: job.work_root.to_string(),
    })
}

fn run_job<P: Pipeline>(job: Prepared<P>, processor: &mut Option<P::Processor>) -> Report {
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
        .tempdir_in(&job.work_root)
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
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process_in_child::<P>(job.pipeline, job.container, processor, &mut report, &home)
    }));
    report.outcome = match result {
        Ok(outcome) => outcome,
        Err(_) => {
            // The processor may be half-updated: build it anew (the parent replaces a warm
            // worker after a failure anyway).
            *processor = None;
            ChildOutcome::Panicked(
                PANIC_MESSAGE
                    .lock()
                    .ok()
                    .and_then(|mut m| m.take())
                    .unwrap_or_else(|| "unknown panic".to_string()),
            )
        }
    };
    // Leave the directory before removing it, whatever happened inside.
    let _ = std::env::set_current_dir(&home);
    report.workdir_removed = workdir.close().is_ok();
    report
}

fn process_in_child<P: Pipeline>(
    pipeline: P,
    container: InputContainer,
    processor: &mut Option<P::Processor>,
    report: &mut Report,
    home: &std::path::Path,
) -> ChildOutcome {
    if processor.is_none() {
        match P::Processor::build(&pipeline) {
            Ok(built) => *processor = Some(built),
            Err(e) => return ChildOutcome::BuildFailed(e.to_string()),
        }
    }
    let Some(processor) = processor.as_mut() else {
        return ChildOutcome::BuildFailed("no processor".into());
    };
    let started = std::time::Instant::now();
    report.entered_process_us = Some(unix_micros(SystemTime::now()));
    let output = processor.process(&pipeline, container);
    report.process_us = Some(micros(started.elapsed()));
    let output = match output {
        Ok(output) => output,
        Err(e) => return ChildOutcome::ProcessFailed(e.to_string()),
    };
    // The output is exported from the node's working directory, so that a relative path
    // in an output (`FileOutput::new("out", ..)`) means what it means to the node's user,
    // not a place inside the temporary directory that is about to be removed.
    if let Err(e) = std::env::set_current_dir(home) {
        return ChildOutcome::ExportFailed(format!(
            "cannot return to the node's working directory {}: {e}",
            home.display()
        ));
    }
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

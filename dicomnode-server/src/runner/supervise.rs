//! The parent's side of one child process: start it in a process group of its own, send it
//! jobs, relay its logs and output, enforce the time limit, and end it with everything it
//! started.
//!
//! The job channel is one end of a Unix socket pair. It reaches the child as its standard
//! input, and the child moves it to a descriptor of its own, close-on-exec, and puts
//! `/dev/null` in its place before any user code runs: nothing the processor starts
//! inherits the channel or reads job frames.

use super::output::{ChildOutput, OUTPUT_FILE};
use super::wire::{read_frame, ChildMessage, Job, LogRecord, Report, MAX_CHILD_FRAME};
use super::{CHILD_ENV, MEMORY_LIMIT_ENV};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, BufWriter, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the output pumps may take to drain a child's pipes once it has exited.
const PUMPS_WAIT: Duration = Duration::from_millis(300);
/// How long a child may take to exit once it has no more jobs.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// A child's stdout/stderr line longer than this is logged in pieces.
const MAX_LINE: usize = 8 * 1024;

/// What a child needs to start.
pub struct Launch<'a> {
    /// The executable.
    pub exe: &'a Path,
    /// The pipeline's type name (the child's entry).
    pub pipeline_name: &'a str,
    /// RLIMIT_AS for the child, in bytes.
    pub memory_limit: Option<u64>,
    /// Where job directories go (the runner's own directory).
    pub work_root: &'a Path,
}

/// A running child, possibly a warm worker that takes several jobs.
pub struct ChildProcess {
    child: Child,
    pid: u32,
    channel: UnixStream,
    pumps: Vec<JoinHandle<()>>,
    /// One message from each pump when its stream ends.
    pumps_done: std::sync::mpsc::Receiver<()>,
    output: Arc<ChildOutput>,
    job_dir: tempfile::TempDir,
    /// Jobs this process has run.
    pub jobs: u32,
}

/// The end of one job as the parent saw it.
pub struct JobEnd {
    /// The child's report, if it sent one.
    pub report: Option<Report>,
    /// Whether the time limit killed the child.
    pub timed_out: bool,
}

impl ChildProcess {
    /// Starts a child in a new process group.
    pub fn spawn(launch: &Launch<'_>) -> Result<ChildProcess, String> {
        // The parent owns a directory for the child's jobs: whatever a killed child leaves
        // behind goes when this guard drops.
        let job_dir = tempfile::Builder::new()
            .prefix("dicomnode-job-")
            .tempdir_in(launch.work_root)
            .map_err(|e| {
                format!(
                    "cannot create a job directory in {}: {e}",
                    launch.work_root.display()
                )
            })?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
        let mut command = Command::new(launch.exe);
        command
            .env(CHILD_ENV, launch.pipeline_name)
            // The channel arrives as standard input, which the child moves to a descriptor
            // of its own (close-on-exec) and replaces with /dev/null before any user code:
            // the job can be written while the child starts.
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a time-out or a shutdown kills it with everything
            // it started.
            .process_group(0);
        if let Some(limit) = launch.memory_limit {
            command.env(MEMORY_LIMIT_ENV, limit.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.exe.display()))?;
        let pid = child.id();
        let output = Arc::new(ChildOutput::new(job_dir.path().join(OUTPUT_FILE)));
        let streams: [Option<(Box<dyn Read + Send>, &'static str)>; 2] = [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stdout")),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stderr")),
        ];
        let (done, pumps_done) = std::sync::mpsc::channel();
        let pumps = streams
            .into_iter()
            .flatten()
            .map(|(stream, name)| {
                let output = Arc::clone(&output);
                let done = done.clone();
                std::thread::spawn(move || {
                    pump_lines(stream, pid, name, &output);
                    let _ = done.send(());
                })
            })
            .collect();
        tracing::info!(pid, node_pid = std::process::id(), "child started");
        Ok(ChildProcess {
            child,
            pid,
            channel: ours,
            pumps,
            pumps_done,
            output,
            job_dir,
            jobs: 0,
        })
    }

    /// The child's PID (and process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines the child printed during its current job (each cut to a bounded
    /// length), for its failure record.
    pub fn tail(&self) -> Vec<String> {
        self.output.tail()
    }

    /// Everything the child printed during its current job (up to a cap), if it was kept.
    pub fn output_file(&self) -> Option<std::path::PathBuf> {
        self.output.file()
    }

    /// Where this child's jobs make their working directories.
    pub fn job_root(&self) -> String {
        self.job_dir.path().to_string_lossy().into_owned()
    }

    /// Sends a job and relays the child's log records until its report, killing the
    /// child's process group if `time_limit` passes first.
    pub fn run(&mut self, patient: &str, job: &Job<'_>, time_limit: Option<Duration>) -> JobEnd {
        self.output.start_job(patient);
        self.jobs += 1;
        // The watchdog also shuts the channel: the wait for a report ends at the limit,
        // whatever the child (or anything it started) still holds.
        let watchdog =
            time_limit.map(|limit| Watchdog::start(self.pid, limit, self.channel.try_clone().ok()));
        let report = self.exchange(job);
        let timed_out = watchdog.is_some_and(Watchdog::stop);
        self.output.end_job(self.pid);
        JobEnd { report, timed_out }
    }

    fn exchange(&mut self, job: &Job<'_>) -> Option<Report> {
        if let Err(error) = send_job(&self.channel, job) {
            tracing::warn!(%error, "cannot send the job to the child");
            return None;
        }
        loop {
            let frame = match read_frame(&self.channel, MAX_CHILD_FRAME) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(%error, "cannot read from the child");
                    return None;
                }
            };
            match postcard::from_bytes::<ChildMessage>(&frame) {
                Ok(ChildMessage::Log(record)) => {
                    if self
                        .output
                        .admit(record.message.len() + record.fields.len())
                    {
                        relay(&record, self.pid);
                    }
                }
                Ok(ChildMessage::Report(report)) => return Some(report),
                Err(error) => {
                    tracing::warn!(%error, "unreadable message from the child");
                    return None;
                }
            }
        }
    }

    /// Ends the child: no more jobs (it exits; or, when `kill_now`, it is killed), then
    /// whatever is left of its process group is killed. Never waits without bound.
    /// Returns its exit status.
    pub fn finish(mut self, kill_now: bool) -> Option<ExitStatus> {
        let _ = self.channel.shutdown(std::net::Shutdown::Both);
        if kill_now {
            kill_group(self.pid);
        }
        // Wait on another thread, so that this one wakes the moment the child exits but
        // never waits without bound.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut child = self.child;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().ok());
        });
        let status = match rx.recv_timeout(EXIT_WAIT) {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "child did not exit after its last job: killed"
                );
                kill_group(self.pid);
                rx.recv_timeout(EXIT_WAIT).ok().flatten()
            }
        };
        // Grandchildren it left behind would keep its output open and live on.
        kill_group(self.pid);
        // A process that left the group (`setsid`) may still hold the output: what the
        // child wrote before it ended is in the pipe already, and is read in far less.
        let deadline = std::time::Instant::now() + PUMPS_WAIT;
        for _ in 0..self.pumps.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.pumps_done.recv_timeout(left).is_err() {
                break;
            }
        }
        for pump in self.pumps.drain(..) {
            if pump.is_finished() {
                let _ = pump.join();
            }
        }
        if let Err(error) = std::fs::remove_dir_all(self.job_dir.path()) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, "cannot remove the job directory");
            }
        }
        if let Some(status) = status {
            tracing::info!(pid = self.pid, %status, "child exited");
        }
        status
    }
}

/// Sends a job as one frame, streamed: its size is counted in a first pass (cheap: data
/// sets are written as whole slices), so the batch's data sets are never copied into one
/// buffer before they go out.
fn send_job(channel: &UnixStream, job: &Job<'_>) -> std::io::Result<()> {
    use std::io::Write;
    /// Counts bytes written.
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len() as u64;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let encode = |error: postcard::Error| std::io::Error::other(error.to_string());
    let Counter(size) = postcard::to_io(job, Counter(0)).map_err(encode)?;
    let size = u32::try_from(size).map_err(|_| {
        std::io::Error::other("a job larger than 4 GiB: store with a data directory")
    })?;
    let mut writer = BufWriter::with_capacity(256 * 1024, channel);
    writer.write_all(&size.to_le_bytes())?;
    let mut writer = postcard::to_io(job, writer).map_err(encode)?;
    writer.flush()
}

/// Kills a process group, ignoring that it is already gone.
pub fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills a child's process group when its time is up, unless stopped first.
struct Watchdog {
    state: Arc<(Mutex<bool>, Condvar)>,
    fired: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Watchdog {
    fn start(pid: u32, limit: Duration, channel: Option<UnixStream>) -> Watchdog {
        let state = Arc::new((Mutex::new(false), Condvar::new()));
        let fired = Arc::new(AtomicBool::new(false));
        let (s, f) = (Arc::clone(&state), Arc::clone(&fired));
        let thread = std::thread::spawn(move || {
            let (done, wake) = &*s;
            let Ok(guard) = done.lock() else { return };
            let Ok((guard, _)) = wake.wait_timeout_while(guard, limit, |done| !*done) else {
                return;
            };
            if !*guard {
                f.store(true, Ordering::SeqCst);
                tracing::warn!(
                    pid,
                    ?limit,
                    "time limit reached: killing the child's process group"
                );
                kill_group(pid);
                if let Some(channel) = &channel {
                    let _ = channel.shutdown(std::net::Shutdown::Both);
                }
            }
        });
        Watchdog {
            state,
            fired,
            thread,
        }
    }

    /// Stops the watchdog; returns whether it had fired.
    fn stop(self) -> bool {
        let (done, wake) = &*self.state;
        if let Ok(mut done) = done.lock() {
            *done = true;
        }
        wake.notify_all();
        let _ = self.thread.join();
        self.fired.load(Ordering::SeqCst)
    }
}

/// Re-emits a child's log record at its level, with the given identifying fields.
macro_rules! relay_at_level {
    ($record:expr, $($id:tt)*) => {{
        let record: &LogRecord = $record;
        let (target, message, fields) = (&record.target, &record.message, &record.fields);
        match record.level {
            0 => tracing::error!(target: "dicomnode::child", $($id)*, child_target = %target, fields = %fields, "{message}"),
            1 => tracing::warn!(target: "dicomnode::child", $($id)*, child_target = %target, fields = %fields, "{message}"),
            2 => tracing::info!(target: "dicomnode::child", $($id)*, child_target = %target, fields = %fields, "{message}"),
            3 => tracing::debug!(target: "dicomnode::child", $($id)*, child_target = %target, fields = %fields, "{message}"),
            _ => tracing::trace!(target: "dicomnode::child", $($id)*, child_target = %target, fields = %fields, "{message}"),
        }
    }};
}

/// Re-emits a local child's log record in the current (patient's) span.
fn relay(record: &LogRecord, pid: u32) {
    relay_at_level!(record, pid);
}

/// Re-emits a cluster job's log record in the current (patient's) span.
pub(super) fn relay_job(record: &LogRecord, slurm_job: u32) {
    relay_at_level!(record, slurm_job);
}

/// Logs a child's output line by line as it comes, within its budget; never blocks the
/// child for long.
fn pump_lines(stream: Box<dyn Read + Send>, pid: u32, name: &'static str, output: &ChildOutput) {
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
                if let Some(patient) = output.line(name, text) {
                    tracing::info!(target: "dicomnode::child", pid, %patient, stream = name, "{text}");
                }
            }
            Err(e) => {
                tracing::warn!(pid, stream = name, error = %e, "cannot read the child's output");
                return;
            }
        }
    }
}

//! Talking to the Slurm controller with its own tools: `sbatch --parsable` submits,
//! `squeue` tells which jobs are still pending or running (one call for every job in
//! flight, at most once per poll interval), `scontrol show job` (then `sacct`, where
//! accounting exists) tells how a finished one ended, `scancel` cancels.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A Slurm tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// It could not be started.
    #[error("cannot run {tool}: {source}")]
    Start {
        /// The tool.
        tool: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited with a failure.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Its output made no sense.
    #[error("{tool} printed {output:?}, which is not what was expected")]
    Unexpected {
        /// The tool.
        tool: &'static str,
        /// What it printed.
        output: String,
    },
}

/// How long a Slurm tool may take (a controller that does not answer makes `sbatch` wait
/// 9 s and `scontrol` 18 s before they give up on their own).
const TOOL_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs a Slurm tool; returns its standard output. It is killed after [`TOOL_TIMEOUT`].
fn run(tool: &'static str, args: &[&str]) -> Result<String, ControlError> {
    let child = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| ControlError::Start { tool, source })?;
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(TOOL_TIMEOUT).is_err() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    });
    let output = child.wait_with_output();
    let _ = done.send(());
    let _ = watchdog.join();
    let output = output.map_err(|source| ControlError::Start { tool, source })?;
    if !output.status.success() {
        return Err(ControlError::Failed {
            tool,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `sbatch --version`: whether Slurm's tools can be run here, and which.
pub(crate) fn version() -> Result<String, ControlError> {
    run("sbatch", &["--version"])
}

/// Submits `script` with the given `sbatch` arguments; returns the job's ID.
pub(crate) fn submit(args: &[String], script: &Path) -> Result<u32, ControlError> {
    let mut all: Vec<&str> = vec!["--parsable"];
    all.extend(args.iter().map(String::as_str));
    let script = script.to_string_lossy();
    all.push(&script);
    let output = run("sbatch", &all)?;
    // "ID" or "ID;cluster".
    output
        .trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or(ControlError::Unexpected {
            tool: "sbatch",
            output,
        })
}

/// The ID of the job named `name` still known to the controller, if any (a node that
/// died between `sbatch` and recording the ID finds its job this way).
pub(crate) fn find_by_name(name: &str) -> Result<Option<u32>, ControlError> {
    let output = run("squeue", &["-h", "-t", "all", "-o", "%i", "-n", name])?;
    Ok(output.lines().find_map(|l| l.trim().parse().ok()))
}

/// Cancels a job.
pub(crate) fn cancel(id: u32) -> Result<(), ControlError> {
    run("scancel", &[&id.to_string()]).map(|_| ())
}

/// A job's state as the controller tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobState {
    /// `JobState` (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...).
    pub(crate) state: String,
    /// The exit code of the job's script (`ExitCode=code:signal`).
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub(crate) signal: Option<i32>,
    /// `Reason`, when the controller gives one.
    pub(crate) reason: Option<String>,
}

impl JobState {
    /// Whether the job will not run any more (COMPLETING is not over yet).
    pub(crate) fn is_over(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "STOPPED"
                | "RESV_DEL_HOLD"
        )
    }
}

/// Parses `ExitCode=code:signal`.
fn exit_code(text: &str) -> (Option<i32>, Option<i32>) {
    let mut parts = text.split(':');
    let code = parts.next().and_then(|c| c.parse().ok());
    let signal = parts.next().and_then(|s| s.parse().ok());
    (code, signal)
}

/// Parses one line of `scontrol show job -o ID`: `Key=Value` pairs separated by spaces.
pub(crate) fn parse_scontrol(line: &str) -> Option<JobState> {
    let mut state = None;
    let mut code = (None, None);
    let mut reason = None;
    for pair in line.split_whitespace() {
        if let Some(value) = pair.strip_prefix("JobState=") {
            state = Some(value.to_string());
        } else if let Some(value) = pair.strip_prefix("ExitCode=") {
            code = exit_code(value);
        } else if let Some(value) = pair.strip_prefix("Reason=") {
            reason = (value != "None").then(|| value.to_string());
        }
    }
    Some(JobState {
        state: state?,
        exit_code: code.0,
        signal: code.1,
        reason,
    })
}

/// Parses the first line of `sacct -n -P -X -o State,ExitCode`: `STATE|code:signal`
/// (CANCELLED may read "CANCELLED by 0").
pub(crate) fn parse_sacct(output: &str) -> Option<JobState> {
    let line = output.lines().find(|l| !l.trim().is_empty())?;
    let (state, code) = line.split_once('|')?;
    let state = state.split_whitespace().next()?.to_string();
    let (exit_code, signal) = exit_code(code.trim());
    Some(JobState {
        state,
        exit_code,
        signal,
        reason: None,
    })
}

/// A job's state and name from `scontrol show job` while the controller remembers it, else
/// its ending from `sacct` (where accounting exists). `Ok(None)`: the controller says it
/// does not know the job and accounting has nothing either. `Err`: the controller could
/// not be asked (the job's fate is unknown: keep following it).
pub(crate) fn ending(id: u32) -> Result<Option<(JobState, Option<String>)>, ControlError> {
    let id = id.to_string();
    match run("scontrol", &["show", "job", "-o", &id]) {
        Ok(output) => {
            if let Some(found) = output.lines().find_map(|line| {
                let name = line
                    .split_whitespace()
                    .find_map(|pair| pair.strip_prefix("JobName="))
                    .map(str::to_string);
                parse_scontrol(line).map(|state| (state, name))
            }) {
                return Ok(Some(found));
            }
        }
        Err(ControlError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {}
        Err(error) => return Err(error),
    }
    Ok(run(
        "sacct",
        &["-n", "-P", "-X", "-o", "State,ExitCode", "-j", &id],
    )
    .ok()
    .as_deref()
    .and_then(parse_sacct)
    .map(|state| (state, None)))
}

/// The states of the jobs in flight, asked of the controller in one `squeue` call at most
/// once per interval, whichever runner thread asks.
pub(crate) struct Queue {
    interval: Duration,
    cache: Mutex<Snapshot>,
}

struct Snapshot {
    /// When it was taken; `None`: never.
    at: Option<Instant>,
    /// Job ID to state and name, for the jobs `squeue` listed.
    states: HashMap<u32, (String, String)>,
    /// Whether the call failed (the states are then those of the last good call).
    failed: bool,
}

impl Queue {
    pub(crate) fn new(interval: Duration) -> Self {
        Queue {
            interval,
            cache: Mutex::new(Snapshot {
                at: None,
                states: HashMap::new(),
                failed: false,
            }),
        }
    }

    /// The state and name `squeue` gives job `id`, from a listing taken after `since` and
    /// at most `interval` old: `Some` while the controller lists it, `None` once it does
    /// not. `Err` when the controller cannot be asked (the job's fate is then unknown: keep
    /// following).
    pub(crate) fn state(
        &self,
        id: u32,
        since: Instant,
    ) -> Result<Option<(String, String)>, String> {
        let mut snapshot = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = snapshot
            .at
            .is_some_and(|at| at >= since && at.elapsed() < self.interval);
        if !fresh {
            // One call for all jobs of this user: the node's jobs are among them. Jobs
            // the controller still remembers after their end are listed with their final
            // state (`-t all`).
            let asked = Instant::now();
            match run("squeue", &["-h", "-t", "all", "-o", "%i %T %j", "--me"]) {
                Ok(output) => {
                    snapshot.states = output
                        .lines()
                        .filter_map(|line| {
                            let mut parts = line.split_whitespace();
                            let id = parts.next()?.parse().ok()?;
                            let state = parts.next()?.to_string();
                            Some((id, (state, parts.next().unwrap_or("").to_string())))
                        })
                        .collect();
                    snapshot.failed = false;
                }
                Err(error) => {
                    snapshot.failed = true;
                    snapshot.at = Some(asked);
                    return Err(error.to_string());
                }
            }
            // The time it was asked, not answered: a job submitted meanwhile may be
            // missing from it.
            snapshot.at = Some(asked);
        }
        if snapshot.failed {
            return Err("the controller could not be asked".into());
        }
        Ok(snapshot.states.get(&id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_are_read() {
        let line = "JobId=7 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:01";
        let state = parse_scontrol(line).unwrap();
        assert_eq!(state.state, "FAILED");
        assert_eq!(state.exit_code, Some(3));
        assert_eq!(state.signal, Some(0));
        assert_eq!(state.reason.as_deref(), Some("NonZeroExitCode"));
        assert!(state.is_over());
        assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified").is_none());
    }

    #[test]
    fn sacct_lines_are_read() {
        let state = parse_sacct("CANCELLED by 0|0:15\n").unwrap();
        assert_eq!(state.state, "CANCELLED");
        assert_eq!(state.signal, Some(15));
        assert!(parse_sacct("").is_none());
    }
}

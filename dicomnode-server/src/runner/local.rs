//! The local executor: each attempt runs in a child process on this machine (see
//! [`super::supervise`]), fresh per patient or a warm worker taking several.

use super::executor::{log_report, Attempt, Executor, Ran};
use super::supervise::{self, ChildProcess, Launch};
use super::wire::{ChildOutcome, Report};
use super::workdirs::RunnerDir;
use super::{job_for, Outcome};
use crate::config::ChildPolicy;
use crate::storage::{PatientBatch, Storage};
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Children on this machine.
pub(crate) struct LocalChildren {
    exe: PathBuf,
    pipeline_name: &'static str,
    pipeline: Arc<Vec<u8>>,
    /// Holds the children's job directories; owned (locked) while the executor lives.
    dir: RunnerDir,
    storage: Arc<Storage>,
    policy: ChildPolicy,
    /// Process groups of the children alive now.
    alive: Mutex<HashSet<u32>>,
    /// Warm workers waiting for their next patient.
    warm: Mutex<Vec<ChildProcess>>,
    stopping: AtomicBool,
}

impl LocalChildren {
    pub(crate) fn new(
        exe: PathBuf,
        pipeline_name: &'static str,
        pipeline: Arc<Vec<u8>>,
        dir: RunnerDir,
        storage: Arc<Storage>,
        policy: ChildPolicy,
    ) -> Self {
        LocalChildren {
            exe,
            pipeline_name,
            pipeline,
            dir,
            storage,
            policy,
            alive: Mutex::new(HashSet::new()),
            warm: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        }
    }

    fn outcome_of_report(&self, batch: &PatientBatch, report: &Report, pid: u32) -> Outcome {
        log_report(batch, report, Ran::Pid(pid));
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
}

impl Executor for LocalChildren {
    /// One attempt: a child (fresh, or a warm one) runs the job.
    fn run(&self, batch: &PatientBatch) -> Attempt {
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut child = match warm {
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
                Err(message) => return Attempt::not_run(message),
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
                    && !end.timed_out =>
            {
                let tail = child.tail();
                // Kept warm unless the node is stopping (checked under the pool's lock,
                // which `stop` takes to set it: no child is kept after the pool emptied).
                let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                if self.stopping.load(Ordering::SeqCst) {
                    drop(warm);
                    self.retire(child, false);
                } else {
                    warm.push(child);
                }
                Attempt {
                    outcome,
                    tail,
                    output: None,
                }
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
                Attempt {
                    outcome,
                    tail,
                    output,
                }
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
                Attempt {
                    outcome,
                    tail,
                    output,
                }
            }
        }
    }

    fn release(&self, _batch: &PatientBatch) {
        // A child's job directory goes with the child.
    }

    /// Warm workers waiting for a patient are told there is none; they end side by side
    /// (each within its own bounded wait).
    fn stop(&self, _grace: Duration) {
        let warm: Vec<ChildProcess> = {
            let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::SeqCst);
            warm.drain(..).collect()
        };
        std::thread::scope(|scope| {
            for child in warm {
                scope.spawn(|| self.retire(child, false));
            }
        });
    }

    /// Kills the process group of every child alive.
    fn kill_all(&self) {
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

    fn finish(&self, all_ended: bool) {
        self.kill_all();
        if all_ended {
            self.dir.remove();
        }
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

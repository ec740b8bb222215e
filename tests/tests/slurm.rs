//! Patients' processing as Slurm jobs, on a real one-machine Slurm cluster (Debian's
//! `slurm-wlm`, started by each test): success with the job's output in the node's log,
//! every ending a test can cause, a node killed with SIGKILL while jobs run (adopted after
//! the restart, finished ones collected, none submitted twice), and shutdown with jobs
//! running (left running and adopted, or cancelled).

use dicomnode_tests::slurm::SlurmCluster;
use dicomnode_tests::{expect_failures, field, files_under, send_patient, NodeProcess};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// A cluster and the directories a node of it uses.
struct Setup {
    cluster: SlurmCluster,
    out: tempfile::TempDir,
    jobs: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            cluster: SlurmCluster::start().unwrap_or_else(|e| panic!("cluster: {e}")),
            out: tempfile::tempdir().unwrap(),
            jobs: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// A test node running its patients as Slurm jobs of this cluster.
    fn node(&self, extra: &[&str]) -> NodeProcess {
        let mut args = vec![
            "--port",
            "0",
            "--out",
            self.out.path().to_str().unwrap(),
            "--data-dir",
            self.data.path().to_str().unwrap(),
            "--executor",
            "slurm",
            "--job-dir",
            self.jobs.path().to_str().unwrap(),
            "--slurm-poll-secs",
            "1",
        ];
        args.extend_from_slice(extra);
        NodeProcess::start_with_env(
            Path::new(env!("CARGO_BIN_EXE_test_node")),
            &args,
            &[("SLURM_CONF", self.cluster.conf().to_str().unwrap())],
        )
    }

    /// The records the test processor wrote for `patient` (one per run).
    fn runs_of(&self, patient: &str) -> Vec<String> {
        files_under(&self.out.path().join("runs"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{patient}-")))
            })
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// What is left in the job directory.
    fn job_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.jobs.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// The Slurm job ID the node submitted for `patient` (from its "job submitted" line).
fn job_of(node: &mut NodeProcess, patient: &str) -> u64 {
    let line = node.wait_for_log(
        &format!("patient{{key={patient}}}: dicomnode_server::runner::slurm: job submitted"),
        WAIT,
    );
    field(&line, "slurm_job").unwrap().parse().unwrap()
}

fn sigkill(node: &NodeProcess) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn a_patient_runs_as_a_slurm_job_and_its_log_reaches_the_node() {
    let setup = Setup::new();
    let mut node = setup.node(&[]);
    send_patient(&node, "OK-1", 3);
    let done = node.wait_for_log("processing finished", WAIT);
    assert!(done.contains("key=OK-1"), "{done}");
    let id = job_of(&mut node, "OK-1");
    // The job ran the node's binary on the cluster: another process, all three instances.
    let runs = setup.runs_of("OK-1");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let pid: u32 = runs[0]
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pid, node.pid());
    assert!(runs[0].contains("count=3"), "{}", runs[0]);
    // Its working directory was inside the job's directory and is gone.
    let cwd = runs[0]
        .lines()
        .find_map(|l| l.strip_prefix("cwd="))
        .unwrap();
    assert!(
        cwd.starts_with(setup.jobs.path().to_str().unwrap()),
        "{cwd}"
    );
    assert!(!Path::new(cwd).exists());
    // The processor's log record came back into the node's log, in the patient's span,
    // tagged with the job.
    let log = node.log();
    let relayed = log
        .lines()
        .find(|l| l.contains("test processor starts"))
        .unwrap_or_else(|| panic!("no relayed record: {log}"));
    assert!(
        relayed.contains(&format!("slurm_job={id}")) && relayed.contains("key=OK-1"),
        "{relayed}"
    );
    // Slurm says the job completed; the node removed its directory and the batch.
    let job = setup.cluster.wait_for_end(id, WAIT).unwrap();
    assert_eq!(job["JobState"], "COMPLETED");
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
    assert!(
        files_under(&setup.data.path().join("processing")).is_empty(),
        "the processed batch is gone"
    );
}

#[test]
fn every_ending_of_a_job_is_told_apart_and_the_data_are_kept() {
    let setup = Setup::new();
    let mut node = setup.node(&["--attempts", "1", "--memory-limit-mb", "200"]);
    let cases = [
        ("EXIT3-1", "child exited with code 3 without a report"),
        ("SEGV-1", "child killed by signal 11 (SIGSEGV)"),
        ("MEM-1", "killed for memory: exceeded its limit of 200 MiB"),
        (
            "PANIC-2",
            "processor panicked: deliberate panic for patient PANIC-2",
        ),
        (
            "FAIL-2",
            "process returned an error: deliberate failure for patient FAIL-2",
        ),
    ];
    expect_failures(&mut node, &cases, WAIT);
    // Cancelled from outside while it runs.
    send_patient(&node, "NAP-CANCEL", 1);
    let id = job_of(&mut node, "NAP-CANCEL");
    setup
        .cluster
        .wait_for_job(id, WAIT, |s| s == "RUNNING")
        .unwrap();
    let cancelled = setup
        .cluster
        .command("scancel")
        .arg(id.to_string())
        .status()
        .unwrap();
    assert!(cancelled.success());
    let lines = node.wait_for_count("processing failed", cases.len() + 1, WAIT);
    let line = lines.last().unwrap();
    assert!(
        line.contains("NAP-CANCEL") && line.contains(&format!("cancelled: Slurm job {id}")),
        "{line}"
    );
    // Every failed patient was kept (quarantined after its one attempt), with its record.
    node.wait_for_count("every attempt failed", cases.len() + 1, WAIT);
    let quarantined: Vec<String> = files_under(&setup.data.path().join("quarantine"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "failures.log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(quarantined.len(), cases.len() + 1, "{quarantined:?}");
    assert!(quarantined.iter().any(|r| r.contains("killed for memory")));
    // The node serves on, and nothing is left in the job directory.
    send_patient(&node, "FINE-1", 1);
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=FINE-1"), "{line}");
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
}

#[test]
fn a_job_over_its_time_limit_ends_as_timed_out() {
    let setup = Setup::new();
    // Slurm counts whole minutes and checks about every 30 s: this takes 60 to 90 s.
    let mut node = setup.node(&["--attempts", "1", "--time-limit", "60"]);
    send_patient(&node, "HANG-1", 1);
    let id = job_of(&mut node, "HANG-1");
    let line = node.wait_for_log("processing failed", Duration::from_secs(150));
    assert!(
        line.contains("HANG-1") && line.contains("timed out after 60 s"),
        "{line}"
    );
    let job = setup.cluster.wait_for_end(id, WAIT).unwrap();
    assert_eq!(job["JobState"], "TIMEOUT");
}

#[test]
fn a_node_killed_while_jobs_run_adopts_them_and_collects_finished_ones() {
    let setup = Setup::new();
    // A job still running at the restart is adopted.
    let mut node = setup.node(&[]);
    send_patient(&node, "NAP-RUNNING", 1);
    let running = job_of(&mut node, "NAP-RUNNING");
    setup
        .cluster
        .wait_for_job(running, WAIT, |s| s == "RUNNING")
        .unwrap();
    sigkill(&node);
    node.wait_for_exit(WAIT);
    assert_eq!(
        setup.cluster.job(running).unwrap().unwrap()["JobState"],
        "RUNNING"
    );
    let mut node = setup.node(&[]);
    let adopted = node.wait_for_log("adopting the job", WAIT);
    assert!(
        adopted.contains(&format!("slurm_job={running}")),
        "{adopted}"
    );
    let done = node.wait_for_log("processing finished", WAIT);
    assert!(done.contains("key=NAP-RUNNING"), "{done}");
    assert!(
        !node.log().contains(": job submitted"),
        "submitted again: {}",
        node.log()
    );

    // A job that finished while the node was down is collected, not run again.
    send_patient(&node, "NAP-DONE", 1);
    let finished = job_of(&mut node, "NAP-DONE");
    sigkill(&node);
    node.wait_for_exit(WAIT);
    let job = setup.cluster.wait_for_end(finished, WAIT).unwrap();
    assert_eq!(job["JobState"], "COMPLETED");
    let mut node = setup.node(&[]);
    node.wait_for_log("adopting the job", WAIT);
    let done = node.wait_for_log("processing finished", WAIT);
    assert!(done.contains("key=NAP-DONE"), "{done}");
    assert!(
        !node.log().contains(": job submitted"),
        "submitted again: {}",
        node.log()
    );

    // Each patient ran exactly once, and nothing is left over.
    assert_eq!(setup.runs_of("NAP-RUNNING").len(), 1);
    assert_eq!(setup.runs_of("NAP-DONE").len(), 1);
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
    assert!(files_under(&setup.data.path().join("processing")).is_empty());
}

#[test]
fn sigterm_leaves_jobs_running_or_cancels_them() {
    let setup = Setup::new();
    let sigterm = |node: &NodeProcess| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    };
    // By default the job outlives the node and the next start adopts it.
    let mut node = setup.node(&[]);
    send_patient(&node, "NAP-LEFT", 1);
    let left = job_of(&mut node, "NAP-LEFT");
    setup
        .cluster
        .wait_for_job(left, WAIT, |s| s == "RUNNING")
        .unwrap();
    sigterm(&node);
    assert!(node.wait_for_exit(Duration::from_secs(20)).success());
    assert_eq!(
        setup.cluster.job(left).unwrap().unwrap()["JobState"],
        "RUNNING",
        "left running"
    );
    let mut node = setup.node(&["--cancel-jobs-on-exit"]);
    let adopted = node.wait_for_log("adopting the job", WAIT);
    assert!(adopted.contains(&format!("slurm_job={left}")), "{adopted}");
    node.wait_for_log("processing finished", WAIT);

    // With --cancel-jobs-on-exit the job is cancelled and submitted anew at the next start.
    send_patient(&node, "NAP-CANCELLED", 1);
    let cancelled = job_of(&mut node, "NAP-CANCELLED");
    setup
        .cluster
        .wait_for_job(cancelled, WAIT, |s| s == "RUNNING")
        .unwrap();
    sigterm(&node);
    assert!(node.wait_for_exit(Duration::from_secs(20)).success());
    let job = setup.cluster.wait_for_end(cancelled, WAIT).unwrap();
    assert_eq!(job["JobState"], "CANCELLED");
    let mut node = setup.node(&[]);
    let again = job_of(&mut node, "NAP-CANCELLED");
    assert_ne!(again, cancelled);
    let done = node.wait_for_log("processing finished", WAIT);
    assert!(done.contains("key=NAP-CANCELLED"), "{done}");
    assert_eq!(setup.runs_of("NAP-LEFT").len(), 1);
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
}

#[test]
fn a_failed_cluster_node_is_transient_and_the_job_runs_again() {
    let setup = Setup::new();
    // The node submits with --no-requeue (it owns retries): the job ends NODE_FAIL and
    // the node submits it again, not counting an attempt (one attempt allowed here).
    let mut node = setup.node(&["--attempts", "1"]);
    send_patient(&node, "NAP-NODE", 1);
    let first = job_of(&mut node, "NAP-NODE");
    setup
        .cluster
        .wait_for_job(first, WAIT, |s| s == "RUNNING")
        .unwrap();
    let scontrol = |state: &str| {
        let start = std::time::Instant::now();
        loop {
            let output = setup
                .cluster
                .command("scontrol")
                .args([
                    "update",
                    &format!("nodename={}", setup.cluster.node_name()),
                    &format!("state={state}"),
                    "reason=test",
                ])
                .output()
                .unwrap();
            if output.status.success() {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "scontrol state={state}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    scontrol("down");
    let job = setup.cluster.wait_for_end(first, WAIT).unwrap();
    assert_eq!(job["JobState"], "NODE_FAIL");
    let line = node.wait_for_log("ended for a reason outside the job", WAIT);
    assert!(
        line.contains(&format!("Slurm job {first} ended as NODE_FAIL")),
        "{line}"
    );
    // The cluster's node comes back by itself when its slurmd registers again
    // (ReturnToService=2); the new job runs then.
    let done = node.wait_for_log("processing finished", WAIT);
    assert!(done.contains("key=NAP-NODE"), "{done}");
    let log = node.log();
    assert!(!log.contains("processing failed"), "{log}");
    assert_eq!(
        log.matches("runner::slurm: job submitted").count(),
        2,
        "submitted once more: {log}"
    );
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
}

#[test]
fn a_job_slurm_refuses_is_a_clear_failure_and_the_data_are_kept() {
    let setup = Setup::new();
    let mut node = setup.node(&["--attempts", "1", "--slurm-partition", "no-such-partition"]);
    expect_failures(
        &mut node,
        &[(
            "REFUSED-1",
            "child could not run: sbatch did not take the job",
        )],
        WAIT,
    );
    let line = node.wait_for_log("every attempt failed", WAIT);
    assert!(line.contains("REFUSED-1"), "{line}");
    // The instance is kept, with the reason, and no job directory is left.
    let kept = files_under(&setup.data.path().join("quarantine"));
    assert!(
        kept.iter()
            .any(|p| p.extension().is_some_and(|e| e == "dcm")),
        "{kept:?}"
    );
    let record = kept
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "failures.log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap();
    assert!(
        record.contains("no-such-partition") || record.contains("partition"),
        "{record}"
    );
    assert!(setup.job_dirs().is_empty(), "{:?}", setup.job_dirs());
    assert!(!node.log().contains(": job submitted"));
}

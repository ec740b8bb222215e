//! The one-machine Slurm cluster of the tests (`dicomnode_tests::slurm`): a batch job runs
//! to COMPLETED, two clusters run jobs at the same time, and dropping a cluster leaves no
//! process of its jobs behind. Needs root and Debian's slurm-wlm and munge (.ci/run
//! installs them).

use dicomnode_tests::slurm::SlurmCluster;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a job of these tests may take from submission to its end.
const JOB_TIMEOUT: Duration = Duration::from_secs(20);

fn start() -> SlurmCluster {
    SlurmCluster::start().unwrap_or_else(|e| panic!("the Slurm cluster does not start: {e}"))
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

#[test]
fn a_batch_job_runs_to_completed() {
    let cluster = start();
    let out = cluster.dir().join("out-%j.txt");
    let out = out.to_str().expect("a UTF-8 path");
    let id = cluster
        .submit(&["-o", out, "--wrap", "echo hi"])
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));
    let job = cluster
        .wait_for_end(id, JOB_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));
    assert_eq!(job.get("JobState").map(String::as_str), Some("COMPLETED"));
    assert_eq!(job.get("ExitCode").map(String::as_str), Some("0:0"));
    let output = cluster.dir().join(format!("out-{id}.txt"));
    assert_eq!(
        std::fs::read_to_string(&output).expect("the job's output file"),
        "hi\n"
    );
    // It ran as the submitter (root).
    assert_eq!(job.get("UserId").map(String::as_str), Some("root(0)"));
    // The completion log has its line.
    let jobcomp = std::fs::read_to_string(cluster.jobcomp_log()).expect("the jobcomp log");
    let line = jobcomp
        .lines()
        .find(|l| l.starts_with(&format!("JobId={id} ")))
        .unwrap_or_else(|| panic!("no line for job {id} in the jobcomp log: {jobcomp}"));
    assert!(line.contains(" JobState=COMPLETED "), "{line}");
    assert!(line.contains(" ExitCode=0:0"), "{line}");
    // An unknown job id is "not known", not an error.
    assert_eq!(cluster.job(id + 1000).expect("scontrol answers"), None);
}

#[test]
fn two_clusters_run_jobs_at_the_same_time() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(start);
        let b = s.spawn(start);
        (
            a.join().expect("cluster a starts"),
            b.join().expect("cluster b starts"),
        )
    });
    assert_ne!(a.slurmctld_port(), b.slurmctld_port());
    assert_ne!(a.slurmd_port(), b.slurmd_port());
    assert_ne!(a.dir(), b.dir());
    assert_eq!(a.node_name(), b.node_name(), "both use the host name");

    // Each job announces itself, then waits for the other: both complete only if they
    // run at the same time.
    let meeting = tempfile::tempdir().expect("a temporary directory");
    let script = |me: &str, other: &str| {
        let m = meeting.path().display();
        format!(
            "echo $SLURM_JOB_ID > {m}/{me}; \
             for i in $(seq 200); do [ -e {m}/{other} ] && echo met && exit 0; sleep 0.1; done; \
             exit 1"
        )
    };
    let submit = |cluster: &SlurmCluster, me: &str, other: &str| {
        let out = cluster.dir().join("out.txt");
        cluster
            .submit(&[
                "-t",
                "1",
                "-o",
                out.to_str().expect("a UTF-8 path"),
                "--wrap",
                &script(me, other),
            ])
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)))
    };
    let id_a = submit(&a, "a", "b");
    let id_b = submit(&b, "b", "a");
    for (cluster, id) in [(&a, id_a), (&b, id_b)] {
        let job = cluster
            .wait_for_end(id, JOB_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));
        assert_eq!(
            job.get("JobState").map(String::as_str),
            Some("COMPLETED"),
            "{job:?}"
        );
        let out = std::fs::read_to_string(cluster.dir().join("out.txt")).expect("job output");
        assert_eq!(out, "met\n");
    }
    // Each job ran in its own cluster (job ids are counted per cluster).
    let read = |name: &str| {
        std::fs::read_to_string(meeting.path().join(name))
            .expect("the job's marker")
            .trim()
            .to_string()
    };
    assert_eq!(read("a"), id_a.to_string());
    assert_eq!(read("b"), id_b.to_string());
}

#[test]
fn dropping_the_cluster_ends_its_jobs() {
    let cluster = start();
    let pids_dir = tempfile::tempdir().expect("a temporary directory");
    let pids = pids_dir.path().join("pids");
    let id = cluster
        .submit(&[
            "-o",
            "/dev/null",
            "--wrap",
            &format!(
                "sleep 300 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; wait",
                p = pids.display()
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));
    cluster
        .wait_for_job(id, JOB_TIMEOUT, |state| state == "RUNNING")
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(20)));
    let start = Instant::now();
    while !pids.exists() {
        assert!(start.elapsed() < JOB_TIMEOUT, "the job wrote no PIDs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let job_pids: Vec<i32> = std::fs::read_to_string(&pids)
        .expect("the PID file")
        .lines()
        .map(|l| l.trim().parse().expect("a PID"))
        .collect();
    assert_eq!(job_pids.len(), 2);
    let leftover = cluster.leftover_processes();
    for pid in &job_pids {
        assert!(alive(*pid), "job process {pid} runs");
        assert!(
            leftover.contains(pid),
            "job process {pid} is one of the cluster's: {leftover:?}"
        );
    }
    let dir = cluster.dir().to_path_buf();
    let stepd_and_jobs = leftover.clone();
    drop(cluster);
    for pid in stepd_and_jobs {
        assert!(!alive(pid), "process {pid} of the cluster outlived it");
    }
    assert!(
        !Path::new(&dir).exists(),
        "the cluster's directory is removed"
    );
}

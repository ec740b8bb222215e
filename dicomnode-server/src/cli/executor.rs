//! The flags that choose where patients' processing runs: local children (the default)
//! or Slurm jobs.

use crate::config::{ExecutorChoice, SlurmSettings};
use std::path::PathBuf;

/// `--executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A child process on this machine per patient (or a warm worker).
    #[default]
    Local,
    /// A Slurm job per patient: `--job-dir` must be on a file system the cluster's nodes
    /// share, and the node's executable reachable from them at the same path. Warm
    /// workers do not apply.
    Slurm,
}

/// Where patients' processing runs, and the Slurm job's settings.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct ExecutorArgs {
    /// Where each patient's processing runs: `local` children, or `slurm` jobs (then
    /// --time-limit, --memory-limit-mb and --max-children become each job's `--time`,
    /// `--mem` and the number of jobs in flight at once).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local, env = "DICOMNODE_EXECUTOR")]
    pub executor: ExecutorKind,
    /// With `--executor slurm`: a directory on a file system the cluster's nodes share;
    /// each job is a directory in it.
    #[arg(long, required_if_eq("executor", "slurm"), env = "DICOMNODE_JOB_DIR")]
    pub job_dir: Option<PathBuf>,
    /// Slurm partition of the jobs (`sbatch --partition`).
    #[arg(long, env = "DICOMNODE_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// Slurm account of the jobs (`sbatch --account`).
    #[arg(long, env = "DICOMNODE_SLURM_ACCOUNT")]
    pub slurm_account: Option<String>,
    /// Generic resources of each job, e.g. `gpu:1` (`sbatch --gres`).
    #[arg(long, env = "DICOMNODE_SLURM_GRES")]
    pub slurm_gres: Option<String>,
    /// A further argument passed to `sbatch` as it is (repeat for several), e.g.
    /// `--slurm-arg=--qos=high`.
    #[arg(
        long = "slurm-arg",
        allow_hyphen_values = true,
        env = "DICOMNODE_SLURM_ARG",
        value_delimiter = ' '
    )]
    pub slurm_arg: Vec<String>,
    /// Seconds between asking the Slurm controller about the jobs in flight (one
    /// `squeue` for all of them); a job's report is noticed sooner.
    #[arg(long, default_value_t = 5.0, env = "DICOMNODE_SLURM_POLL_SECS")]
    pub slurm_poll_secs: f64,
    /// On SIGINT/SIGTERM, cancel the jobs in flight (they run again at the next start)
    /// instead of leaving them running (the next start adopts them).
    #[arg(long, env = "DICOMNODE_CANCEL_JOBS_ON_EXIT")]
    pub cancel_jobs_on_exit: bool,
}

impl ExecutorArgs {
    /// The executor these flags choose.
    pub fn choice(&self) -> ExecutorChoice {
        match (self.executor, &self.job_dir) {
            (ExecutorKind::Slurm, Some(dir)) => {
                let mut settings =
                    SlurmSettings::new(std::path::absolute(dir).unwrap_or(dir.clone()));
                settings.partition = self.slurm_partition.clone();
                settings.account = self.slurm_account.clone();
                settings.gres = self.slurm_gres.clone();
                settings.extra_args = self.slurm_arg.clone();
                settings.cancel_jobs_on_exit = self.cancel_jobs_on_exit;
                settings.poll =
                    super::seconds(self.slurm_poll_secs).max(std::time::Duration::from_millis(100));
                ExecutorChoice::Slurm(settings)
            }
            // clap requires --job-dir with slurm; without one, nothing can be submitted.
            _ => ExecutorChoice::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        node: crate::cli::NodeArgs,
    }

    #[test]
    fn slurm_flags_make_the_slurm_settings() {
        let args = Args::try_parse_from([
            "node",
            "--executor",
            "slurm",
            "--job-dir",
            "/shared/jobs",
            "--slurm-partition",
            "gpu",
            "--slurm-gres",
            "gpu:1",
            "--slurm-arg=--qos=high",
            "--slurm-arg",
            "--nice=10",
            "--cancel-jobs-on-exit",
            "--slurm-poll-secs",
            "2",
        ])
        .unwrap();
        let ExecutorChoice::Slurm(settings) = args.node.config("NODE").executor else {
            panic!("not the Slurm executor");
        };
        assert_eq!(settings.job_dir, PathBuf::from("/shared/jobs"));
        assert_eq!(settings.partition.as_deref(), Some("gpu"));
        assert_eq!(settings.account, None);
        assert_eq!(settings.gres.as_deref(), Some("gpu:1"));
        assert_eq!(settings.extra_args, ["--qos=high", "--nice=10"]);
        assert!(settings.cancel_jobs_on_exit);
        assert_eq!(settings.poll, std::time::Duration::from_secs(2));
    }

    #[test]
    fn slurm_needs_a_job_directory_and_local_is_the_default() {
        assert!(Args::try_parse_from(["node", "--executor", "slurm"]).is_err());
        let args = Args::try_parse_from(["node"]).unwrap();
        assert_eq!(args.node.config("NODE").executor, ExecutorChoice::Local);
    }
}

//! Starts a one-machine Slurm cluster of its own (see `dicomnode_tests::slurm`) for the
//! benchmarks, prints `SLURM_CONF=<path>`, and keeps it until its standard input ends;
//! then stops its daemons and jobs and removes its directory.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cluster = match dicomnode_tests::slurm::SlurmCluster::start() {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("slurm_cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "SLURM_CONF={}", cluster.conf().display())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
    ExitCode::SUCCESS
}

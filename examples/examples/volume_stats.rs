//! A node that builds the volume of every series it receives (any transfer syntax) and
//! writes each patient's geometry and value statistics to `<out>/<PatientID>.json`.
//!
//! ```text
//! cargo run --release --example volume_stats -- --port 11112 --ae-title VOLUME_STATS --out ./stats
//! TCP_NODELAY=1 /usr/bin/storescu -aec VOLUME_STATS +sd +r 127.0.0.1 11112 some/ct/folder
//! ```

use clap::Parser;
use dicomnode_examples::volume_stats::VolumeStatsNode;
use dicomnode_server::cli::{or_exit, NodeArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Build a volume of each series received and write statistics to OUT/<PatientID>.json.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the JSON files go (default: the configuration file's [pipeline] out, else
    /// ./stats).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    // In a processing child, `run` processes the job and never calls this closure.
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("VOLUME_STATS");
        // The pipeline's own struct from [pipeline]; --out, when given, wins.
        let mut node =
            or_exit(args.node.pipeline::<VolumeStatsNode>()).unwrap_or(VolumeStatsNode {
                out: PathBuf::from("stats"),
            });
        if let Some(out) = args.out {
            node.out = out;
        }
        node.out = std::path::absolute(&node.out).unwrap_or(node.out);
        (node, config)
    })
}

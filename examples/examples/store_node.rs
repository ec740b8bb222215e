//! A node that writes every patient's instances to a directory, from inside the child.
//!
//! ```text
//! cargo run --release --example store_node -- --port 11112 --ae-title STORE_NODE --out ./received --data-dir ./data
//! TCP_NODELAY=1 /usr/bin/storescu -aec STORE_NODE +sd +r 127.0.0.1 11112 some/folder
//! ```

use clap::Parser;
use dicomnode_examples::store::StoreNode;
use dicomnode_server::cli::NodeArgs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Receive DICOM instances and write each patient's to OUT/<study>/<series>/<sop>.dcm.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the files go.
    #[arg(long, default_value = "received")]
    out: PathBuf,
}

fn main() -> ExitCode {
    // In a processing child, `run` processes the job and never calls this closure.
    dicomnode_server::run(|| {
        let args = Args::parse();
        let out = std::path::absolute(&args.out).unwrap_or(args.out);
        (StoreNode { out }, args.node.config("STORE_NODE"))
    })
}

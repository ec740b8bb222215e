//! A node that fetches each patient's prior studies (same modality, up to 3) from a PACS
//! when the current study arrives, and writes `<out>/<PatientID>.json` with the current
//! study, the priors (UID, date, instances) and whether they were available.
//!
//! ```text
//! cargo run --release --example with_priors -- --port 11112 --ae-title PRIORS \
//!     --out ./priors --pacs ORTHANC@127.0.0.1:4242
//! ```
//!
//! With C-MOVE (the default) the PACS must know this node's AE title, host and port; with
//! `--retrieval get` it needs nothing.

use clap::Parser;
use dicomnode_examples::with_priors::WithPriorsNode;
use dicomnode_server::cli::NodeArgs;
use dicomnode_server::{Address, Retrieval};
use std::path::PathBuf;
use std::process::ExitCode;

/// Fetch prior studies of each current study from a PACS; write OUT/<PatientID>.json.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the JSON files go.
    #[arg(long, default_value = "priors")]
    out: PathBuf,
    /// The PACS: AE@host:port.
    #[arg(long)]
    pacs: Address,
    /// How the priors come: `move` (C-MOVE to this node) or `get` (C-GET).
    #[arg(long, default_value = "move", value_parser = ["move", "get"])]
    retrieval: String,
    /// The time limit of one patient's fetch, in seconds.
    #[arg(long, default_value_t = 120)]
    fetch_seconds: u64,
}

fn main() -> ExitCode {
    // In a processing child, `run` processes the job and never calls this closure.
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("PRIORS");
        let out = std::path::absolute(&args.out).unwrap_or(args.out);
        let retrieval = match args.retrieval.as_str() {
            "get" => Retrieval::Get,
            _ => Retrieval::Move,
        };
        let node = WithPriorsNode {
            out,
            pacs: args.pacs,
            retrieval,
            fetch_seconds: args.fetch_seconds,
        };
        (node, config)
    })
}

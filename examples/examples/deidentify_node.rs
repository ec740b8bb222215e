//! A node that de-identifies every patient (DICOM PS3.15 Basic Application Level
//! Confidentiality Profile) and sends the instances on; the mapping file lets results be
//! re-identified with `dicomnode reidentify`.
//!
//! ```text
//! cargo run --release --example deidentify_node -- --port 11112 --dest RESEARCH@127.0.0.1:11113 \
//!     --mapping ./mapping.jsonl --retain retain-long-modified-dates
//! ```

use clap::Parser;
use dicomnode_examples::deidentify::DeidentifyNode;
use dicomnode_server::cli::{or_exit, NodeArgs};
use dicomnode_server::deidentify::ProfileOption;
use dicomnode_server::RetryPolicy;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Receive instances, de-identify each patient's, send them to --dest.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the de-identified instances go: AE@host:port, or a name from the
    /// configuration file's [destinations].
    #[arg(long, env = "DICOMNODE_DEST")]
    dest: String,
    /// The mapping file (created with a new key if absent). Keep it where identities may be.
    #[arg(long, default_value = "mapping.jsonl")]
    mapping: PathBuf,
    /// An option of the profile (repeatable), e.g. retain-long-modified-dates.
    #[arg(long = "retain", value_name = "OPTION")]
    options: Vec<ProfileOption>,
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("DEIDENTIFY");
        let node = DeidentifyNode {
            destination: or_exit(args.node.address(&args.dest)),
            calling_ae_title: config.ae_title.clone(),
            mapping: std::path::absolute(&args.mapping).unwrap_or(args.mapping),
            options: args.options,
            retry: RetryPolicy::new(3, Duration::from_secs(1)),
        };
        (node, config)
    })
}

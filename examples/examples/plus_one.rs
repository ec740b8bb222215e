//! A node that adds 1 to every CT pixel value (Hounsfield units) and sends the derived
//! series on.
//!
//! ```text
//! cargo run --release --example plus_one -- --port 11112 --ae-title PLUS_ONE --dest STORESCP@127.0.0.1:11113
//! ```

use clap::Parser;
use dicomnode_examples::plus_one::PlusOneNode;
use dicomnode_server::cli::{or_exit, NodeArgs};
use dicomnode_server::RetryPolicy;
use std::process::ExitCode;
use std::time::Duration;

/// Receive CT series, add 1 to every pixel value, send the derived series to --dest.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Where the derived series goes: AE@host:port, or a name from the configuration
    /// file's [destinations].
    #[arg(long, env = "DICOMNODE_DEST")]
    dest: String,
    /// Instances per series (default: each series' ImagesInAcquisition).
    #[arg(long)]
    slices: Option<u32>,
    /// Attempts to send, when the destination fails transiently.
    #[arg(long, default_value_t = 3)]
    send_attempts: u32,
    /// Seconds before the second send attempt (doubled each time).
    #[arg(long, default_value_t = 1.0)]
    send_backoff: f64,
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("PLUS_ONE");
        let node = PlusOneNode {
            destination: or_exit(args.node.address(&args.dest)),
            calling_ae_title: config.ae_title.clone(),
            slices: args.slices,
            retry: RetryPolicy::new(
                args.send_attempts.max(1),
                Duration::from_secs_f64(args.send_backoff.max(0.0)),
            ),
        };
        (node, config)
    })
}

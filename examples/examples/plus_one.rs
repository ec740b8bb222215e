//! A node that adds 1 to every CT pixel value (Hounsfield units) and sends the derived
//! series on.
//!
//! ```text
//! cargo run --release --example plus_one -- --port 11112 --ae-title PLUS_ONE --dest STORESCP@127.0.0.1:11113
//! ```

use clap::Parser;
use dicomnode_examples::plus_one::PlusOneNode;
use dicomnode_server::dispatch::RetryPolicy;
use dicomnode_server::{Address, NodeConfig};
use std::process::ExitCode;
use std::time::Duration;

/// Receive CT series, add 1 to every pixel value, send the derived series to --dest.
#[derive(Parser)]
struct Args {
    /// TCP port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 11112)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The node's AE title; associations must call it, and it calls the destination with it.
    #[arg(long, default_value = "PLUS_ONE")]
    ae_title: String,
    /// Where the derived series goes: AE@host:port.
    #[arg(long)]
    dest: Address,
    /// Instances per series (default: each series' ImagesInAcquisition).
    #[arg(long)]
    slices: Option<u32>,
    /// Attempts to send, when the destination fails transiently.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds before the second attempt (doubled each time).
    #[arg(long, default_value_t = 1.0)]
    backoff: f64,
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let node = PlusOneNode {
            destination: args.dest,
            calling_ae_title: args.ae_title.clone(),
            slices: args.slices,
            retry: RetryPolicy {
                attempts: args.attempts,
                first_backoff: Duration::from_secs_f64(args.backoff.max(0.0)),
            },
        };
        let config =
            NodeConfig::new(args.ae_title).bind(std::net::SocketAddr::new(args.host, args.port));
        (node, config)
    })
}

//! Writes synthetic CT/MR series with the project's generator, for tests and benchmarks.
//!
//! `gen_series --out DIR --patients 2 --series 2 --slices 10 --size 512`

use clap::Parser;
use dicomnode_server::synthetic::{Modality, SyntheticSeries};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    /// Directory to write into (one sub-directory per patient).
    #[arg(long)]
    out: PathBuf,
    /// Number of patients (PatientID PAT-1, PAT-2, ...).
    #[arg(long, default_value_t = 1)]
    patients: u32,
    /// Series per patient (CT, then MR, alternating).
    #[arg(long, default_value_t = 1)]
    series: u32,
    /// Instances per series.
    #[arg(long, default_value_t = 10)]
    slices: u32,
    /// Rows and columns.
    #[arg(long, default_value_t = 512)]
    size: u16,
    /// Prefix of the PatientIDs.
    #[arg(long, default_value = "PAT-")]
    prefix: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for p in 1..=args.patients {
        let id = format!("{}{p}", args.prefix);
        let mut series = SyntheticSeries::ct(&id, args.slices).size(args.size, args.size);
        for s in 0..args.series {
            if s > 0 {
                let modality = if s % 2 == 1 {
                    Modality::Mr
                } else {
                    Modality::Ct
                };
                series = series.next_series(modality, args.slices);
            }
            if let Err(e) = series.write_to(&args.out.join(&id)) {
                eprintln!("gen_series: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

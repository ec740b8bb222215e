//! A node for the end-to-end tests: records each processing it runs, and misbehaves on
//! request, so tests can observe the child from the outside.
//!
//! For each patient it writes `<out>/runs/<patient>-<pid>-<n>.txt` with the child's PID,
//! its working directory and the SOP Instance UIDs it saw. A patient whose ID starts with
//! `SLOW` makes it take 0.7 s; `PANIC` makes the processor panic; `FAIL` makes it return an error (until `<out>/heal`
//! exists); `FLAKY` fails on its first two runs; `ABORT` makes the
//! child abort; `LOUD` makes it print megabytes on stdout and stderr.

use clap::Parser;
use dicomnode_server::cli::NodeArgs;
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::{
    Enough, Input, InputContainer, NoOutput, Output, Pipeline, ProcessError, Processor,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[arg(long)]
    out: PathBuf,
    /// Instances a patient needs before it is processed.
    #[arg(long, default_value_t = 1)]
    enough: usize,
}

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Recorder, inputs = Self::inputs)]
struct TestNode {
    out: PathBuf,
    enough: usize,
}

impl TestNode {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::new("any")
            .require(tags::SOP_INSTANCE_UID)
            .enough_when(Enough::at_least(self.enough))]
    }
}

struct Recorder;

impl Processor for Recorder {
    type Pipeline = TestNode;

    fn build(_: &TestNode) -> Result<Self, ProcessError> {
        Ok(Recorder)
    }

    fn process(&mut self, node: &TestNode, input: InputContainer) -> Result<Output, ProcessError> {
        let key = input.patient_key().to_string();
        // The key comes from the network: never a raw path.
        let name = dicomnode_server::sanitize::path_component(&key);
        let cwd = std::env::current_dir()?;
        // Litter the working directory: it must be gone afterwards.
        std::fs::write(cwd.join("scratch.bin"), vec![0u8; 4096])?;
        let uids: Vec<String> = input
            .iter()
            .flat_map(|(_, instances)| instances.iter())
            .map(|i| i.meta().media_storage_sop_instance_uid().to_string())
            .collect();
        let runs = node.out.join("runs");
        std::fs::create_dir_all(&runs)?;
        let mut n = 0;
        let path = loop {
            let path = runs.join(format!("{name}-{}-{n}.txt", std::process::id()));
            if !path.exists() {
                break path;
            }
            n += 1;
        };
        let record = format!(
            "pid={}\ncwd={}\ncount={}\n{}\n",
            std::process::id(),
            cwd.display(),
            uids.len(),
            uids.join("\n")
        );
        std::fs::write(&path, record)?;
        if key.starts_with("SLOW") {
            std::thread::sleep(std::time::Duration::from_millis(700));
        }
        if key.starts_with("LOUD") {
            // Far more than a pipe buffer, on both streams, with and without newlines.
            let line = "x".repeat(1000);
            for i in 0..4000 {
                println!("{i} {line}");
                eprintln!("{i} {line}");
            }
            print!("{}", "y".repeat(100_000));
        }
        if key.starts_with("ABORT") {
            std::process::abort();
        }
        if key.starts_with("PANIC") {
            panic!("deliberate panic for patient {key}");
        }
        if key.starts_with("FLAKY") {
            // Fails on its first two runs (each run leaves a record), then succeeds.
            let runs_so_far = std::fs::read_dir(&runs)?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{name}-"))
                })
                .count();
            if runs_so_far <= 2 {
                return Err(ProcessError::new(format!(
                    "flaky failure {runs_so_far} for {key}"
                )));
            }
        }
        if key.starts_with("FAIL") && !node.out.join("heal").exists() {
            return Err(ProcessError::new(format!(
                "deliberate failure for patient {key}"
            )));
        }
        Ok(NoOutput.into())
    }
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("TEST_NODE");
        (
            TestNode {
                out: args.out,
                enough: args.enough,
            },
            config,
        )
    })
}

//! A node for the end-to-end tests: records each processing it runs, and misbehaves on
//! request, so tests can observe the child from the outside.
//!
//! For each patient it writes `<out>/runs/<patient>-<pid>-<n>.txt` with the child's PID,
//! its working directory, where the batch came from and the SOP Instance UIDs it saw. A patient whose ID starts with
//! `SEGV` segfaults; `EXIT3` exits with code 3; `MEM` allocates 4 GiB; `HANG` starts a
//! grandchild (its PID in `<out>/<patient>.grandchild`) and hangs; `SLOW` makes it take 0.7 s; `NAP` 6 s; `PANIC` makes the processor panic; `FAIL` makes it return an error (until `<out>/heal`
//! exists); `FLAKY` fails on its first two runs; `ABORT` makes the
//! child abort; `LOUD` makes it print megabytes on stdout and stderr; `CHATTY` prints
//! 20 MiB on each and fails; `STDIN` runs a subprocess that reads its standard input to
//! the end; `ESCAPE` starts a grandchild in a session of its own and hangs; `SELF` runs the
//! node's own binary with `--help`.

use clap::Parser;
use dicomnode_server::cli::NodeArgs;
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::{
    Completion, Enough, Grouping, Input, InputContainer, MaxWait, NoOutput, Output, Pipeline,
    ProcessError, Processor,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[arg(long)]
    out: PathBuf,
    /// Instances a patient needs before it is processed.
    #[arg(long, default_value_t = 1)]
    enough: usize,
    /// Milliseconds `Processor::build` takes (a stand-in for loading a model).
    #[arg(long, default_value_t = 0)]
    build_ms: u64,
    /// One batch per `patient`, `study` or `series`.
    #[arg(long, default_value = "patient")]
    group_by: String,
    /// Instead of --enough: complete when a CT and a PT series of one frame of reference
    /// were each quiet this many milliseconds.
    #[arg(long)]
    ct_pt_quiet_ms: Option<u64>,
    /// The pipeline's maximum wait, in milliseconds.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// What the maximum wait does: `process`, `discard` or `keep`.
    #[arg(long, default_value = "process")]
    max_wait_policy: String,
}

#[derive(Pipeline, Serialize, Deserialize)]
#[pipeline(processor = Recorder, inputs = Self::inputs, completion = Self::completion)]
struct TestNode {
    out: PathBuf,
    enough: usize,
    build_ms: u64,
    group_by: String,
    ct_pt_quiet_ms: Option<u64>,
    max_wait_ms: Option<u64>,
    max_wait_policy: String,
}

impl TestNode {
    fn inputs(&self) -> Vec<Input> {
        let enough = match self.ct_pt_quiet_ms {
            Some(ms) => Enough::modalities_in_one_frame(["CT", "PT"], Duration::from_millis(ms)),
            None => Enough::at_least(self.enough),
        };
        vec![Input::new("any")
            .require(tags::SOP_INSTANCE_UID)
            .enough_when(enough)]
    }

    fn completion(&self) -> Completion {
        let grouping = match self.group_by.as_str() {
            "study" => Grouping::Study,
            "series" => Grouping::Series,
            _ => Grouping::Patient,
        };
        let mut completion = Completion::new().group_by(grouping);
        if let Some(ms) = self.max_wait_ms {
            let policy = match self.max_wait_policy.as_str() {
                "discard" => MaxWait::Discard,
                "keep" => MaxWait::KeepWaiting,
                _ => MaxWait::Process,
            };
            completion = completion.max_wait(Duration::from_millis(ms), policy);
        }
        completion
    }
}

struct Recorder;

impl Processor for Recorder {
    type Pipeline = TestNode;

    fn build(node: &TestNode) -> Result<Self, ProcessError> {
        std::thread::sleep(std::time::Duration::from_millis(node.build_ms));
        Ok(Recorder)
    }

    fn process(&mut self, node: &TestNode, input: InputContainer) -> Result<Output, ProcessError> {
        let started = unix_nanos();
        tracing::info!(patient = %input.patient_key(), instances = input.instance_count(), "test processor starts");
        let key = input.patient_key().to_string();
        let origin = input.origin().to_string();
        let group = input.group().1.unwrap_or("").to_string();
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
        let write_record = |ended: u128| {
            let record = format!(
                "pid={}\ncwd={}\ncount={}\norigin={origin}\ngroup={group}\n{}\nstart={started}\nend={ended}\n",
                std::process::id(),
                cwd.display(),
                uids.len(),
                uids.join("\n")
            );
            std::fs::write(&path, record)
        };
        write_record(0)?;
        if key.starts_with("SEGV") {
            // A real invalid memory access, as a buggy native library would make.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
        }
        if key.starts_with("NAP") {
            // Long enough for a test to act while it runs (kill the node, stop it).
            std::thread::sleep(std::time::Duration::from_secs(6));
        }
        if key.starts_with("EXIT3") {
            std::process::exit(3);
        }
        if key.starts_with("MEM") {
            // Touch far more than any limit a test sets.
            let mut hog: Vec<Vec<u8>> = Vec::new();
            for _ in 0..64 {
                hog.push(vec![1u8; 64 << 20]);
            }
            println!("allocated {} MiB", hog.len() * 64);
        }
        if key.starts_with("HANG") {
            // A grandchild that would outlive us, then a hang.
            let grandchild = std::process::Command::new("sleep").arg("1000").spawn()?;
            std::fs::write(
                node.out.join(format!("{name}.grandchild")),
                grandchild.id().to_string(),
            )?;
            std::thread::sleep(std::time::Duration::from_secs(1000));
        }
        if key.starts_with("STDIN") {
            // A program that reads its standard input to the end: it must see EOF at once,
            // not the job channel.
            let mut cat = std::process::Command::new("cat")
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let mut seen = Vec::new();
            if let Some(mut stdout) = cat.stdout.take() {
                std::io::Read::read_to_end(&mut stdout, &mut seen)?;
            }
            cat.wait()?;
            if !seen.is_empty() {
                return Err(ProcessError::new(format!(
                    "the subprocess read {} bytes from its standard input",
                    seen.len()
                )));
            }
        }
        if key.starts_with("ESCAPE") {
            // A grandchild in a session of its own (outside the child's process group)
            // that outlives everything, then a hang until the time limit.
            let grandchild = std::process::Command::new("setsid")
                .args(["sleep", "1000"])
                .spawn()?;
            std::fs::write(
                node.out.join(format!("{name}.grandchild")),
                grandchild.id().to_string(),
            )?;
            std::thread::sleep(std::time::Duration::from_secs(1000));
        }
        if key.starts_with("SELF") {
            // The node's own binary, started by the processor, is an ordinary program.
            let exe = std::env::current_exe()?;
            let run = std::process::Command::new(exe)
                .arg("--help")
                .stdin(std::process::Stdio::null())
                .output()?;
            let help = String::from_utf8_lossy(&run.stdout);
            let leaked: Vec<String> = std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("DICOMNODE_"))
                .collect();
            if !run.status.success() || !help.contains("--port") || !leaked.is_empty() {
                return Err(ProcessError::new(format!(
                    "the node's binary did not act as a program: {} {help:?}; markers left: {leaked:?}",
                    run.status
                )));
            }
        }
        if key.starts_with("CHATTY") {
            // 20 MiB on each stream, then a failure.
            let line = "z".repeat(1023);
            for i in 0..20 * 1024 {
                println!("{i} {line}");
                eprintln!("{i} {line}");
            }
            return Err(ProcessError::new("chatty and failed"));
        }
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
            write_record(unix_nanos())?;
            return Err(ProcessError::new(format!(
                "deliberate failure for patient {key}"
            )));
        }
        write_record(unix_nanos())?;
        Ok(NoOutput.into())
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn main() -> ExitCode {
    dicomnode_server::run(|| {
        let args = Args::parse();
        let config = args.node.config("TEST_NODE");
        (
            TestNode {
                out: args.out,
                enough: args.enough,
                build_ms: args.build_ms,
                group_by: args.group_by,
                ct_pt_quiet_ms: args.ct_pt_quiet_ms,
                max_wait_ms: args.max_wait_ms,
                max_wait_policy: args.max_wait_policy,
            },
            config,
        )
    })
}

//! `dicomnode`: what a user reaches for to test a node.
//!
//! ```text
//! dicomnode echo NODE@127.0.0.1:11112
//! dicomnode store NODE@127.0.0.1:11112 study/ more.dcm
//! ```

use anyhow::Context;
mod deidentify;
mod qr;
mod volume;

use clap::{Parser, Subcommand};
use dicomnode_server::deidentify::ProfileOption;
use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::part10::Part10;
use dicomnode_server::storage::disk::DiskLayout;
use dicomnode_server::uid::meta_uids;
use dicomnode_server::{Address, ClientTls};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    version,
    about = "Talk DICOM to a node or PACS (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE), look at its data directory, read files as volumes"
)]
struct Cli {
    /// The AE title to call from.
    #[arg(long, global = true, default_value = "DICOMNODE")]
    calling_ae_title: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a node with C-ECHO.
    Echo {
        /// The node: AE@host:port.
        address: Address,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Send DICOM files (folders are searched recursively) with C-STORE, as they are.
    Store {
        /// The node: AE@host:port.
        address: Address,
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Query a PACS with C-FIND (study root) and print the answers as a table.
    ///
    /// Keys as findscu takes them: `-k PatientID=P1 -k StudyDate=20200101-
    /// -k StudyDescription` (no value: asked back).
    Find {
        /// The PACS: AE@host:port.
        address: Address,
        /// PATIENT, STUDY, SERIES or IMAGE.
        #[arg(long, default_value = "STUDY")]
        level: dicomnode_server::retrieve::Level,
        /// A key: Keyword=value, gggg,eeee=value, or a keyword alone to ask it back.
        #[arg(long = "key", short = 'k')]
        keys: Vec<String>,
        /// One JSON object per answer instead of a table.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Retrieve one study with C-GET into a folder (one Part-10 file per instance).
    Get {
        #[command(flatten)]
        study: StudyArgs,
        /// The folder to write to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Ask a PACS to send one study to an AE title with C-MOVE.
    Move {
        #[command(flatten)]
        study: StudyArgs,
        /// The AE title the PACS sends to (it must know its host and port).
        #[arg(long)]
        destination: String,
    },
    /// Read DICOM files (folders recursively) as volumes, one per series, and print each
    /// one's geometry, units (HU, SUVbw, ...) and value statistics.
    Volume {
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Build a volume despite irregular slice spacing, listing the gaps.
        #[arg(long)]
        allow_gaps: bool,
        /// Keep PET values in Bq/ml instead of SUVbw.
        #[arg(long)]
        no_suv: bool,
    },
    /// De-identify DICOM files (folders recursively) by the DICOM Basic Application Level
    /// Confidentiality Profile (PS3.15 E.1) into OUT/<study>/<series>/<instance>.dcm, named
    /// by the new UIDs. Pixel data are not cleaned: instances marked BurnedInAnnotation YES
    /// are reported.
    Deidentify {
        /// A file or folder.
        input: PathBuf,
        /// The folder to write to.
        output: PathBuf,
        /// The profile (only `basic` exists).
        #[arg(long, default_value = "basic", value_parser = ["basic"])]
        profile: String,
        /// An option of the profile (also spelt --option), repeatable: retain-safe-private, retain-uids,
        /// retain-device-identity, retain-institution-identity,
        /// retain-patient-characteristics, retain-long-full-dates,
        /// retain-long-modified-dates, clean-descriptors, clean-structured-content,
        /// clean-graphics.
        #[arg(long = "retain", alias = "option", value_name = "OPTION")]
        options: Vec<ProfileOption>,
        /// The mapping file (created with a new key if absent): keeps the key and what was
        /// replaced, so that results can be re-identified. Keep it where identities may be.
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// A pseudonym for a patient, PATIENT_ID=PSEUDONYM (repeatable); others get one
        /// derived from the key.
        #[arg(long, value_name = "ID=PSEUDONYM", value_parser = parse_pseudonym)]
        pseudonym: Vec<(String, String)>,
        /// With --retain retain-safe-private: a private creator whose attributes are kept.
        #[arg(long, value_name = "CREATOR")]
        safe_private: Vec<String>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Re-identify files de-identified with a mapping file: UIDs and the patient's and
    /// study's identity come back.
    Reidentify {
        /// A file or folder.
        input: PathBuf,
        /// The folder to write to.
        output: PathBuf,
        /// The mapping file used to de-identify.
        #[arg(long)]
        mapping: PathBuf,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// What a node's data directory holds, without the node: patients waiting (files per
    /// input), batches in processing, the quarantine.
    Status {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the batches in a data directory's quarantine, with their failures.
    Quarantine {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Put quarantined batches back for processing (all, or those of the given patients).
    /// A running node picks them up within its maintenance interval; a stopped one at start.
    Requeue {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Patient keys (default: every quarantined batch).
        patients: Vec<String>,
    },
}

/// The study a C-GET or C-MOVE retrieves, and from where.
#[derive(clap::Args)]
struct StudyArgs {
    /// The PACS: AE@host:port.
    address: Address,
    /// The study's StudyInstanceUID.
    #[arg(long)]
    study: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

impl StudyArgs {
    /// The PACS's address (over TLS when asked) and the options to call it with.
    fn target(&self, calling: &str) -> (Address, dicomnode_server::retrieve::QrOptions) {
        let address = self.tls.apply_ref(self.address.clone());
        (address, qr_options(calling, self.timeout))
    }
}

/// TLS to the node.
#[derive(clap::Args)]
struct TlsArgs {
    /// Associate over TLS (with --tls-ca).
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// The CA certificates (PEM) trusted to sign the node's certificate.
    #[arg(long, requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// Our certificate (PEM), for a node that verifies clients. With --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The address, over TLS when asked.
    fn apply(self, address: Address) -> Address {
        self.apply_ref(address)
    }

    /// The address, over TLS when asked (the arguments kept).
    fn apply_ref(&self, address: Address) -> Address {
        match (self.tls, &self.tls_ca) {
            (true, Some(ca)) => address.with_tls(ClientTls {
                ca: ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            }),
            _ => address,
        }
    }
}

fn parse_pseudonym(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((id, pseudonym)) if !id.is_empty() && !pseudonym.is_empty() => {
            Ok((id.to_string(), pseudonym.to_string()))
        }
        _ => Err(format!("{text:?} is not PATIENT_ID=PSEUDONYM")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo { address, tls } => echo(&tls.apply(address), &cli.calling_ae_title),
        Command::Store {
            address,
            paths,
            quiet,
            tls,
        } => store(&tls.apply(address), &cli.calling_ae_title, &paths, quiet),
        Command::Volume {
            paths,
            allow_gaps,
            no_suv,
        } => volume::volume(&paths, allow_gaps, !no_suv),
        Command::Deidentify {
            input,
            output,
            profile: _,
            options,
            mapping,
            pseudonym,
            safe_private,
            quiet,
        } => deidentify::deidentify(deidentify::DeidentifyArgs {
            input,
            output,
            options,
            mapping,
            pseudonyms: pseudonym,
            safe_private,
            quiet,
        }),
        Command::Reidentify {
            input,
            output,
            mapping,
            quiet,
        } => deidentify::reidentify_files(&input, &output, &mapping, quiet),
        Command::Find {
            address,
            level,
            keys,
            json,
            timeout,
            tls,
        } => qr::find(
            &tls.apply(address),
            &qr_options(&cli.calling_ae_title, timeout),
            level,
            &keys,
            json,
        ),
        Command::Get { study, out } => {
            let (address, options) = study.target(&cli.calling_ae_title);
            qr::get(&address, &options, &study.study, &out, study.quiet)
        }
        Command::Move { study, destination } => {
            let (address, options) = study.target(&cli.calling_ae_title);
            qr::move_study(&address, &options, &study.study, &destination, study.quiet)
        }
        Command::Status { data_dir, json } => status(&data_dir, json),
        Command::Quarantine { data_dir } => quarantine(&data_dir),
        Command::Requeue { data_dir, patients } => requeue(&data_dir, &patients),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("dicomnode: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn qr_options(calling: &str, timeout: u64) -> dicomnode_server::retrieve::QrOptions {
    dicomnode_server::retrieve::QrOptions::new(calling)
        .timeout(std::time::Duration::from_secs(timeout))
}

fn echo(address: &Address, calling: &str) -> anyhow::Result<bool> {
    let start = Instant::now();
    let mut association = StoreAssociation::open(address, calling, &[])?;
    let code = association.echo()?;
    association.release()?;
    println!(
        "C-ECHO {address}: status {code:#06x} in {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(code == status::SUCCESS)
}

/// What happened to one file.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Result {
    Status(u16),
    NotSent(String),
}

fn store(address: &Address, calling: &str, paths: &[PathBuf], quiet: bool) -> anyhow::Result<bool> {
    // First pass: every file's SOP class and transfer syntax, for the presentation contexts.
    let mut files = Vec::new();
    let mut results: BTreeMap<PathBuf, Result> = BTreeMap::new();
    let mut contexts = Vec::new();
    for root in paths {
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            match Part10::read_meta(entry.path()) {
                Ok(meta) => {
                    let (sop_class, _, transfer_syntax) = meta_uids(&meta);
                    contexts.push((sop_class.to_string(), transfer_syntax.to_string()));
                    files.push(entry.into_path());
                }
                Err(error) => {
                    results.insert(entry.into_path(), Result::NotSent(error.to_string()));
                }
            }
        }
    }
    contexts.sort();
    contexts.dedup();
    if contexts.len() > 127 {
        anyhow::bail!(
            "{} SOP class and transfer syntax pairs: more than one association can propose",
            contexts.len()
        );
    }

    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut bytes = 0u64;
    if !files.is_empty() {
        let mut association = StoreAssociation::open(address, calling, &contexts)?;
        for path in files {
            let result = match Part10::read(&path) {
                Ok(file) => {
                    let (class, instance, ts) = file.uids();
                    bytes += file.dataset().len() as u64;
                    match association.store_encoded(class, instance, ts, file.dataset()) {
                        Ok(code) => Result::Status(code),
                        Err(error) => Result::NotSent(error.to_string()),
                    }
                }
                Err(error) => Result::NotSent(error.to_string()),
            };
            if let Result::NotSent(why) = &result {
                bar.println(format!("{}: {why}", path.display()));
            } else if let Result::Status(code) = result {
                if !status::is_stored(code) {
                    bar.println(format!(
                        "{}: refused with status {code:#06x}",
                        path.display()
                    ));
                }
            }
            results.insert(path, result);
            bar.inc(1);
        }
        association.release()?;
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for result in results.values() {
        let label = match result {
            Result::Status(code) if *code == status::SUCCESS => "success (0x0000)".to_string(),
            Result::Status(code) if status::is_stored(*code) => format!("warning ({code:#06x})"),
            Result::Status(code) => {
                failed += 1;
                format!("failure ({code:#06x})")
            }
            Result::NotSent(_) => {
                failed += 1;
                "not sent".to_string()
            }
        };
        *counts.entry(label).or_default() += 1;
    }
    println!(
        "C-STORE {address}: {} files, {:.1} MB in {:.2} s",
        results.len(),
        bytes as f64 / 1e6,
        elapsed
    );
    for (label, count) in counts {
        println!("  {count:6}  {label}");
    }
    Ok(failed == 0)
}

/// Opens a data directory for listing or requeueing: one that does not exist (a typing
/// error) is an error, never created.
fn open_data_dir(data_dir: &std::path::Path) -> anyhow::Result<DiskLayout> {
    Ok(DiskLayout::open_existing(data_dir)?)
}

fn status(data_dir: &std::path::Path, json: bool) -> anyhow::Result<bool> {
    let overview = open_data_dir(data_dir)?.overview()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&overview)?);
        return Ok(true);
    }
    println!("{} patients waiting", overview.patients_waiting.len());
    for patient in &overview.patients_waiting {
        let inputs: Vec<String> = patient
            .inputs
            .iter()
            .map(|(input, n)| format!("{input}: {n}"))
            .collect();
        println!(
            "  {:?}: {} (last instance {:.0} s ago)",
            patient.patient,
            inputs.join(", "),
            patient.seconds_since_last_instance
        );
    }
    println!("{} batches in processing", overview.processing.len());
    for batch in &overview.processing {
        println!(
            "  {:?}: {} files in {}",
            batch.patient,
            batch.files,
            batch.dir.display()
        );
    }
    println!("{} quarantined batches", overview.quarantined.len());
    for batch in &overview.quarantined {
        println!(
            "  {:?}: {} files in {}",
            batch.patient_key,
            batch.files,
            batch.dir.display()
        );
        for line in &batch.failures {
            println!("      {line}");
        }
    }
    Ok(true)
}

fn quarantine(data_dir: &std::path::Path) -> anyhow::Result<bool> {
    let batches = open_data_dir(data_dir)?.quarantined()?;
    for batch in &batches {
        println!(
            "{:?}: {} files in {}",
            batch.patient_key,
            batch.files,
            batch.dir.display()
        );
        for line in &batch.failures {
            println!("    {line}");
        }
    }
    println!("{} quarantined batches", batches.len());
    Ok(true)
}

fn requeue(data_dir: &std::path::Path, patients: &[String]) -> anyhow::Result<bool> {
    let layout = open_data_dir(data_dir)?;
    let mut moved = 0;
    for batch in layout.quarantined()? {
        if !patients.is_empty() && !patients.contains(&batch.patient_key) {
            continue;
        }
        layout
            .requeue_quarantined(&batch)
            .with_context(|| format!("cannot requeue {}", batch.dir.display()))?;
        println!("requeued {:?}", batch.patient_key);
        moved += 1;
    }
    println!("{moved} batches requeued");
    Ok(moved > 0 || patients.is_empty())
}

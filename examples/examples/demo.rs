//! The end-to-end demo: no set-up, no external tools.
//!
//! Starts two nodes on free loopback ports: `plus_one` (adds 1 to every CT pixel value
//! and sends the derived series on) and a receiving `store_node` (writes what it gets to
//! files). Generates CT series for two patients with the project's generator, sends them to
//! `plus_one` with the project's C-STORE SCU, waits for the derived series to arrive at the
//! receiver, checks them (values +1, new UIDs, same patient and study) and prints a summary.
//!
//! ```text
//! cargo run --release --example demo
//! RUST_LOG=info cargo run --release --example demo   # with the nodes' logs and child timings
//! ```

use dicomnode_examples::plus_one::PlusOneNode;
use dicomnode_examples::store::StoreNode;
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::input::value_of;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::{
    pixels, Address, ChildEntry, DicomInstance, Node, NodeConfig, Pipeline, RetryPolicy,
};
use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PATIENTS: [&str; 2] = ["DEMO-PATIENT-1", "DEMO-PATIENT-2"];
const SLICES: u32 = 50;

fn main() -> ExitCode {
    // Both nodes re-execute this binary for each patient: that child runs here and exits.
    if let Some(code) = dicomnode_server::child_entry_among(&[
        ChildEntry::of::<PlusOneNode>(),
        ChildEntry::of::<StoreNode>(),
    ]) {
        return code;
    }
    dicomnode_server::init_logging_at("warn");
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a node on a free loopback port, serving on a thread of its own.
fn start<P: Pipeline>(pipeline: P, ae_title: &str) -> Result<Address, Box<dyn Error>> {
    let node = Node::bind(
        pipeline,
        NodeConfig::new(ae_title).bind("127.0.0.1:0".parse()?),
    )?;
    let address = Address {
        tls: None,
        ae_title: ae_title.into(),
        host: "127.0.0.1".into(),
        port: node.local_addr()?.port(),
    };
    std::thread::spawn(move || node.serve());
    Ok(address)
}

fn demo() -> Result<(), Box<dyn Error>> {
    let out = tempfile::Builder::new()
        .prefix("dicomnode-demo-")
        .tempdir()?
        .keep();
    let receiver = start(StoreNode { out: out.clone() }, "RECEIVER")?;
    let plus_one = start(
        PlusOneNode {
            destination: receiver.clone(),
            calling_ae_title: "PLUS_ONE".into(),
            slices: None,
            retry: RetryPolicy::new(3, Duration::from_secs(1)),
        },
        "PLUS_ONE",
    )?;
    println!("nodes: {plus_one} -> {receiver}");

    let mut sent: Vec<DicomInstance> = Vec::new();
    for patient in PATIENTS {
        sent.extend(SyntheticSeries::ct(patient, SLICES).build()?);
    }
    println!(
        "generated {} CT instances (512x512, 16-bit) for {} patients",
        sent.len(),
        PATIENTS.len()
    );

    let start_time = Instant::now();
    let contexts = vec![(
        "1.2.840.10008.5.1.4.1.1.2".to_string(),
        "1.2.840.10008.1.2.1".to_string(),
    )];
    for patient in PATIENTS {
        let mut association = StoreAssociation::open(&plus_one, "DEMO_SCU", &contexts)?;
        for instance in sent.iter().filter(|i| text(i, tags::PATIENT_ID) == patient) {
            let status = association.store(instance)?;
            if status != 0 {
                return Err(format!("C-STORE answered {status:#06x}").into());
            }
        }
        association.release()?;
    }
    let sent_in = start_time.elapsed();
    println!(
        "sent {} instances to PLUS_ONE in {:.0} ms",
        sent.len(),
        ms(sent_in)
    );

    // plus_one's child derives and sends each patient's series; the receiver's child
    // writes it to files once its association is released.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first_seen = None;
    let files = loop {
        let files = dicom_files(&out);
        if first_seen.is_none() && !files.is_empty() {
            first_seen = Some(start_time.elapsed());
        }
        if files.len() >= sent.len() {
            break files;
        }
        if Instant::now() > deadline {
            return Err(
                format!("timed out: {} of {} derived files", files.len(), sent.len()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let done_in = start_time.elapsed();

    check(&sent, &files)?;
    println!(
        "received {} derived instances at RECEIVER: first {:.0} ms, all {:.0} ms after the first C-STORE ({:.0} ms after the last release)",
        files.len(),
        ms(first_seen.unwrap_or(done_in)),
        ms(done_in),
        ms(done_in - sent_in)
    );
    println!("checked: every pixel value +1 (Hounsfield units), new series and instance UIDs, same patient and study");
    println!("output: {}", out.display());
    Ok(())
}

/// The finished `.dcm` files under `dir`.
fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                found.push(path);
            }
        }
    }
    found
}

fn check(sent: &[DicomInstance], files: &[PathBuf]) -> Result<(), Box<dyn Error>> {
    let key = |i: &DicomInstance| (text(i, tags::PATIENT_ID), text(i, tags::INSTANCE_NUMBER));
    let originals: HashMap<_, &DicomInstance> = sent.iter().map(|i| (key(i), i)).collect();
    for path in files {
        let derived = dicomnode_server::dicom_object::open_file(path)?;
        let original = originals
            .get(&key(&derived))
            .ok_or_else(|| format!("{}: matches no instance sent", path.display()))?;
        for tag in [tags::STUDY_INSTANCE_UID, tags::PATIENT_NAME] {
            if text(original, tag) != text(&derived, tag) {
                return Err(format!("{}: {tag} changed", path.display()).into());
            }
        }
        for tag in [tags::SERIES_INSTANCE_UID, tags::SOP_INSTANCE_UID] {
            if text(original, tag) == text(&derived, tag) {
                return Err(format!("{}: {tag} not new", path.display()).into());
            }
        }
        let before = pixels::rescaled(original)?;
        let after = pixels::rescaled(&derived)?;
        if before.len() != after.len() || before.iter().zip(&after).any(|(b, a)| *a != b + 1.0) {
            return Err(
                format!("{}: pixel values are not the originals + 1", path.display()).into(),
            );
        }
    }
    Ok(())
}

fn text(obj: &DicomInstance, tag: dicomnode_server::dicom_core::Tag) -> String {
    value_of(obj, tag).unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

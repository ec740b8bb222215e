//! The end-to-end demo: no set-up, no external tools.
//!
//! Starts a `store_node` pipeline on a free loopback port, generates two patients' CT and
//! MR series with the project's generator, sends them with the project's C-STORE SCU,
//! waits until each patient's child has written its files, checks them against what was
//! sent, and prints a summary.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use dicomnode_examples::store::StoreNode;
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::{Modality, SyntheticSeries};
use dicomnode_server::{DicomInstance, FileOutput, Node, NodeConfig};
use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PATIENTS: [&str; 2] = ["DEMO-PATIENT-1", "DEMO-PATIENT-2"];

fn main() -> ExitCode {
    // The node re-executes this binary for each patient: that child runs here and exits.
    if let Some(code) = dicomnode_server::child_entry::<StoreNode>() {
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

fn demo() -> Result<(), Box<dyn Error>> {
    let out = tempfile::Builder::new()
        .prefix("dicomnode-demo-")
        .tempdir()?
        .keep();
    let node = Node::bind(
        StoreNode { out: out.clone() },
        NodeConfig::new("DEMO_NODE").bind("127.0.0.1:0".parse()?),
    )?;
    let address = dicomnode_server::Address {
        ae_title: "DEMO_NODE".into(),
        host: "127.0.0.1".into(),
        port: node.local_addr()?.port(),
    };
    std::thread::spawn(move || node.serve());
    println!(
        "node DEMO_NODE listening on {}:{}",
        address.host, address.port
    );

    let mut sent: Vec<DicomInstance> = Vec::new();
    for patient in PATIENTS {
        let ct = SyntheticSeries::ct(patient, 40);
        let mr = ct.next_series(Modality::Mr, 20);
        sent.extend(ct.build()?);
        sent.extend(mr.build()?);
    }
    println!(
        "generated {} instances (512x512, 16-bit) for {} patients",
        sent.len(),
        PATIENTS.len()
    );

    let start = Instant::now();
    for patient in PATIENTS {
        let instances: Vec<&DicomInstance> = sent
            .iter()
            .filter(|i| text(i, tags::PATIENT_ID) == patient)
            .collect();
        let mut contexts: Vec<(String, String)> = instances
            .iter()
            .map(|i| {
                (
                    i.meta()
                        .media_storage_sop_class_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                    i.meta()
                        .transfer_syntax()
                        .trim_end_matches('\0')
                        .to_string(),
                )
            })
            .collect();
        contexts.sort();
        contexts.dedup();
        let mut association = StoreAssociation::open(&address, "DEMO_SCU", &contexts)?;
        for instance in instances {
            let status = association.store(instance)?;
            if status != 0 {
                return Err(format!("C-STORE answered {status:#06x}").into());
            }
        }
        association.release()?;
    }
    let sent_in = start.elapsed();
    println!("sent {} instances in {:.0} ms", sent.len(), ms(sent_in));

    // Each patient is processed in its own child once its association is released.
    let paths: Vec<_> = sent
        .iter()
        .map(|i| FileOutput::path_for(&out, i))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !paths.iter().all(|p| p.exists()) {
        if Instant::now() > deadline {
            return Err("timed out waiting for the node's output".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let done_in = start.elapsed();

    let mut checked = 0;
    for (instance, path) in sent.iter().zip(&paths) {
        check_equal(instance, path)?;
        checked += 1;
    }
    println!(
        "all {} files written by the patients' children {:.0} ms after the first C-STORE ({:.0} ms after the last release)",
        checked,
        ms(done_in),
        ms(done_in - sent_in)
    );
    println!("checked: every file equals the instance sent, pixel data byte for byte");
    println!("output: {}", out.display());
    Ok(())
}

fn check_equal(sent: &DicomInstance, path: &Path) -> Result<(), Box<dyn Error>> {
    let written = dicomnode_server::dicom_object::open_file(path)?;
    for tag in [
        tags::SOP_INSTANCE_UID,
        tags::PATIENT_ID,
        tags::SERIES_INSTANCE_UID,
    ] {
        if text(sent, tag) != text(&written, tag) {
            return Err(format!("{}: {tag} differs", path.display()).into());
        }
    }
    let a = sent.element(tags::PIXEL_DATA)?.to_bytes()?;
    let b = written.element(tags::PIXEL_DATA)?.to_bytes()?;
    if a != b {
        return Err(format!("{}: pixel data differs", path.display()).into());
    }
    Ok(())
}

fn text(obj: &DicomInstance, tag: dicomnode_server::dicom_core::Tag) -> String {
    dicomnode_server::input::value_of(obj, tag).unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

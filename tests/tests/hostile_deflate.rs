//! A deflate bomb: a deflated data set of about a hundred kilobytes whose header (the part
//! before Pixel Data) inflates to 128 MiB. The node reads at most 64 MiB of an inflated
//! header, so it refuses the instance with a failure status, its memory stays well below
//! what the bomb would take, and it goes on storing.

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicomnode_server::dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::NodeProcess;
use std::path::Path;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const BOMB: usize = 128 << 20;

fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[test]
fn a_deflated_header_bomb_is_refused_within_bounded_memory() {
    let out = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_test_node")),
        &[
            "--port",
            "0",
            "--ae-title",
            "TEST_NODE",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    let mut bomb = SyntheticSeries::ct("BOMB", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    bomb.put(DataElement::new(Tag(0x0009, 0x0010), VR::LO, "BOMB"));
    bomb.put(DataElement::new(
        Tag(0x0009, 0x1000),
        VR::OB,
        PrimitiveValue::U8(std::iter::repeat_n(0u8, BOMB).collect()),
    ));
    let mut deflated = Vec::new();
    let ts = TransferSyntaxRegistry.get(DEFLATED).unwrap();
    bomb.write_dataset_with_ts(&mut deflated, ts).unwrap();
    assert!(deflated.len() < BOMB / 100, "{} bytes", deflated.len());
    let uid =
        dicomnode_server::uid::trim_uid(bomb.meta().media_storage_sop_instance_uid()).to_string();
    let address = node.address("TEST_NODE");
    let mut association = StoreAssociation::open(
        &address,
        "BOMBER",
        &[(CT.to_string(), DEFLATED.to_string())],
    )
    .unwrap();
    let answer = association
        .store_encoded(CT, &uid, DEFLATED, &deflated)
        .unwrap();
    association.release().unwrap();
    assert!(
        !status::is_stored(answer),
        "the bomb was stored: {answer:#06x}"
    );
    let peak = peak_rss(node.pid());
    println!("node peak RSS after the bomb: {} MiB", peak >> 20);
    assert!(peak < (BOMB as u64), "peak {} MiB", peak >> 20);
    let log = node.log();
    assert!(log.contains("C-STORE refused"), "{log}");
    assert!(
        log.contains("header inflates to"),
        "the reason is logged: {log}"
    );
    // And the node goes on storing.
    let ok = SyntheticSeries::ct("AFTER-BOMB", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    let mut association = StoreAssociation::open(
        &address,
        "SCU",
        &[(CT.to_string(), EXPLICIT_LE.to_string())],
    )
    .unwrap();
    assert_eq!(association.store(&ok).unwrap(), status::SUCCESS);
    association.release().unwrap();
}

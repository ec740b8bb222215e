//! Writing received instances into a data directory: a full disk, the watermark, a 1 GiB
//! instance, concurrent first instances of a patient, a data set cut off mid-transfer.

use dicomnode_server::dicom_core::{DataElement, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dimse::status;
use dicomnode_server::dispatch::StoreAssociation;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::uid::trim_uid;
use dicomnode_tests::{
    ct_contexts, dcmtk, files_under, raw_ct_association, run, store_all, store_pdu,
    wait_for_instance_files, NodeProcess,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn test_node(out: &Path, data: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--port",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// Starts the test node with its data directory on a 1 MiB tmpfs, in a mount namespace of
/// its own (the test reads the directory through /proc/<pid>/root).
fn node_on_small_disk(out: &Path, data: &Path, watermark: &str) -> NodeProcess {
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{data}' && exec '{exe}' --port 0 --out '{out}' --data-dir '{data}' --enough 1000 --disk-watermark {watermark}",
        data = data.display(),
        exe = env!("CARGO_BIN_EXE_test_node"),
        out = out.display(),
    );
    NodeProcess::start(
        Path::new("/usr/bin/unshare"),
        &["--mount", "sh", "-c", &script],
    )
}

#[test]
fn a_full_disk_answers_out_of_resources_and_the_node_keeps_serving() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = node_on_small_disk(out.path(), data.path(), "1.0");
    let big = SyntheticSeries::ct("FULL-1", 3)
        .size(512, 512)
        .build()
        .unwrap();
    let statuses = store_all(&node, &big);
    assert_eq!(statuses[0], status::SUCCESS);
    assert!(
        statuses[1..].contains(&status::OUT_OF_RESOURCES),
        "{statuses:x?}"
    );
    node.wait_for_log("No space left on device", WAIT);
    // Nothing half-written is left, and the node still answers.
    let seen = PathBuf::from(format!(
        "/proc/{}/root{}",
        node.pid(),
        data.path().display()
    ));
    assert!(
        files_under(&seen.join("tmp")).is_empty(),
        "{:?}",
        files_under(&seen.join("tmp"))
    );
    let mut association =
        StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts()).unwrap();
    assert_eq!(association.echo().unwrap(), status::SUCCESS);
    let small = SyntheticSeries::ct("FULL-2", 1).size(8, 8).build().unwrap();
    assert_eq!(association.store(&small[0]).unwrap(), status::SUCCESS);
    association.release().unwrap();
}

#[test]
fn above_the_disk_watermark_associations_are_refused_transiently() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = node_on_small_disk(out.path(), data.path(), "0.3");
    let big = SyntheticSeries::ct("MARK-1", 1)
        .size(512, 512)
        .build()
        .unwrap();
    assert_eq!(store_all(&node, &big), vec![status::SUCCESS]);
    let refused = StoreAssociation::open(&node.address("TEST_NODE"), "SCU", &ct_contexts());
    let error = refused.err().expect("the association is refused");
    assert_eq!(
        error.kind(),
        dicomnode_server::SendFailure::Transient,
        "{error}"
    );
    node.wait_for_log("association refused (transient)", WAIT);
}

#[test]
fn a_one_gib_instance_is_streamed_to_disk_not_held_in_memory() {
    use dicomnode_server::dicom_object::meta::FileMetaTableBuilder;
    use std::io::Write;

    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    // A 16384 x 32768 16-bit image: 1 GiB of (sparse, zero) pixel data.
    let mut header = SyntheticSeries::ct("HUGE-1", 1)
        .size(8, 8)
        .build()
        .unwrap()
        .remove(0);
    header.put(DataElement::new(
        tags::ROWS,
        VR::US,
        dicomnode_server::dicom_core::PrimitiveValue::from(16384u16),
    ));
    header.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        dicomnode_server::dicom_core::PrimitiveValue::from(32768u16),
    ));
    header.remove_element(tags::PIXEL_DATA);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.1")
        .media_storage_sop_class_uid(header.meta().media_storage_sop_class_uid())
        .media_storage_sop_instance_uid(header.meta().media_storage_sop_instance_uid())
        .build()
        .unwrap();
    let path = input.path().join("huge.dcm");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&[0u8; 128]).unwrap();
    file.write_all(b"DICM").unwrap();
    meta.write(&mut file).unwrap();
    header.write_dataset(&mut file).unwrap();
    const SIZE: u32 = 1 << 30;
    file.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])
        .unwrap();
    file.write_all(&SIZE.to_le_bytes()).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + u64::from(SIZE)).unwrap();
    drop(file);

    let mut node = test_node(out.path(), data.path(), &["--enough", "2"]);
    let (output, text) = run({
        let mut c = dcmtk("storescu");
        c.args([
            "-v",
            "-aec",
            "TEST_NODE",
            "127.0.0.1",
            &node.port.to_string(),
        ])
        .arg(&path);
        c
    });
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Received Store Response (Success)"), "{text}");
    node.wait_for_log("association ended", WAIT);
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "peak RSS of the node while receiving 1 GiB: {} MiB",
        peak_kib / 1024
    );
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB");
    let stored: u64 = files_under(&data.path().join("patients"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        stored > u64::from(SIZE),
        "the instance is on disk ({stored} bytes)"
    );
}

#[test]
fn concurrent_first_instances_of_a_new_patient_are_all_stored() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &["--enough", "1000"]);
    let address = node.address("TEST_NODE");
    let series = SyntheticSeries::ct("TOGETHER", 8)
        .size(8, 8)
        .build()
        .unwrap();
    let threads: Vec<_> = series
        .chunks(2)
        .map(|chunk| {
            let (address, chunk) = (address.clone(), chunk.to_vec());
            std::thread::spawn(move || {
                let mut association =
                    StoreAssociation::open(&address, "SCU", &ct_contexts()).unwrap();
                let statuses: Vec<u16> = chunk
                    .iter()
                    .map(|i| association.store(i).unwrap())
                    .collect();
                association.release().unwrap();
                statuses
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), vec![status::SUCCESS; 2]);
    }
    node.wait_for_count("association ended", 4, WAIT);
    // Logged, their files are written once the node is quiet (a checkpoint).
    wait_for_instance_files(&data.path().join("patients"), 8, WAIT);
}

#[test]
fn a_data_set_cut_off_by_a_dropped_connection_leaves_no_file() {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut node = test_node(out.path(), data.path(), &[]);
    // Large enough that its first half goes to the write-ahead log as parts.
    let instance = &SyntheticSeries::ct("CUT-1", 1)
        .size(512, 512)
        .build()
        .unwrap()[0];
    let mut dataset = Vec::new();
    instance.write_dataset(&mut dataset).unwrap();
    let mut raw = raw_ct_association(&node, "CUTTER");
    let uid = trim_uid(instance.meta().media_storage_sop_instance_uid()).to_string();
    // Two fragments, 300 KB of about 512 KB: the data set never ends.
    let second = dataset[200_000..300_000].to_vec();
    dataset.truncate(200_000);
    raw.send(&store_pdu(1, &uid, dataset, false)).unwrap();
    raw.send(&dicomnode_server::dicom_ul::Pdu::PData {
        data: vec![dicomnode_server::dicom_ul::pdu::PDataValue {
            presentation_context_id: 1,
            value_type: dicomnode_server::dicom_ul::pdu::PDataValueType::Data,
            is_last: false,
            data: second,
        }],
    })
    .unwrap();
    // Let the node take them in, then drop the connection.
    std::thread::sleep(Duration::from_millis(300));
    drop(raw);
    node.wait_for_log("association ended: connection lost", WAIT);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        files_under(&data.path().join("tmp")).is_empty(),
        "no partial file"
    );
    assert!(files_under(&data.path().join("patients")).is_empty());
    // Nor does a restart bring it back from the log.
    drop(node);
    let mut node = test_node(out.path(), data.path(), &[]);
    let restored = node.wait_for_log("data directory restored", WAIT);
    assert!(restored.contains("replayed_from_log=0"), "{restored}");
    assert!(restored.contains("instances=0"), "{restored}");
    assert!(files_under(&data.path().join("patients")).is_empty());
}

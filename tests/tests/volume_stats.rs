//! The volume_stats example as a user runs it: a node receives a series per patient,
//! each in one transfer syntax proposed alone by DCMTK's storescu, and writes the
//! volume's geometry and statistics. Expected values come from the reference decoders'
//! output (DCMTK, GDCM), read here with plain arithmetic.

use dicomnode_server::dicom_core::{DataElement, PrimitiveValue, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::input::value_of;
use dicomnode_server::pixels;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::codecs::{tool, SYNTAXES};
use dicomnode_tests::{dcmtk, example_exe, run, NodeProcess};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A storescu configuration with one profile per transfer syntax, each proposing CT and
/// MR storage in that syntax alone.
fn storescu_config(dir: &Path) -> PathBuf {
    let mut text = String::from("[[TransferSyntaxes]]\n");
    for s in SYNTAXES {
        let (name, uid) = (s.name, s.uid);
        text.push_str(&format!("[TS_{name}]\nTransferSyntax1 = {uid}\n"));
    }
    text.push_str("\n[[PresentationContexts]]\n");
    for name in SYNTAXES.iter().map(|s| s.name) {
        text.push_str(&format!(
            "[PC_{name}]\nPresentationContext1 = CTImageStorage\\TS_{name}\nPresentationContext2 = MRImageStorage\\TS_{name}\nPresentationContext3 = PositronEmissionTomographyImageStorage\\TS_{name}\n"
        ));
    }
    text.push_str("\n[[Profiles]]\n");
    for name in SYNTAXES.iter().map(|s| s.name) {
        text.push_str(&format!(
            "[ONLY_{name}]\nPresentationContexts = PC_{name}\n"
        ));
    }
    let path = dir.join("storescu.cfg");
    std::fs::write(&path, text).unwrap();
    path
}

/// Min, max and mean of the real-world values of native files, by plain arithmetic.
fn stats(paths: &[PathBuf]) -> (f64, f64, f64) {
    let (mut min, mut max, mut sum, mut n) = (f64::MAX, f64::MIN, 0.0, 0usize);
    for path in paths {
        let obj = open_file(path).unwrap();
        let number = |tag| value_of(&obj, tag).and_then(|v| v.parse::<f64>().ok());
        let (slope, intercept) = (
            number(tags::RESCALE_SLOPE).unwrap_or(1.0),
            number(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        );
        for v in pixels::stored(&obj).unwrap() {
            let v = f64::from(v) * slope + intercept;
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
    }
    (min, max, sum / n as f64)
}

#[test]
fn volume_stats_takes_every_syntax_each_proposed_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = storescu_config(dir.path());
    let mut node = NodeProcess::start(
        &example_exe("volume_stats"),
        &["--port", "0", "--out", out.to_str().unwrap()],
    );
    let mut expected = Vec::new();
    for s in SYNTAXES {
        let (name, uid, encode, decode) = (&s.name, &s.uid, s.encode, s.decode);
        // 8-bit data for the 8-bit JPEG processes; unsigned 16-bit otherwise.
        let eight_bit = &matches!(s.name, "jpeg-baseline" | "jpeg-extended");
        let lossless = &s.tolerance.is_none();
        let patient = format!("VS-{name}");
        let series = SyntheticSeries::ct(&patient, 4).size(32, 32);
        let native_dir = dir.path().join(format!("{name}-native"));
        std::fs::create_dir_all(&native_dir).unwrap();
        let mut sent = Vec::new();
        let mut references = Vec::new();
        for (k, mut obj) in series.build().unwrap().into_iter().enumerate() {
            let stored = pixels::stored(&obj).unwrap();
            // Unsigned stored values (CT with intercept -1024, as many scanners write),
            // so that near-lossless JPEG-LS takes them; 8 bits for lossy JPEG (as MR).
            let (bits, data) = if *eight_bit {
                obj.put(DataElement::new(tags::MODALITY, VR::CS, "MR"));
                obj.put(DataElement::new(
                    tags::SOP_CLASS_UID,
                    VR::UI,
                    "1.2.840.10008.5.1.4.1.1.4",
                ));
                obj.meta_mut().media_storage_sop_class_uid = "1.2.840.10008.5.1.4.1.1.4".into();
                obj.remove_element(tags::RESCALE_INTERCEPT);
                obj.remove_element(tags::RESCALE_SLOPE);
                obj.remove_element(tags::RESCALE_TYPE);
                (
                    8u16,
                    PrimitiveValue::U8(stored.iter().map(|&v| (v / 5) as u8).collect()),
                )
            } else {
                (
                    16u16,
                    PrimitiveValue::U16(stored.iter().map(|&v| v as u16).collect()),
                )
            };
            for (tag, value) in [
                (tags::BITS_ALLOCATED, bits),
                (tags::BITS_STORED, bits),
                (tags::HIGH_BIT, bits - 1),
                (tags::PIXEL_REPRESENTATION, 0),
            ] {
                obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
            }
            let vr = if bits == 8 { VR::OB } else { VR::OW };
            obj.put(DataElement::new(tags::PIXEL_DATA, vr, data));
            let native = native_dir.join(format!("{k}.dcm"));
            obj.write_to_file(&native).unwrap();
            let encoded = native_dir.join(format!("{k}.{name}.dcm"));
            tool(encode, &native, &encoded);
            let encoded_ts = open_file(&encoded)
                .unwrap()
                .meta()
                .transfer_syntax()
                .trim_end_matches('\0')
                .to_string();
            assert_eq!(&encoded_ts, uid);
            let reference = native_dir.join(format!("{k}.ref.dcm"));
            tool(decode, &encoded, &reference);
            sent.push(encoded);
            references.push(reference);
        }
        let mut storescu = dcmtk("storescu");
        storescu
            .args(["-aec", "VOLUME_STATS", "-xf"])
            .arg(&config)
            .arg(format!("ONLY_{name}"))
            .args(["127.0.0.1", &node.port.to_string()])
            .args(&sent);
        let (output, text) = run(storescu);
        assert!(output.status.success(), "storescu for {name}: {text}");
        expected.push((
            patient,
            series.series_uid.clone(),
            stats(&references),
            *eight_bit,
            *lossless,
            *name,
        ));
    }
    let pet = SyntheticSeries::pet("VS-PET", 3).size(16, 16);
    let pet_paths = pet.write_to(&dir.path().join("pet")).unwrap();
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "VOLUME_STATS", "127.0.0.1", &node.port.to_string()])
        .args(&pet_paths);
    let (output, text) = run(storescu);
    assert!(output.status.success(), "storescu for PET: {text}");
    node.wait_for_count("wrote ", expected.len() + 1, Duration::from_secs(120));

    for (patient, series_uid, (min, max, mean), eight_bit, lossless, name) in expected {
        let path = out.join(format!("{patient}.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let entry = &json[&series_uid];
        assert_eq!(
            entry["shape"],
            serde_json::json!([4, 32, 32]),
            "{name}: {json}"
        );
        assert_eq!(
            entry["spacing"],
            serde_json::json!([2.5, 0.9765625, 0.9765625]),
            "{name}"
        );
        assert_eq!(
            entry["origin"],
            serde_json::json!([-250.0, -250.0, 2.5]),
            "{name}"
        );
        assert_eq!(
            entry["units"],
            if eight_bit { "US" } else { "HU" },
            "{name}"
        );
        assert_eq!(
            entry["modality"],
            if eight_bit { "MR" } else { "CT" },
            "{name}"
        );
        let got = |k: &str| entry[k].as_f64().unwrap();
        // Lossless: exactly the reference decoder's values; lossy: ours and the
        // reference's decoders may round differently.
        let (tolerance, mean_tolerance) = if lossless { (0.0, 1e-4) } else { (3.0, 0.5) };
        assert!(
            (got("min") - min).abs() <= tolerance,
            "{name}: min {} vs {min}",
            got("min")
        );
        assert!(
            (got("max") - max).abs() <= tolerance,
            "{name}: max {} vs {max}",
            got("max")
        );
        assert!(
            (got("mean") - mean).abs() <= mean_tolerance,
            "{name}: mean {} vs {mean}",
            got("mean")
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("VS-PET.json")).unwrap()).unwrap();
    let entry = &json[&pet.series_uid];
    assert_eq!(entry["units"], "SUVbw", "{json}");
    let (min, max, mean) = stats(&pet_paths);
    // Bq/ml to SUVbw: 75 kg, 370 MBq decayed over the hour from injection to series start.
    let factor = 75_000.0 / (370e6 * 0.5f64.powf(3600.0 / 6586.2));
    for (key, want) in [
        ("min", min * factor),
        ("max", max * factor),
        ("mean", mean * factor),
    ] {
        let got = entry[key].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
            "PET {key}: {got} vs {want}"
        );
    }
}

//! Decoding against real encoders and decoders: every input is generated here, encoded by
//! DCMTK (dcmconv, dcmcrle, dcmcjpeg, dcmcjpls) or GDCM (gdcmconv, JPEG 2000), and our
//! decode of the encoded file is compared with the original (lossless syntaxes: bit for
//! bit) and with the reference tool's own decode (dcmdrle, dcmdjpeg, dcmdjpls,
//! gdcmconv --raw).

use dicomnode_server::dicom_core::{DataElement, PrimitiveValue, VR};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::pixels::{self, Image, Photometric, PixelError, Samples};
use dicomnode_server::series::DerivedSeries;
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_server::DicomInstance;
use dicomnode_tests::codecs::{syntax, tool, SYNTAXES};
use dicomnode_tests::{dcmtk, run};
use std::path::PathBuf;

fn with_pixels(
    mut obj: DicomInstance,
    bits: u16,
    stored: u16,
    signed: bool,
    data: PrimitiveValue,
) -> DicomInstance {
    let vr = if bits == 8 { VR::OB } else { VR::OW };
    for (tag, value) in [
        (tags::BITS_ALLOCATED, bits),
        (tags::BITS_STORED, stored),
        (tags::HIGH_BIT, stored - 1),
        (tags::PIXEL_REPRESENTATION, u16::from(signed)),
    ] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
    }
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, data));
    obj
}

/// The generated inputs, by name: signed 16-bit CT (16 and 12 bits stored), unsigned
/// 16-bit MR, 8-bit grey, RGB (planar configuration 0 and 1), and an enhanced
/// multi-frame MR of three frames.
fn inputs() -> Vec<(&'static str, DicomInstance)> {
    let ct = SyntheticSeries::ct("IMG", 1)
        .size(64, 64)
        .build()
        .unwrap()
        .remove(0);
    let mr_series = SyntheticSeries::mr("IMG", 3).size(64, 64);
    let mr = mr_series.build().unwrap().remove(0);
    let ct_values = pixels::stored(&ct).unwrap();
    let ct12 = with_pixels(
        ct.clone(),
        16,
        12,
        true,
        PrimitiveValue::I16(ct_values.iter().map(|&v| (v - 1024) as i16).collect()),
    );
    let grey8 = with_pixels(
        mr.clone(),
        8,
        8,
        false,
        PrimitiveValue::U8(
            pixels::stored(&mr)
                .unwrap()
                .iter()
                .map(|&v| (v / 5) as u8)
                .collect(),
        ),
    );
    let (rows, columns) = (48u16, 64u16);
    let rgb: Vec<u8> = (0..usize::from(rows) * usize::from(columns))
        .flat_map(|i| {
            let (r, c) = (i / usize::from(columns), i % usize::from(columns));
            [(r * 5) as u8, (c * 4) as u8, ((r + c) * 2) as u8]
        })
        .collect();
    let sc = DerivedSeries::new("Colour", 5)
        .secondary_capture(&ct, &rgb, rows, columns)
        .unwrap();
    let plane = usize::from(rows) * usize::from(columns);
    let planar: Vec<u8> = (0..3)
        .flat_map(|k| rgb.iter().skip(k).step_by(3).copied().collect::<Vec<_>>())
        .collect();
    assert_eq!(planar.len(), 3 * plane);
    let mut sc_planar = sc.clone();
    sc_planar.put(DataElement::new(
        tags::PLANAR_CONFIGURATION,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    sc_planar.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(planar.into()),
    ));
    let multi = mr_series.build_enhanced().unwrap();
    vec![
        ("ct16", ct),
        ("ct12", ct12),
        ("mr16", mr),
        ("grey8", grey8),
        ("rgb", sc),
        ("rgb-planar", sc_planar),
        ("multiframe", multi),
    ]
}

/// Which (input, syntax) pairs the tools encode. JPEG baseline takes 8 bits, extended 8
/// or 12; DCMTK's near-lossless JPEG-LS refuses signed data.
fn pairs() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for input in [
        "ct16",
        "ct12",
        "mr16",
        "grey8",
        "rgb",
        "rgb-planar",
        "multiframe",
    ] {
        for s in SYNTAXES {
            let ok = match s.name {
                "jpeg-baseline" => matches!(input, "grey8" | "rgb"),
                // 12-bit JPEG is beyond the pure-Rust JPEG decoder: see the test below.
                "jpeg-extended" => input == "grey8",
                "jpeg-ls-near" => matches!(input, "mr16" | "grey8" | "rgb"),
                _ => true,
            };
            if ok {
                out.push((input, s.name));
            }
        }
    }
    out
}

fn transfer_syntax(obj: &DicomInstance) -> String {
    obj.meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string()
}

fn values(image: &Image) -> Vec<f64> {
    (0..image.samples.len())
        .map(|i| image.samples.get(i).unwrap())
        .collect()
}

fn max_difference(a: &Image, b: &Image) -> f64 {
    assert_eq!((a.rows, a.columns, a.frames), (b.rows, b.columns, b.frames));
    assert_eq!(a.samples.len(), b.samples.len());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_syntax_decodes_like_the_reference_decoders() {
    let dir = tempfile::tempdir().unwrap();
    let mut originals = std::collections::HashMap::new();
    for (name, obj) in inputs() {
        let path = dir.path().join(format!("{name}.dcm"));
        obj.write_to_file(&path).unwrap();
        originals.insert(name, (path, pixels::decode(&obj).unwrap()));
    }
    let mut checked = Vec::new();
    for (input, syntax_name) in pairs() {
        let s = syntax(syntax_name);
        let (path, original) = &originals[input];
        let encoded: PathBuf = dir.path().join(format!("{input}.{syntax_name}.dcm"));
        let reference: PathBuf = dir.path().join(format!("{input}.{syntax_name}.ref.dcm"));
        tool(s.encode, path, &encoded);
        tool(s.decode, &encoded, &reference);
        let encoded_obj = open_file(&encoded).unwrap();
        assert_eq!(
            transfer_syntax(&encoded_obj),
            s.uid,
            "{input} {syntax_name}"
        );
        let ours = pixels::decode(&encoded_obj).unwrap_or_else(|e| {
            panic!(
                "{input} in {syntax_name}: {}",
                dicomnode_server::ProcessError::from(e)
            )
        });
        let theirs = pixels::decode(&open_file(&reference).unwrap()).unwrap();
        if original.samples_per_pixel == 3 {
            assert_eq!(ours.photometric, Photometric::Rgb, "{input} {syntax_name}");
            assert_eq!(theirs.samples_per_pixel, 3);
        }
        match s.tolerance {
            None => {
                assert_eq!(
                    ours.samples, original.samples,
                    "{input} in {syntax_name} is not bit-exact"
                );
                assert_eq!(
                    ours.samples, theirs.samples,
                    "{input} in {syntax_name} differs from the reference decoder"
                );
            }
            Some(tolerance) => {
                let difference = max_difference(&ours, &theirs);
                assert!(
                    difference <= tolerance,
                    "{input} in {syntax_name}: ours and the reference differ by up to {difference}"
                );
            }
        }
        if syntax_name == "jpeg-ls-near" {
            assert!(
                max_difference(&ours, original) <= 2.0,
                "{input}: NEAR=2 exceeded"
            );
        }
        checked.push(format!("{input}/{syntax_name}"));
    }
    // Every pair above: 10 syntaxes for each of 7 inputs, plus the lossy ones that apply.
    assert_eq!(checked.len(), 76, "{checked:?}");
}

#[test]
fn frames_decode_one_at_a_time_as_they_do_together() {
    let dir = tempfile::tempdir().unwrap();
    let multi = inputs()
        .into_iter()
        .find(|(n, _)| *n == "multiframe")
        .unwrap()
        .1;
    let native = dir.path().join("multi.dcm");
    multi.write_to_file(&native).unwrap();
    for syntax_name in [
        "rle",
        "jpeg-ls-lossless",
        "j2k-lossless",
        "jpeg-lossless-sv1",
    ] {
        let encoded = dir.path().join(format!("multi.{syntax_name}.dcm"));
        tool(syntax(syntax_name).encode, &native, &encoded);
        let obj = open_file(&encoded).unwrap();
        let all = pixels::decode(&obj).unwrap();
        assert_eq!(all.frames, 3);
        let per_frame = all.frame_len();
        for frame in 0..3u32 {
            let one = pixels::decode_frame(&obj, frame).unwrap();
            assert_eq!(one.frames, 1);
            let want: Vec<f64> = values(&all)[frame as usize * per_frame..][..per_frame].to_vec();
            assert_eq!(values(&one), want, "{syntax_name} frame {frame}");
        }
        assert!(pixels::decode_frame(&obj, 3).is_err());
    }
}

#[test]
fn a_corrupt_codestream_is_an_error_naming_the_syntax_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ct) = inputs().remove(0);
    let native = dir.path().join("ct.dcm");
    ct.write_to_file(&native).unwrap();
    for syntax_name in [
        "rle",
        "jpeg-lossless-sv1",
        "jpeg-ls-lossless",
        "j2k-lossless",
    ] {
        let encoded = dir.path().join(format!("ct.{syntax_name}.dcm"));
        tool(syntax(syntax_name).encode, &native, &encoded);
        let mut bytes = std::fs::read(&encoded).unwrap();
        // Scramble the second half of the file: the codestream, not the header.
        let half = bytes.len() / 2;
        for (i, b) in bytes[half..].iter_mut().enumerate() {
            *b ^= (i as u8).wrapping_mul(37) | 1;
        }
        let corrupt = dir.path().join(format!("ct.{syntax_name}.bad.dcm"));
        std::fs::write(&corrupt, &bytes).unwrap();
        let Ok(obj) = open_file(&corrupt) else {
            continue; // the parser refused it already: fine
        };
        match pixels::decode(&obj) {
            Err(error @ PixelError::Decode { .. }) | Err(error @ PixelError::Truncated { .. }) => {
                let text = dicomnode_server::ProcessError::from(error)
                    .message()
                    .to_string();
                assert!(!text.is_empty());
                if text.starts_with("cannot decode") {
                    assert!(text.contains(syntax(syntax_name).uid), "{text}");
                }
            }
            Err(other) => panic!("{syntax_name}: unexpected error {other}"),
            // Some codecs resynchronise on damaged data: a wrong image, not a crash.
            Ok(image) => assert_eq!(image.samples.len(), 64 * 64),
        }
    }
}

#[test]
fn samples_keep_their_type() {
    let ins = inputs();
    let find = |n: &str| pixels::decode(&ins.iter().find(|(k, _)| *k == n).unwrap().1).unwrap();
    assert!(matches!(find("ct16").samples, Samples::I16(_)));
    assert!(matches!(find("mr16").samples, Samples::U16(_)));
    assert!(matches!(find("grey8").samples, Samples::U8(_)));
    let rgb = find("rgb");
    assert_eq!(rgb.samples, find("rgb-planar").samples);
    assert_eq!(rgb.samples.get(3 * 65), Some(5.0)); // row 1, column 1: red = 5
}

#[test]
fn twelve_bit_jpeg_extended_is_a_clear_error_naming_the_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let ct12 = inputs().into_iter().find(|(n, _)| *n == "ct12").unwrap().1;
    let native = dir.path().join("ct12.dcm");
    ct12.write_to_file(&native).unwrap();
    let encoded = dir.path().join("ct12.jpeg-extended.dcm");
    tool(syntax("jpeg-extended").encode, &native, &encoded);
    let error = pixels::decode(&open_file(&encoded).unwrap()).unwrap_err();
    let text = dicomnode_server::ProcessError::from(error)
        .message()
        .to_string();
    assert!(
        text.contains("JPEG Extended") && text.contains("1.2.840.10008.1.2.4.51"),
        "{text}"
    );
    assert!(text.contains("12"), "{text}");
}

#[test]
fn ybr_data_native_and_rle_become_the_rgb_the_reference_decoder_gives() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = inputs().into_iter().find(|(n, _)| *n == "rgb").unwrap().1;
    let native = dir.path().join("rgb.dcm");
    rgb.write_to_file(&native).unwrap();
    let jpeg = dir.path().join("rgb.jpeg.dcm");
    tool(syntax("jpeg-baseline").encode, &native, &jpeg);
    // dcmdjpeg's RGB is the reference; +cn keeps the decoded samples in YBR.
    let as_rgb = dir.path().join("rgb.ref.dcm");
    tool(&["/usr/bin/dcmdjpeg"], &jpeg, &as_rgb);
    let as_ybr = dir.path().join("ybr.dcm");
    tool(&["/usr/bin/dcmdjpeg", "+cn"], &jpeg, &as_ybr);
    let ybr_rle = dir.path().join("ybr.rle.dcm");
    tool(syntax("rle").encode, &as_ybr, &ybr_rle);
    let reference = pixels::decode(&open_file(&as_rgb).unwrap()).unwrap();
    for path in [&as_ybr, &ybr_rle] {
        let obj = open_file(path).unwrap();
        let photometric =
            dicomnode_server::input::value_of(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap();
        assert!(photometric.starts_with("YBR_FULL"), "{photometric}");
        let ours = pixels::decode(&obj).unwrap();
        assert_eq!(ours.photometric, Photometric::Rgb);
        let difference = max_difference(&ours, &reference);
        assert!(
            difference <= 2.0,
            "{} ({photometric}) differs by {difference}",
            path.display()
        );
    }
}

#[test]
fn documents_and_derived_series_read_back_with_dcmtk() {
    use dicomnode_server::volume::Volume;
    let dir = tempfile::tempdir().unwrap();
    let ct = SyntheticSeries::ct("DOC-1", 3)
        .size(16, 16)
        .build()
        .unwrap();
    let series = DerivedSeries::new("Report", 900);

    // A screenshot: DCMTK renders it to the very RGB bytes given.
    let (rows, columns) = (6u16, 10u16);
    let rgb: Vec<u8> = (0..usize::from(rows) * usize::from(columns) * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let sc = series
        .secondary_capture(&ct[0], &rgb, rows, columns)
        .unwrap();
    let sc_path = dir.path().join("sc.dcm");
    sc.write_to_file(&sc_path).unwrap();
    let ppm = dir.path().join("sc.ppm");
    let (status, text) = run({
        let mut c = dcmtk("dcm2pnm");
        c.arg("--write-raw-pnm").arg(&sc_path).arg(&ppm);
        c
    });
    assert!(status.status.success(), "{text}");
    let bytes = std::fs::read(&ppm).unwrap();
    let header = format!("P6\n{columns} {rows}\n255\n");
    assert!(bytes.starts_with(header.as_bytes()), "{:?}", &bytes[..20]);
    assert_eq!(&bytes[header.len()..], &rgb[..]);

    // A report: DCMTK extracts the same PDF bytes, odd length included.
    let mut pdf: Vec<u8> = b"%PDF-1.4\n% dicomnode test\n1 0 obj << >> endobj\n%%EOF\n".to_vec();
    if pdf.len().is_multiple_of(2) {
        pdf.push(b'\n');
    }
    let doc = series
        .encapsulated_pdf(&ct[0], &pdf, "Dose report")
        .unwrap();
    let doc_path = dir.path().join("pdf.dcm");
    doc.write_to_file(&doc_path).unwrap();
    let out_pdf = dir.path().join("out.pdf");
    let (status, text) = run({
        let mut c = dcmtk("dcm2pdf");
        c.arg(&doc_path).arg(&out_pdf);
        c
    });
    assert!(status.status.success(), "{text}");
    let extracted = std::fs::read(&out_pdf).unwrap();
    assert_eq!(&extracted[..pdf.len()], &pdf[..]);
    assert!(extracted.len() <= pdf.len() + 1);

    // A derived series of a volume: DCMTK parses it, and its values are the ones given.
    let volume = Volume::of(&ct).unwrap();
    let values = volume.data.mapv(|v| v * 2.0);
    let derived = DerivedSeries::new("Doubled", 901)
        .from_volume(&volume, &values, &ct)
        .unwrap();
    for (k, instance) in derived.iter().enumerate() {
        let path = dir.path().join(format!("derived{k}.dcm"));
        instance.write_to_file(&path).unwrap();
        let (status, dump) = run({
            let mut c = dcmtk("dcmdump");
            c.arg("+P")
                .arg("0020,0032")
                .arg("+P")
                .arg("0028,1052")
                .arg(&path);
            c
        });
        assert!(status.status.success(), "{dump}");
        assert!(dump.contains("(0020,0032)"), "{dump}");
        let back = pixels::rescaled(&open_file(&path).unwrap()).unwrap();
        let want: Vec<f32> = values
            .index_axis(dicomnode_server::ndarray::Axis(0), k)
            .iter()
            .copied()
            .collect();
        assert_eq!(back, want, "slice {k}");
    }
}

/// A DICOM instance of `source`'s header with `codestreams` (one per frame) as
/// encapsulated pixel data in `transfer_syntax`.
fn encapsulate(
    source: &DicomInstance,
    codestreams: Vec<Vec<u8>>,
    transfer_syntax: &str,
) -> DicomInstance {
    use dicomnode_server::dicom_core::value::PixelFragmentSequence;
    use dicomnode_server::dicom_object::meta::FileMetaTableBuilder;
    use dicomnode_server::dicom_object::InMemDicomObject;
    let mut obj = InMemDicomObject::from_element_iter(
        source
            .iter()
            .filter(|e| e.header().tag != tags::PIXEL_DATA)
            .cloned(),
    );
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), codestreams),
    ));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(
            source
                .meta()
                .media_storage_sop_class_uid()
                .trim_end_matches('\0'),
        )
        .media_storage_sop_instance_uid(
            source
                .meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
        );
    obj.with_meta(meta).unwrap()
}

/// HTJ2K: OpenJPH's ojph_compress (Debian's openjph-tools) encodes unsigned grey images
/// losslessly; the codestream, wrapped here as HTJ2K Lossless Only, decodes bit for bit,
/// as OpenJPH's own ojph_expand does. (Its signed input is broken, so signed data are not
/// tested through it.)
#[test]
fn htj2k_lossless_decodes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mr16", "grey8"] {
        let source = inputs().into_iter().find(|(n, _)| *n == name).unwrap().1;
        let original = pixels::decode(&source).unwrap();
        let (bits, raw): (u16, Vec<u8>) = match &original.samples {
            Samples::U16(v) => (16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Samples::U8(v) => (8, v.clone()),
            other => panic!("{other:?}"),
        };
        let input = dir.path().join(format!("{name}.yuv"));
        std::fs::write(&input, &raw).unwrap();
        let codestream = dir.path().join(format!("{name}.j2c"));
        let dims = format!("{{{},{}}}", original.columns, original.rows);
        let (status, text) = run({
            let mut c = std::process::Command::new("/usr/bin/ojph_compress");
            c.arg("-i").arg(&input).arg("-o").arg(&codestream).args([
                "-reversible",
                "true",
                "-dims",
                &dims,
                "-num_comps",
                "1",
                "-signed",
                "false",
                "-bit_depth",
                &bits.to_string(),
                "-downsamp",
                "{1,1}",
            ]);
            c
        });
        assert!(status.status.success(), "{text}");
        let expanded = dir.path().join(format!("{name}.out.yuv"));
        let (status, text) = run({
            let mut c = std::process::Command::new("/usr/bin/ojph_expand");
            c.arg("-i").arg(&codestream).arg("-o").arg(&expanded);
            c
        });
        assert!(status.status.success(), "{text}");
        assert_eq!(
            std::fs::read(&expanded).unwrap(),
            raw,
            "OpenJPH's own round trip"
        );
        let obj = encapsulate(
            &source,
            vec![std::fs::read(&codestream).unwrap()],
            "1.2.840.10008.1.2.4.201",
        );
        let path = dir.path().join(format!("{name}.htj2k.dcm"));
        obj.write_to_file(&path).unwrap();
        let ours = pixels::decode(&open_file(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {}", dicomnode_server::ProcessError::from(e)));
        assert_eq!(ours.samples, original.samples, "{name} in HTJ2K");
    }
}

//! UIDs, the mapping file, re-identification and private attributes.

use super::*;
use crate::synthetic::SyntheticSeries;

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

#[test]
fn uids_are_consistent_across_a_series_and_references_follow() {
    let series = SyntheticSeries::ct("PAT-2", 3).size(2, 2).build().unwrap();
    let mut with_reference = series[2].clone();
    let item = InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2",
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            text(&series[0], tags::SOP_INSTANCE_UID).unwrap(),
        ),
    ]);
    with_reference.put(DataElement::new(
        tags::SOURCE_IMAGE_SEQUENCE,
        VR::SQ,
        DataSetSequence::new(vec![item], Length::UNDEFINED),
    ));
    let mut mapping = Mapping::random();
    let d = Deidentifier::new();
    let out: Vec<DicomInstance> = [&series[0], &series[1], &with_reference]
        .iter()
        .map(|i| d.deidentify(i, &mut mapping).unwrap().instance)
        .collect();
    let study: Vec<_> = out
        .iter()
        .map(|o| text(o, tags::STUDY_INSTANCE_UID))
        .collect();
    assert!(study.iter().all(|s| s == &study[0]));
    assert_ne!(study[0], text(&series[0], tags::STUDY_INSTANCE_UID));
    let series_uids: Vec<_> = out
        .iter()
        .map(|o| text(o, tags::SERIES_INSTANCE_UID))
        .collect();
    assert!(series_uids.iter().all(|s| s == &series_uids[0]));
    let frames: Vec<_> = out
        .iter()
        .map(|o| text(o, tags::FRAME_OF_REFERENCE_UID))
        .collect();
    assert!(frames.iter().all(|s| s == &frames[0]));
    let referenced = out[2]
        .get(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
        .clone();
    assert_eq!(
        text(&referenced, tags::REFERENCED_SOP_INSTANCE_UID),
        text(&out[0], tags::SOP_INSTANCE_UID)
    );
    // The SOP class is not an identity: kept.
    assert_eq!(
        text(&referenced, tags::REFERENCED_SOP_CLASS_UID).as_deref(),
        Some("1.2.840.10008.5.1.4.1.1.2")
    );
    // The same key in another process: the same UIDs.
    let key = b"another key, thirty-two bytes!!!";
    let a = d
        .deidentify(&series[0], &mut Mapping::with_key(key).unwrap())
        .unwrap()
        .instance;
    let b = d
        .deidentify(&series[0], &mut Mapping::with_key(key).unwrap())
        .unwrap()
        .instance;
    assert_eq!(
        text(&a, tags::SOP_INSTANCE_UID),
        text(&b, tags::SOP_INSTANCE_UID)
    );
}

#[test]
fn a_mapping_file_round_trips_and_reidentifies_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapping.jsonl");
    let ct = SyntheticSeries::ct("PAT-3", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    let d = Deidentifier::new()
        .with(ProfileOption::RetainLongitudinalModifiedDates)
        .pseudonym("PAT-3", "STUDY-SUBJECT-042");
    let deidentified = {
        let mut mapping = Mapping::open(&path).unwrap();
        let out = d.deidentify(&ct, &mut mapping).unwrap().instance;
        mapping.save().unwrap();
        out
    };
    assert_eq!(
        text(&deidentified, tags::PATIENT_ID).as_deref(),
        Some("STUDY-SUBJECT-042")
    );
    assert_ne!(
        text(&deidentified, tags::STUDY_DATE),
        text(&ct, tags::STUDY_DATE)
    );
    // A result made from it elsewhere: new instance, same study.
    let mut result = deidentified.clone();
    result.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "2.25.12345",
    ));
    let mapping = Mapping::open(&path).unwrap();
    let back = reidentify(&result, &mapping).unwrap();
    for tag in [
        tags::PATIENT_ID,
        tags::PATIENT_NAME,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::STUDY_DATE,
        tags::PATIENT_BIRTH_DATE,
    ] {
        assert_eq!(
            text(&back, tag),
            text(&ct, tag),
            "{}",
            crate::input::tag_name(tag)
        );
    }
    assert_eq!(
        text(&back, tags::SOP_INSTANCE_UID).as_deref(),
        Some("2.25.12345")
    );
    assert_eq!(
        text(&back, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("NO")
    );
    assert!(back
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .is_none());
    // The key is kept: a second process derives the same UIDs.
    let mut again = Mapping::open(&path).unwrap();
    let second = d.deidentify(&ct, &mut again).unwrap().instance;
    assert_eq!(
        text(&second, tags::SOP_INSTANCE_UID),
        text(&deidentified, tags::SOP_INSTANCE_UID)
    );
}

#[test]
fn private_attributes_go_unless_their_creator_is_retained_as_safe() {
    let mut ct = SyntheticSeries::ct("PAT-4", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    ct.put(DataElement::new(Tag(0x0029, 0x0010), VR::LO, "SAFE VENDOR"));
    ct.put(DataElement::new(Tag(0x0029, 0x1001), VR::LO, "dose 3"));
    ct.put(DataElement::new(
        Tag(0x0029, 0x0011),
        VR::LO,
        "OTHER VENDOR",
    ));
    ct.put(DataElement::new(
        Tag(0x0029, 0x1101),
        VR::LO,
        "Doe's secrets",
    ));
    ct.put(DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
    let mut mapping = Mapping::random();
    let basic = Deidentifier::new().deidentify(&ct, &mut mapping).unwrap();
    assert!(basic.instance.get(Tag(0x0029, 0x1001)).is_none());
    assert!(basic.instance.get(Tag(0x0029, 0x0010)).is_none());
    assert_eq!(basic.warnings.len(), 1, "burned-in annotation is reported");
    let safe = Deidentifier::new()
        .with(ProfileOption::RetainSafePrivate)
        .safe_private_creator("SAFE VENDOR")
        .deidentify(&ct, &mut mapping)
        .unwrap()
        .instance;
    assert_eq!(text(&safe, Tag(0x0029, 0x1001)).as_deref(), Some("dose 3"));
    assert!(safe.get(Tag(0x0029, 0x1101)).is_none());
    assert!(safe.get(Tag(0x0029, 0x0011)).is_none());

    // The standard's own list: Philips' SUV factor is safe, other elements of its block
    // are not.
    let mut pet = ct.clone();
    pet.put(DataElement::new(
        Tag(0x7053, 0x0010),
        VR::LO,
        "Philips PET Private Group",
    ));
    pet.put(DataElement::new(Tag(0x7053, 0x1000), VR::DS, "0.000123"));
    pet.put(DataElement::new(Tag(0x7053, 0x1050), VR::LO, "Doe"));
    let kept = Deidentifier::new()
        .with(ProfileOption::RetainSafePrivate)
        .deidentify(&pet, &mut mapping)
        .unwrap()
        .instance;
    assert_eq!(
        text(&kept, Tag(0x7053, 0x1000)).as_deref(),
        Some("0.000123")
    );
    assert!(kept.get(Tag(0x7053, 0x0010)).is_some());
    assert!(kept.get(Tag(0x7053, 0x1050)).is_none());
    assert!(
        kept.get(Tag(0x0029, 0x1001)).is_none(),
        "not named safe this time"
    );
    let removed = Deidentifier::new()
        .deidentify(&pet, &mut mapping)
        .unwrap()
        .instance;
    assert!(removed.get(Tag(0x7053, 0x1000)).is_none());
}

#[test]
fn uids_the_table_does_not_list_are_replaced_unless_they_name_a_class() {
    let mut ct = SyntheticSeries::ct("PAT-5", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    ct.put(DataElement::new(
        tags::MULTI_FRAME_SOURCE_SOP_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.9.7.42",
    ));
    let out = Deidentifier::new()
        .deidentify(&ct, &mut Mapping::random())
        .unwrap()
        .instance;
    let replaced = text(&out, tags::MULTI_FRAME_SOURCE_SOP_INSTANCE_UID).unwrap();
    assert!(replaced.starts_with("2.25."), "{replaced}");
    assert_eq!(
        text(&out, tags::SOP_CLASS_UID),
        text(&ct, tags::SOP_CLASS_UID),
        "a SOP class is no identity"
    );
    let method = out
        .get(tags::DEIDENTIFICATION_METHOD)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(method.contains("Basic Profile"), "{method}");
}

#[test]
fn patients_without_an_id_are_told_apart_and_dates_come_back() {
    let mut a = SyntheticSeries::ct("X", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    a.put(DataElement::new(tags::PATIENT_ID, VR::LO, ""));
    let mut b = a.clone();
    a.put(DataElement::new(tags::PATIENT_NAME, VR::PN, "Alpha^Ann"));
    b.put(DataElement::new(tags::PATIENT_NAME, VR::PN, "Beta^Bob"));
    a.put(DataElement::new(tags::ACQUISITION_DATE, VR::DA, "20250607"));
    let mut mapping = Mapping::random();
    let d = Deidentifier::new().with(ProfileOption::RetainLongitudinalModifiedDates);
    let da = d.deidentify(&a, &mut mapping).unwrap().instance;
    let db = d.deidentify(&b, &mut mapping).unwrap().instance;
    assert_ne!(text(&da, tags::PATIENT_ID), text(&db, tags::PATIENT_ID));
    assert_ne!(
        text(&da, tags::ACQUISITION_DATE).as_deref(),
        Some("20250607")
    );
    let back = reidentify(&da, &mapping).unwrap();
    assert_eq!(
        text(&back, tags::PATIENT_NAME).as_deref(),
        Some("Alpha^Ann")
    );
    assert_eq!(
        text(&back, tags::ACQUISITION_DATE).as_deref(),
        Some("20250607")
    );
    assert_eq!(text(&back, tags::STUDY_DATE), text(&a, tags::STUDY_DATE));
}

#[test]
fn a_mapping_file_survives_a_torn_line_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let ct = SyntheticSeries::ct("PAT-6", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    let first = {
        let mut m = Mapping::open(&path).unwrap();
        let out = Deidentifier::new()
            .deidentify(&ct, &mut m)
            .unwrap()
            .instance;
        m.save().unwrap();
        out
    };
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A crash mid-write leaves half a line, not even valid UTF-8.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"uid\":[\"1.2.3\xc3");
    std::fs::write(&path, &bytes).unwrap();
    let other = SyntheticSeries::ct("PAT-7", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    let second = {
        let mut m = Mapping::open(&path).unwrap();
        let out = Deidentifier::new()
            .deidentify(&other, &mut m)
            .unwrap()
            .instance;
        m.save().unwrap();
        out
    };
    let m = Mapping::open(&path).unwrap();
    assert!(format!("{m:?}").contains("(secret)"));
    for (out, original) in [(&first, &ct), (&second, &other)] {
        let back = reidentify(out, &m).unwrap();
        assert_eq!(
            text(&back, tags::SOP_INSTANCE_UID),
            text(original, tags::SOP_INSTANCE_UID)
        );
    }
}

#[test]
fn a_file_that_is_not_a_mapping_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "my notes\n").unwrap();
    let error = Mapping::open(&path).unwrap_err();
    assert!(
        matches!(error, DeidentifyError::NotAMapping { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("notes.txt"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes\n");
    let short_key = dir.path().join("short.jsonl");
    std::fs::write(&short_key, "{\"dicomnode_mapping\":1,\"key\":\"abcd\"}\n").unwrap();
    assert!(matches!(
        Mapping::open(&short_key).unwrap_err(),
        DeidentifyError::Key(_)
    ));
}

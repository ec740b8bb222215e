use super::*;
use crate::series::DerivedSeries;
use crate::synthetic::SyntheticSeries;
use dicom_core::{DataElement, PrimitiveValue, VR};

fn uid(i: &DicomInstance) -> String {
    value_of(i, tags::SOP_INSTANCE_UID).unwrap()
}

#[test]
fn shuffled_slices_are_sorted_along_the_normal_in_modality_units() {
    let mut ct = SyntheticSeries::ct("P", 5).size(6, 4).build().unwrap();
    ct.swap(0, 3);
    ct.swap(1, 4);
    let volume = Volume::of(&ct).unwrap();
    assert_eq!(volume.shape(), [5, 6, 4]);
    assert_eq!(volume.origin, [-250.0, -250.0, 2.5]);
    assert!((volume.spacing[0] - 2.5).abs() < 1e-9);
    assert_eq!(volume.spacing[1], 0.9765625);
    assert_eq!(volume.direction[2], [0.0, 0.0, 1.0]);
    assert_eq!(volume.units.as_str(), "HU");
    let zs: Vec<f64> = volume.slices.iter().map(|s| s.position[2]).collect();
    assert_eq!(zs, vec![2.5, 5.0, 7.5, 10.0, 12.5]);
    for (k, slice) in volume.slices.iter().enumerate() {
        let source = ct
            .iter()
            .find(|i| uid(i) == slice.sop_instance_uid)
            .unwrap();
        let hu = crate::pixels::rescaled(source).unwrap();
        let plane: Vec<f32> = volume.data.index_axis(Axis(0), k).iter().copied().collect();
        assert_eq!(plane, hu);
    }
    assert_eq!(
        volume.position_of([2, 1, 3]),
        [-250.0 + 3.0 * 0.9765625, -250.0 + 0.9765625, 7.5]
    );
}

#[test]
fn a_missing_slice_is_a_gap_named_or_reported() {
    let mut ct = SyntheticSeries::ct("P", 5).size(2, 2).build().unwrap();
    let removed = ct.remove(2);
    let error = Volume::of(&ct).unwrap_err();
    let VolumeError::Gaps { gaps } = &error else {
        panic!("{error}")
    };
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].after, uid(&ct[1]));
    assert_eq!(gaps[0].before, uid(&ct[2]));
    assert!((gaps[0].distance - 5.0).abs() < 1e-9);
    assert!(!error.to_string().contains(&uid(&removed)));
    let volume = VolumeOptions::new().allow_gaps(true).build(&ct).unwrap();
    assert_eq!(volume.gaps.len(), 1);
    assert_eq!(volume.shape()[0], 4);
}

#[test]
fn duplicates_mixed_orientations_and_missing_positions_name_the_instances() {
    let ct = SyntheticSeries::ct("P", 3).size(2, 2).build().unwrap();
    let mut duplicate = ct.clone();
    let mut copy = duplicate[1].clone();
    copy.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"));
    duplicate.push(copy);
    let error = Volume::of(&duplicate).unwrap_err().to_string();
    assert!(
        error.contains("1.2.3.4") && error.contains(&uid(&ct[1])),
        "{error}"
    );

    let mut tilted = ct.clone();
    tilted[2].put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        "1\\0\\0\\0\\0\\-1",
    ));
    let error = Volume::of(&tilted).unwrap_err();
    assert!(matches!(error, VolumeError::Inconsistent { .. }), "{error}");
    assert!(error.to_string().contains(&uid(&ct[2])), "{error}");

    let mut unplaced = ct.clone();
    unplaced[0].remove_element(tags::IMAGE_POSITION_PATIENT);
    let error = Volume::of(&unplaced).unwrap_err().to_string();
    assert!(
        error.contains("ImagePositionPatient") && error.contains(&uid(&ct[0])),
        "{error}"
    );

    let mut two = ct.clone();
    two.extend(SyntheticSeries::ct("P", 1).size(2, 2).build().unwrap());
    assert!(matches!(
        Volume::of(&two).unwrap_err(),
        VolumeError::MixedSeries(_)
    ));
}

#[test]
fn pet_is_in_suv_body_weight_decay_corrected_to_the_series_start() {
    let pet = SyntheticSeries::pet("P", 2).size(3, 3).build().unwrap();
    let volume = Volume::of(&pet).unwrap();
    assert_eq!(volume.units, Units::SuvBw);
    // 75 kg; 370 MBq one hour (3600 s) before the series; F-18 half-life 6586.2 s.
    let decayed = 370e6 * (0.5f64).powf(3600.0 / 6586.2);
    let stored = crate::pixels::stored(&pet[0]).unwrap();
    let want = f64::from(stored[0]) * 0.5 * 75_000.0 / decayed;
    assert!(
        (f64::from(volume.data[[0, 0, 0]]) - want).abs() < 1e-4 * want,
        "{} vs {want}",
        volume.data[[0, 0, 0]]
    );

    let mut no_weight = pet.clone();
    for i in &mut no_weight {
        i.remove_element(tags::PATIENT_WEIGHT);
    }
    let fallback = Volume::of(&no_weight).unwrap();
    assert_eq!(fallback.units.as_str(), "BQML");
    assert!(
        fallback.notes[0].contains("PatientWeight"),
        "{:?}",
        fallback.notes
    );
    let error = VolumeOptions::new()
        .suv(SuvMode::Required)
        .build(&no_weight)
        .unwrap_err();
    assert!(
        error.to_string().contains("PatientWeight (0010,1030)"),
        "{error}"
    );
}

#[test]
fn enhanced_multi_frame_uses_functional_groups_and_per_frame_rescale() {
    let series = SyntheticSeries::ct("P", 4).size(3, 2);
    let classic = Volume::of(&series.build().unwrap()).unwrap();
    let enhanced = series.build_enhanced().unwrap();
    let volume = Volume::of([&enhanced]).unwrap();
    assert_eq!(volume.shape(), [4, 3, 2]);
    assert_eq!(volume.origin, classic.origin);
    assert_eq!(volume.spacing, classic.spacing);
    for k in 0..4 {
        assert_eq!(volume.slices[k].frame, Some(k as u32));
        for (a, b) in volume
            .data
            .index_axis(Axis(0), k)
            .iter()
            .zip(classic.data.index_axis(Axis(0), k))
        {
            assert_eq!(*a, *b - k as f32);
        }
    }
}

#[test]
fn a_derived_series_and_a_mask_keep_the_geometry_and_round_trip() {
    let ct = SyntheticSeries::ct("P", 3).size(4, 5).build().unwrap();
    let volume = Volume::of(&ct).unwrap();
    let values = volume.data.mapv(|v| v * 0.5 + 0.25);
    let derived = DerivedSeries::new("Half", 77)
        .derivation("HU halved")
        .from_volume(&volume, &values, &ct)
        .unwrap();
    assert_eq!(derived.len(), 3);
    let again = Volume::of(&derived).unwrap();
    assert_eq!(again.origin, volume.origin);
    assert_eq!(again.spacing, volume.spacing);
    assert_eq!(again.frame_of_reference_uid, volume.frame_of_reference_uid);
    let step = (values.iter().cloned().fold(f32::MIN, f32::max)
        - values.iter().cloned().fold(f32::MAX, f32::min))
        / 65535.0;
    for (a, b) in again.data.iter().zip(values.iter()) {
        assert!((a - b).abs() <= step, "{a} vs {b}");
    }
    let source_ref = derived[0]
        .get(tags::SOURCE_IMAGE_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| value_of(&items[0], tags::REFERENCED_SOP_INSTANCE_UID))
        .unwrap();
    assert_eq!(source_ref, volume.slices[0].sop_instance_uid);
    assert_eq!(
        value_of(&derived[0], tags::DERIVATION_DESCRIPTION).as_deref(),
        Some("HU halved")
    );

    let labels = volume.data.mapv(|v| u16::from(v > 0.0));
    let mask = DerivedSeries::new("Mask", 78)
        .mask(&volume, &labels, &ct)
        .unwrap();
    let read = Volume::of(&mask).unwrap();
    assert_eq!(read.data.mapv(|v| v as u16), labels);

    let mut too_big = ct.clone();
    too_big[0].put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(400u16),
    ));
    assert!(Volume::of(&too_big).is_err());
}

#[test]
fn suv_decay_reference_follows_decay_correction() {
    let pet = SyntheticSeries::pet("P", 2).size(2, 2).build().unwrap();
    let stored = |i: &DicomInstance| f64::from(crate::pixels::stored(i).unwrap()[0]) * 0.5;
    let decayed = |seconds: f64| 370e6 * 0.5f64.powf(seconds / 6586.2);
    let first_value = |instances: &[DicomInstance]| {
        let v = Volume::of(instances).unwrap();
        assert_eq!(v.units, Units::SuvBw);
        let k = v
            .slices
            .iter()
            .position(|s| s.sop_instance_uid == uid(&instances[0]))
            .unwrap();
        f64::from(v.data[[k, 0, 0]])
    };
    let close = |a: f64, b: f64| assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");

    // ADMIN: corrected to the injection already.
    let mut admin = pet.clone();
    for i in &mut admin {
        i.put(DataElement::new(tags::DECAY_CORRECTION, VR::CS, "ADMIN"));
    }
    close(first_value(&admin), stored(&admin[0]) * 75_000.0 / 370e6);

    // NONE: each slice decays to its own acquisition time (here 12:10, 70 minutes).
    let mut none = pet.clone();
    for i in &mut none {
        i.put(DataElement::new(tags::DECAY_CORRECTION, VR::CS, "NONE"));
    }
    none[0].put(DataElement::new(tags::ACQUISITION_TIME, VR::TM, "121000"));
    close(
        first_value(&none),
        stored(&none[0]) * 75_000.0 / decayed(4200.0),
    );

    // START with a series time after the acquisition (re-processed): the acquisition wins.
    let mut late = pet.clone();
    for i in &mut late {
        i.put(DataElement::new(tags::SERIES_TIME, VR::TM, "140000"));
    }
    close(
        first_value(&late),
        stored(&late[0]) * 75_000.0 / decayed(3600.0),
    );

    // A missing half-life is named.
    let mut no_half_life = pet.clone();
    for i in &mut no_half_life {
        let mut drug = i
            .get(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE)
            .and_then(|e| e.items())
            .unwrap()[0]
            .clone();
        drug.remove_element(tags::RADIONUCLIDE_HALF_LIFE);
        i.put(DataElement::new(
            tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![drug]),
        ));
    }
    let error = VolumeOptions::new()
        .suv(SuvMode::Required)
        .build(&no_half_life)
        .unwrap_err();
    assert!(
        error.to_string().contains("RadionuclideHalfLife"),
        "{error}"
    );
}

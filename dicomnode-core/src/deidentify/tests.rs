//! The profile's table is the reference: every attribute it lists (with a single tag known
//! to the dictionary) is put into one generated object, which is de-identified with no
//! option and with each option; each attribute is then checked against the action the
//! table gives it, read here from the table file itself.

use super::*;
use crate::synthetic::SyntheticSeries;
use dicom_core::dictionary::DataDictionary;
use dicom_core::value::Value;
use dicom_dictionary_std::StandardDataDictionary;

const TSV: &str = include_str!("table_e1_1.tsv");

/// (tag, basic code, option codes in column order) for every single-tag row.
fn reference_rows() -> Vec<(Tag, String, Vec<String>)> {
    TSV.lines()
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), 15, "{line}");
            let inner = cells[1].strip_prefix('(')?.strip_suffix(')')?;
            let (g, e) = inner.split_once(',')?;
            let tag = Tag(
                u16::from_str_radix(g, 16).ok()?,
                u16::from_str_radix(e, 16).ok()?,
            );
            Some((
                tag,
                cells[4].to_string(),
                cells[5..].iter().map(|c| c.to_string()).collect(),
            ))
        })
        .collect()
}

/// The code the table gives with `option` on (or none).
fn expected(basic: &str, codes: &[String], option: Option<ProfileOption>) -> String {
    if let Some(o) = option {
        let column = ProfileOption::ALL.iter().position(|x| *x == o).unwrap();
        if !codes[column].is_empty() {
            return codes[column].clone();
        }
    }
    basic.to_string()
}

const NAME: &str = "Doe^John";

fn sample(tag: Tag, vr: VR, n: usize) -> DataElement<InMemDicomObject> {
    let value: PrimitiveValue = match vr {
        VR::UI => format!("1.2.826.0.1.3680043.9.7.{n}").into(),
        VR::DA => "20240315".into(),
        VR::TM => "101010".into(),
        VR::DT => "20240315101010".into(),
        VR::AS => "045Y".into(),
        VR::DS => "12.5".into(),
        VR::IS => "7".into(),
        VR::US => PrimitiveValue::from(7u16),
        VR::SS => PrimitiveValue::from(7i16),
        VR::UL => PrimitiveValue::from(7u32),
        VR::SL => PrimitiveValue::from(7i32),
        VR::FL => PrimitiveValue::from(7f32),
        VR::FD => PrimitiveValue::from(7f64),
        VR::UV => PrimitiveValue::U64(std::iter::once(7u64).collect()),
        VR::SV => PrimitiveValue::I64(std::iter::once(7i64).collect()),
        VR::AT => PrimitiveValue::Tags(std::iter::once(tags::PATIENT_NAME).collect()),
        VR::AE => "SCANNER_AE".into(),
        VR::CS => "VALUE".into(),
        VR::PN => NAME.into(),
        VR::UR => "http://example.invalid/doe".into(),
        VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => {
            PrimitiveValue::U8([1u8, 2].into_iter().collect())
        }
        _ => "seen by Doe".into(),
    };
    DataElement::new(tag, vr, value)
}

fn nested_item() -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::PATIENT_NAME, VR::PN, NAME),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.9.7.999999",
        ),
        DataElement::new(tags::CODE_VALUE, VR::SH, "KEEPME"),
    ])
}

/// A CT instance carrying every attribute of the table that the dictionary knows.
fn generated() -> (DicomInstance, Vec<(Tag, String, Vec<String>)>) {
    let mut obj = SyntheticSeries::ct("PAT-1", 1)
        .size(2, 2)
        .build()
        .unwrap()
        .remove(0);
    obj.put(DataElement::new(tags::PATIENT_NAME, VR::PN, NAME));
    let mut carried = Vec::new();
    for (n, (tag, basic, codes)) in reference_rows().into_iter().enumerate() {
        if tag.0 == 0x0002 || tag.0 == 0x0000 || tag == tags::PIXEL_DATA {
            continue; // meta and command groups are not data set attributes
        }
        let Some(entry) = StandardDataDictionary.by_tag(tag) else {
            continue;
        };
        let vr = entry.vr.relaxed();
        if [
            tags::PATIENT_ID,
            tags::SOP_INSTANCE_UID,
            tags::STUDY_INSTANCE_UID,
            tags::SERIES_INSTANCE_UID,
        ]
        .contains(&tag)
        {
            carried.push((tag, basic, codes));
            continue; // the synthetic instance has them already
        }
        let element = if vr == VR::SQ {
            DataElement::new(
                tag,
                VR::SQ,
                DataSetSequence::new(vec![nested_item()], Length::UNDEFINED),
            )
        } else {
            sample(tag, vr, n)
        };
        obj.put(element);
        carried.push((tag, basic, codes));
    }
    (obj, carried)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

#[test]
fn every_attribute_gets_the_action_of_the_table_for_each_option() {
    let (source, carried) = generated();
    assert!(
        carried.len() > 500,
        "only {} attributes carried",
        carried.len()
    );
    let mut options: Vec<Option<ProfileOption>> = vec![None];
    options.extend(ProfileOption::ALL.iter().copied().map(Some));
    let mut checked = 0usize;
    for option in options {
        let deidentifier = match option {
            None => Deidentifier::new(),
            Some(o) => Deidentifier::new().with(o),
        };
        let mut mapping = Mapping::with_key(b"a test key of 32 bytes, no more.").unwrap();
        let out = deidentifier
            .deidentify(&source, &mut mapping)
            .unwrap()
            .instance;
        let shift = mapping.date_shift_days("PAT-1");
        let pseudonym = mapping.derived_pseudonym("PAT-1");
        for (tag, basic, codes) in &carried {
            let before = source.get(*tag).unwrap();
            let mut code = expected(basic, codes, option);
            // "Clean" where values cannot be cleaned (binary, numbers): the basic action.
            let cleanable = matches!(before.value(), Value::Sequence(_))
                || matches!(
                    before.vr(),
                    VR::DA
                        | VR::DT
                        | VR::TM
                        | VR::AE
                        | VR::UI
                        | VR::LO
                        | VR::SH
                        | VR::ST
                        | VR::LT
                        | VR::UT
                        | VR::UC
                        | VR::PN
                );
            if code == "C" && !cleanable {
                code = basic.clone();
            }
            let after = out.get(*tag);
            let sequence = matches!(before.value(), Value::Sequence(_));
            let context = format!("{tag} {} with {option:?}", crate::input::tag_name(*tag));
            if *tag == tags::PATIENT_ID || *tag == tags::PATIENT_NAME {
                assert_eq!(
                    text(&out, *tag).as_deref(),
                    Some(pseudonym.as_str()),
                    "{context}"
                );
                checked += 1;
                continue;
            }
            match code.as_str() {
                "X" => assert!(after.is_none(), "{context}: kept"),
                "Z" | "X/Z" => {
                    let after = after.unwrap_or_else(|| panic!("{context}: removed"));
                    match after.value() {
                        Value::Sequence(s) => assert!(s.items().is_empty(), "{context}"),
                        _ => assert!(
                            after.to_str().map(|s| s.trim().is_empty()).unwrap_or(true),
                            "{context}: {after:?}"
                        ),
                    }
                }
                "D" | "Z/D" | "X/D" | "X/Z/D" | "U" | "X/Z/U*" => {
                    let after = after.unwrap_or_else(|| panic!("{context}: removed"));
                    if sequence {
                        let item = &after.items().unwrap()[0];
                        assert_eq!(
                            text(item, tags::PATIENT_NAME).as_deref(),
                            Some(pseudonym.as_str()),
                            "{context}"
                        );
                        let uid = text(item, tags::REFERENCED_SOP_INSTANCE_UID).unwrap();
                        if option == Some(ProfileOption::RetainUids) {
                            assert_eq!(uid, "1.2.826.0.1.3680043.9.7.999999", "{context}");
                        } else {
                            assert!(uid.starts_with("2.25."), "{context}: {uid}");
                        }
                        assert_eq!(text(item, tags::CODE_VALUE).as_deref(), Some("KEEPME"));
                    } else {
                        let (b, a) = (before.to_str().unwrap(), after.to_str().unwrap());
                        assert!(!a.trim().is_empty(), "{context}: empty");
                        if before.vr() == VR::UI {
                            assert!(a.starts_with("2.25.") && a != b, "{context}: {a}");
                        } else if !matches!(
                            before.vr(),
                            VR::US
                                | VR::SS
                                | VR::UL
                                | VR::SL
                                | VR::FL
                                | VR::FD
                                | VR::UV
                                | VR::SV
                                | VR::OB
                                | VR::OW
                                | VR::OF
                                | VR::OD
                                | VR::OL
                                | VR::OV
                                | VR::UN
                                | VR::AT
                                | VR::IS
                                | VR::DS
                        ) {
                            assert_ne!(a, b, "{context}: not replaced");
                        }
                    }
                }
                "K" => {
                    let after = after.unwrap_or_else(|| panic!("{context}: removed"));
                    if !sequence {
                        assert_eq!(
                            after.to_str().unwrap(),
                            before.to_str().unwrap(),
                            "{context}"
                        );
                    }
                }
                "C" => {
                    let after = after.unwrap_or_else(|| panic!("{context}: removed"));
                    match before.vr() {
                        VR::DA => assert_eq!(
                            after.to_str().unwrap(),
                            values::shift_date("20240315", shift).unwrap(),
                            "{context}"
                        ),
                        VR::DT => assert_eq!(
                            after.to_str().unwrap(),
                            values::shift_date("20240315101010", shift).unwrap(),
                            "{context}"
                        ),
                        VR::AE => assert_ne!(after.to_str().unwrap(), "SCANNER_AE", "{context}"),
                        VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN => {
                            let a = after.to_str().unwrap();
                            assert!(!a.contains("Doe"), "{context}: {a}");
                        }
                        VR::SQ => {
                            let item = &after.items().unwrap()[0];
                            assert_eq!(
                                text(item, tags::PATIENT_NAME).as_deref(),
                                Some(pseudonym.as_str()),
                                "{context}"
                            );
                        }
                        _ => {}
                    }
                }
                other => {
                    panic!("{context}: the table has an action {other:?} the test does not know")
                }
            }
            checked += 1;
        }
        assert_eq!(
            text(&out, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
            Some("YES")
        );
        let codes = out
            .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        assert_eq!(text(&codes[0], tags::CODE_VALUE).as_deref(), Some("113100"));
        assert_eq!(codes.len(), 1 + usize::from(option.is_some()));
        if let Some(o) = option {
            assert_eq!(
                text(&codes[1], tags::CODE_VALUE).as_deref(),
                Some(o.code().0)
            );
        }
        assert_eq!(
            out.meta()
                .media_storage_sop_instance_uid()
                .trim_end_matches('\0'),
            text(&out, tags::SOP_INSTANCE_UID).unwrap()
        );
    }
    assert!(checked > 5000, "{checked}");
}

//! Re-identification of instances de-identified with a [`Mapping`].

use super::{dictionary_vr, key_tag, put, with_meta, DeidentifyError, Mapping};
use crate::input::value_of;
use crate::DicomInstance;
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Re-identifies an instance de-identified with `mapping`: replaced UIDs become their
/// originals again (in sequences too), the patient's and the study's identity attributes
/// get their recorded values, and Patient Identity Removed becomes NO (PS3.15 E.1.2).
/// UIDs that `mapping` did not make (a result's own new instances) stay as they are.
pub fn reidentify(
    instance: &DicomInstance,
    mapping: &Mapping,
) -> Result<DicomInstance, DeidentifyError> {
    let pseudonym = value_of(instance, tags::PATIENT_ID).unwrap_or_default();
    let study_key = value_of(instance, tags::STUDY_INSTANCE_UID).unwrap_or_default();
    let record = mapping.patient(&pseudonym);
    // Dates moved under the modified-dates option move back by as many days.
    let days = match (
        value_of(instance, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        record,
    ) {
        (Some("MODIFIED"), Some(r)) => -r.date_shift_days,
        _ => 0,
    };
    let mut obj = restore(instance, mapping, days);
    if let Some(record) = record {
        let study = record.studies.get(&study_key);
        for (key, value) in record.patient.iter().chain(study.into_iter().flatten()) {
            if let Some(tag) = key_tag(key) {
                put(
                    &mut obj,
                    tag,
                    dictionary_vr(tag),
                    PrimitiveValue::from(value.as_str()),
                );
            }
        }
    }
    put(
        &mut obj,
        tags::PATIENT_IDENTITY_REMOVED,
        VR::CS,
        "NO".into(),
    );
    obj.remove_element(tags::DEIDENTIFICATION_METHOD);
    obj.remove_element(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE);
    with_meta(obj, instance)
}

fn restore(obj: &InMemDicomObject, mapping: &Mapping, days: i64) -> InMemDicomObject {
    let mut out = InMemDicomObject::new_empty();
    for element in obj.iter() {
        let restored = match element.value() {
            Value::Sequence(seq) => DataElement::new(
                element.tag(),
                VR::SQ,
                DataSetSequence::new(
                    seq.items()
                        .iter()
                        .map(|i| restore(i, mapping, days))
                        .collect::<Vec<_>>(),
                    Length::UNDEFINED,
                ),
            ),
            Value::Primitive(p) if element.vr() == VR::UI => {
                let uids: Vec<String> = p
                    .to_multi_str()
                    .iter()
                    .map(|u| {
                        let u = u.trim_end_matches(['\0', ' ']);
                        mapping.original_uid(u).unwrap_or(u).to_string()
                    })
                    .collect();
                DataElement::new(element.tag(), VR::UI, PrimitiveValue::Strs(uids.into()))
            }
            Value::Primitive(p) if days != 0 && matches!(element.vr(), VR::DA | VR::DT) => {
                let dates: Vec<String> = p
                    .to_multi_str()
                    .iter()
                    .map(|d| super::values::shift_date(d, days).unwrap_or_else(|| d.clone()))
                    .collect();
                DataElement::new(
                    element.tag(),
                    element.vr(),
                    PrimitiveValue::Strs(dates.into()),
                )
            }
            _ => element.clone(),
        };
        out.put(restored);
    }
    out
}

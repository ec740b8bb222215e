//! Results that are not images of the source's geometry: a Secondary Capture image (a
//! screenshot, a plot) and an Encapsulated PDF (a report), both for the patient and
//! study of an input instance.

use super::{finish, put, DerivedSeries};
use crate::{DicomInstance, ProcessError};
use dicom_core::value::PrimitiveValue;
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

/// The patient and study attributes copied from the input into a new document.
const PATIENT_AND_STUDY: &[dicom_core::Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_WEIGHT,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::SPECIFIC_CHARACTER_SET,
];

/// Today's date and time as DICOM DA and TM (UTC).
fn now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::dates::civil_from_days(days);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60),
    )
}

impl DerivedSeries {
    fn document_header(
        &self,
        study: &DicomInstance,
        sop_class: &str,
        modality: &str,
    ) -> (InMemDicomObject, String) {
        let mut obj = InMemDicomObject::from_element_iter(
            PATIENT_AND_STUDY
                .iter()
                .filter_map(|&tag| study.get(tag).cloned()),
        );
        for type2 in [
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::STUDY_ID,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
        ] {
            if obj.get(type2).is_none() {
                let vr = dicom_core::dictionary::DataDictionary::by_tag(
                    &dicom_dictionary_std::StandardDataDictionary,
                    type2,
                )
                .and_then(|e| e.vr.exact())
                .unwrap_or(VR::LO);
                put(&mut obj, type2, vr, PrimitiveValue::Empty);
            }
        }
        let (date, time) = now();
        let sop_uid = self.new_uid();
        put(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class.into());
        self.identify(&mut obj, &self.next_series_uid(), &sop_uid, "1");
        obj.remove_element(tags::IMAGE_TYPE);
        put(&mut obj, tags::MODALITY, VR::CS, modality.into());
        put(&mut obj, tags::CONTENT_DATE, VR::DA, date.clone().into());
        put(&mut obj, tags::CONTENT_TIME, VR::TM, time.clone().into());
        put(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, date.into());
        put(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, time.into());
        put(&mut obj, tags::MANUFACTURER, VR::LO, "dicomnode-rs".into());
        (obj, sop_uid)
    }

    /// A Secondary Capture image (SOP class 1.2.840.10008.5.1.4.1.1.7) of an 8-bit RGB
    /// buffer (`rows × columns × 3`, colour by pixel) for the patient and study of
    /// `study`, in this series (Modality OT, ConversionType WSD).
    pub fn secondary_capture(
        &self,
        study: &DicomInstance,
        rgb: &[u8],
        rows: u16,
        columns: u16,
    ) -> Result<DicomInstance, ProcessError> {
        let wanted = usize::from(rows) * usize::from(columns) * 3;
        if rgb.len() != wanted || wanted == 0 {
            return Err(ProcessError::new(format!(
                "an RGB buffer of {rows}×{columns} needs {wanted} bytes, not {}",
                rgb.len()
            )));
        }
        let (mut obj, sop_uid) =
            self.document_header(study, uids::SECONDARY_CAPTURE_IMAGE_STORAGE, "OT");
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["DERIVED", "SECONDARY"].map(String::from).into()),
        );
        put(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD".into());
        put(&mut obj, tags::SAMPLES_PER_PIXEL, VR::US, 3u16.into());
        put(
            &mut obj,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "RGB".into(),
        );
        put(&mut obj, tags::PLANAR_CONFIGURATION, VR::US, 0u16.into());
        put(&mut obj, tags::ROWS, VR::US, rows.into());
        put(&mut obj, tags::COLUMNS, VR::US, columns.into());
        put(&mut obj, tags::BITS_ALLOCATED, VR::US, 8u16.into());
        put(&mut obj, tags::BITS_STORED, VR::US, 8u16.into());
        put(&mut obj, tags::HIGH_BIT, VR::US, 7u16.into());
        put(&mut obj, tags::PIXEL_REPRESENTATION, VR::US, 0u16.into());
        put(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES".into());
        put(
            &mut obj,
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(rgb.into()),
        );
        finish(obj, &sop_uid)
    }

    /// An Encapsulated PDF (SOP class 1.2.840.10008.5.1.4.1.1.104.1) of `pdf` with
    /// DocumentTitle `title`, for the patient and study of `study`, in this series
    /// (Modality DOC). The bytes must be a PDF (start with `%PDF-`).
    pub fn encapsulated_pdf(
        &self,
        study: &DicomInstance,
        pdf: &[u8],
        title: &str,
    ) -> Result<DicomInstance, ProcessError> {
        if !pdf.starts_with(b"%PDF-") {
            return Err(ProcessError::new(
                "the document is not a PDF (it does not start with %PDF-)",
            ));
        }
        let (mut obj, sop_uid) = self.document_header(study, uids::ENCAPSULATED_PDF_STORAGE, "DOC");
        put(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD".into());
        put(&mut obj, tags::DOCUMENT_TITLE, VR::ST, title.into());
        put(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES".into());
        put(
            &mut obj,
            tags::ACQUISITION_DATE_TIME,
            VR::DT,
            PrimitiveValue::Empty,
        );
        obj.put(dicom_core::DataElement::new(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
        ));
        put(
            &mut obj,
            tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
            VR::LO,
            "application/pdf".into(),
        );
        let length = u32::try_from(pdf.len())
            .map_err(|_| ProcessError::new("a PDF of 4 GiB or more cannot be encapsulated"))?;
        // OB of even length: a PDF of odd length gets one padding NUL, as PS3.3 allows.
        let mut bytes = pdf.to_vec();
        if !bytes.len().is_multiple_of(2) {
            bytes.push(0);
        }
        put(
            &mut obj,
            tags::ENCAPSULATED_DOCUMENT_LENGTH,
            VR::UL,
            length.into(),
        );
        put(
            &mut obj,
            tags::ENCAPSULATED_DOCUMENT,
            VR::OB,
            PrimitiveValue::U8(bytes.into()),
        );
        finish(obj, &sop_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::value_of;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn documents_belong_to_the_input_study() {
        let ct = SyntheticSeries::ct("P-7", 1)
            .size(2, 2)
            .build()
            .unwrap()
            .remove(0);
        let series = DerivedSeries::new("Report", 900);
        let sc = series.secondary_capture(&ct, &[7u8; 12], 2, 2).unwrap();
        let pdf = series.encapsulated_pdf(&ct, b"%PDF-1.4 x", "Dose").unwrap();
        for doc in [&sc, &pdf] {
            assert_eq!(value_of(doc, tags::PATIENT_ID).as_deref(), Some("P-7"));
            assert_eq!(
                value_of(doc, tags::STUDY_INSTANCE_UID),
                value_of(&ct, tags::STUDY_INSTANCE_UID)
            );
            assert_ne!(
                value_of(doc, tags::SERIES_INSTANCE_UID),
                value_of(&ct, tags::SERIES_INSTANCE_UID)
            );
        }
        assert_eq!(
            crate::pixels::decode(&sc).unwrap().samples,
            crate::pixels::Samples::U8(vec![7; 12])
        );
        let doc = pdf
            .element(tags::ENCAPSULATED_DOCUMENT)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(&doc[..10], b"%PDF-1.4 x");
        assert!(series.encapsulated_pdf(&ct, b"hello", "x").is_err());
        assert!(series.secondary_capture(&ct, &[0; 11], 2, 2).is_err());
    }
}

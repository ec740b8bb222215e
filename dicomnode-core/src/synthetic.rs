//! Synthetic CT and MR series: valid Part-10 instances for tests, demos and benchmarks.
//!
//! ```
//! use dicomnode_core::synthetic::SyntheticSeries;
//! let series = SyntheticSeries::ct("PAT-1", 3).size(16, 16).build().unwrap();
//! assert_eq!(series.len(), 3);
//! ```

use crate::{DicomInstance, SyntheticError};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use std::path::{Path, PathBuf};

/// A new globally unique UID of the form `2.25.<UUID as a decimal integer>` (at most 44 chars).
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// The imaging modality of a synthetic series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// CT Image Storage, signed 16-bit with rescale intercept -1024 (Hounsfield units).
    Ct,
    /// MR Image Storage, unsigned 16-bit.
    Mr,
    /// PET Image Storage, unsigned 16-bit in Bq/ml (slope 0.5), with the tags SUVbw needs:
    /// 75 kg, 370 MBq of F-18 (half-life 6586.2 s) injected at 11:00, series at 12:00,
    /// decay corrected to the series start.
    Pet,
}

/// A description of one synthetic series of a patient.
#[derive(Debug, Clone)]
pub struct SyntheticSeries {
    /// The PatientID.
    pub patient_id: String,
    /// The PatientName.
    pub patient_name: String,
    /// CT or MR.
    pub modality: Modality,
    /// The StudyInstanceUID (share it between series of one study).
    pub study_uid: String,
    /// The SeriesInstanceUID.
    pub series_uid: String,
    /// The SeriesNumber.
    pub series_number: u32,
    /// Number of instances (slices).
    pub slices: u32,
    /// Rows and columns of each image.
    pub rows: u16,
    /// Columns of each image.
    pub columns: u16,
}

impl SyntheticSeries {
    /// A CT series of `slices` 512×512 images in a new study.
    pub fn ct(patient_id: &str, slices: u32) -> Self {
        Self::new(patient_id, slices, Modality::Ct)
    }

    /// A PET series of `slices` 512×512 images in a new study (see [`Modality::Pet`]).
    pub fn pet(patient_id: &str, slices: u32) -> Self {
        Self::new(patient_id, slices, Modality::Pet)
    }

    /// An MR series of `slices` 512×512 images in a new study.
    pub fn mr(patient_id: &str, slices: u32) -> Self {
        Self::new(patient_id, slices, Modality::Mr)
    }

    fn new(patient_id: &str, slices: u32, modality: Modality) -> Self {
        SyntheticSeries {
            patient_id: patient_id.to_string(),
            patient_name: format!("Synthetic^{patient_id}"),
            modality,
            study_uid: new_uid(),
            series_uid: new_uid(),
            series_number: 1,
            slices,
            rows: 512,
            columns: 512,
        }
    }

    /// Sets the image size.
    pub fn size(mut self, rows: u16, columns: u16) -> Self {
        self.rows = rows;
        self.columns = columns;
        self
    }

    /// A second series of the same patient and study (new SeriesInstanceUID, next number).
    pub fn next_series(&self, modality: Modality, slices: u32) -> Self {
        SyntheticSeries {
            modality,
            series_uid: new_uid(),
            series_number: self.series_number + 1,
            slices,
            ..self.clone()
        }
    }

    /// Builds the instances, in Explicit VR Little Endian.
    pub fn build(&self) -> Result<Vec<DicomInstance>, SyntheticError> {
        let frame_of_reference = new_uid();
        (1..=self.slices)
            .map(|n| self.instance(n, &frame_of_reference))
            .collect()
    }

    /// The series as one enhanced multi-frame instance (Enhanced CT, MR or PET Image
    /// Storage): frames in the order of the classic instances, geometry and rescale in
    /// functional groups. Frame `k` (0-based) has RescaleIntercept lowered by `k`, in its
    /// own functional group, so that per-frame rescale is exercised.
    pub fn build_enhanced(&self) -> Result<DicomInstance, SyntheticError> {
        use dicom_core::value::DataSetSequence;
        let classic = self.build()?;
        let first = classic.first().ok_or(SyntheticError::Empty)?;
        let item = |elements: Vec<DataElement<InMemDicomObject>>| {
            InMemDicomObject::from_element_iter(elements)
        };
        let seq = |items: Vec<InMemDicomObject>| DataSetSequence::from(items);
        let get = |obj: &InMemDicomObject, tag| obj.get(tag).cloned();
        let rescale = crate::pixels::Rescale::of(first);
        let shared = item(
            [
                DataElement::new(
                    tags::PIXEL_MEASURES_SEQUENCE,
                    VR::SQ,
                    seq(vec![item(
                        [
                            get(first, tags::PIXEL_SPACING),
                            get(first, tags::SLICE_THICKNESS),
                        ]
                        .into_iter()
                        .flatten()
                        .collect(),
                    )]),
                ),
                DataElement::new(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    VR::SQ,
                    seq(vec![item(
                        get(first, tags::IMAGE_ORIENTATION_PATIENT)
                            .into_iter()
                            .collect(),
                    )]),
                ),
            ]
            .into(),
        );
        let mut per_frame = Vec::new();
        let mut pixels: Vec<u16> = Vec::new();
        for (k, instance) in classic.iter().enumerate() {
            let transform = item(vec![
                DataElement::new(
                    tags::RESCALE_INTERCEPT,
                    VR::DS,
                    format!("{}", rescale.intercept - k as f64),
                ),
                DataElement::new(tags::RESCALE_SLOPE, VR::DS, format!("{}", rescale.slope)),
                DataElement::new(tags::RESCALE_TYPE, VR::LO, "US"),
            ]);
            per_frame.push(item(vec![
                DataElement::new(
                    tags::PLANE_POSITION_SEQUENCE,
                    VR::SQ,
                    seq(vec![item(
                        get(instance, tags::IMAGE_POSITION_PATIENT)
                            .into_iter()
                            .collect(),
                    )]),
                ),
                DataElement::new(
                    tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                    VR::SQ,
                    seq(vec![transform]),
                ),
            ]));
            let bytes = instance
                .get(tags::PIXEL_DATA)
                .and_then(|e| e.to_bytes().ok())
                .ok_or(SyntheticError::Empty)?;
            pixels.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            );
        }
        let class = match self.modality {
            Modality::Ct => uids::ENHANCED_CT_IMAGE_STORAGE,
            Modality::Mr => uids::ENHANCED_MR_IMAGE_STORAGE,
            Modality::Pet => uids::ENHANCED_PET_IMAGE_STORAGE,
        };
        let sop_uid = new_uid();
        let mut obj = InMemDicomObject::from_element_iter(first.iter().cloned());
        for per_slice in [
            tags::IMAGE_POSITION_PATIENT,
            tags::IMAGE_ORIENTATION_PATIENT,
            tags::PIXEL_SPACING,
            tags::SLICE_THICKNESS,
            tags::RESCALE_INTERCEPT,
            tags::RESCALE_SLOPE,
            tags::RESCALE_TYPE,
        ] {
            obj.remove_element(per_slice);
        }
        obj.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, class));
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            sop_uid.as_str(),
        ));
        obj.put(DataElement::new(tags::INSTANCE_NUMBER, VR::IS, "1"));
        obj.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            classic.len().to_string(),
        ));
        obj.put(DataElement::new(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            VR::SQ,
            seq(vec![shared]),
        ));
        obj.put(DataElement::new(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            VR::SQ,
            seq(per_frame),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        obj.with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(sop_uid),
        )
        .map_err(|e| SyntheticError::WithMeta(Box::new(e)))
    }

    /// Builds the instances and writes them as `<dir>/<series number>_<instance>.dcm`.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, SyntheticError> {
        std::fs::create_dir_all(dir).map_err(|source| SyntheticError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let frame_of_reference = new_uid();
        let mut paths = Vec::new();
        for n in 1..=self.slices {
            let obj = self.instance(n, &frame_of_reference)?;
            let path = dir.join(format!(
                "{}_{}_{:04}.dcm",
                crate::sanitize::path_component(&self.patient_id),
                self.series_number,
                n
            ));
            obj.write_to_file(&path)
                .map_err(|source| SyntheticError::Write {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            paths.push(path);
        }
        Ok(paths)
    }

    fn instance(&self, n: u32, frame_of_reference: &str) -> Result<DicomInstance, SyntheticError> {
        let (sop_class, modality, pixel_representation, description) = match self.modality {
            Modality::Ct => (uids::CT_IMAGE_STORAGE, "CT", 1u16, "Synthetic CT"),
            Modality::Mr => (uids::MR_IMAGE_STORAGE, "MR", 0u16, "Synthetic MR"),
            Modality::Pet => (
                uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
                "PT",
                0u16,
                "Synthetic PET",
            ),
        };
        let z = f64::from(n) * 2.5;
        let mut obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
            DataElement::new(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, sop_class),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, new_uid()),
            DataElement::new(tags::STUDY_DATE, VR::DA, "20260101"),
            DataElement::new(tags::STUDY_TIME, VR::TM, "120000"),
            DataElement::new(tags::ACCESSION_NUMBER, VR::SH, ""),
            DataElement::new(tags::MODALITY, VR::CS, modality),
            DataElement::new(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
            DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, description),
            DataElement::new(tags::PATIENT_NAME, VR::PN, self.patient_name.as_str()),
            DataElement::new(tags::PATIENT_ID, VR::LO, self.patient_id.as_str()),
            DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
            DataElement::new(tags::PATIENT_SEX, VR::CS, "O"),
            DataElement::new(tags::SLICE_THICKNESS, VR::DS, "2.5"),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid.as_str()),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, self.series_uid.as_str()),
            DataElement::new(tags::STUDY_ID, VR::SH, "1"),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, self.series_number.to_string()),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, n.to_string()),
            DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                format!("-250\\-250\\{z}"),
            ),
            DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
            DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, frame_of_reference),
            DataElement::new(tags::IMAGES_IN_ACQUISITION, VR::IS, self.slices.to_string()),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.columns)),
            DataElement::new(tags::PIXEL_SPACING, VR::DS, "0.9765625\\0.9765625"),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(pixel_representation),
            ),
        ]);
        if self.modality == Modality::Ct {
            obj.put(DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "-1024"));
            obj.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"));
            obj.put(DataElement::new(tags::RESCALE_TYPE, VR::LO, "HU"));
        }
        if self.modality == Modality::Pet {
            obj.put(DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, "0"));
            obj.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, "0.5"));
            obj.put(DataElement::new(tags::UNITS, VR::CS, "BQML"));
            obj.put(DataElement::new(tags::DECAY_CORRECTION, VR::CS, "START"));
            obj.put(DataElement::new(tags::PATIENT_WEIGHT, VR::DS, "75"));
            obj.put(DataElement::new(tags::SERIES_DATE, VR::DA, "20260101"));
            obj.put(DataElement::new(tags::SERIES_TIME, VR::TM, "120000"));
            obj.put(DataElement::new(tags::ACQUISITION_DATE, VR::DA, "20260101"));
            obj.put(DataElement::new(tags::ACQUISITION_TIME, VR::TM, "120000"));
            let drug = InMemDicomObject::from_element_iter([
                DataElement::new(tags::RADIOPHARMACEUTICAL_START_TIME, VR::TM, "110000"),
                DataElement::new(tags::RADIONUCLIDE_TOTAL_DOSE, VR::DS, "370000000"),
                DataElement::new(tags::RADIONUCLIDE_HALF_LIFE, VR::DS, "6586.2"),
            ]);
            obj.put(DataElement::new(
                tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE,
                VR::SQ,
                dicom_core::value::DataSetSequence::from(vec![drug]),
            ));
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(self.pixels(n).into()),
        ));
        obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|e| SyntheticError::WithMeta(Box::new(e)))
    }

    /// A sphere phantom with a little deterministic noise, different for each slice.
    fn pixels(&self, n: u32) -> Vec<u16> {
        let (rows, cols) = (usize::from(self.rows), usize::from(self.columns));
        let centre = (rows as f64 / 2.0, cols as f64 / 2.0);
        let radius = rows.min(cols) as f64 * 0.4;
        let mut state = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state % 16) as u16;
                let (dr, dc) = (r as f64 - centre.0, c as f64 - centre.1);
                let inside = dr * dr + dc * dc < radius * radius;
                out.push(if inside { 1064 } else { 24 } + noise);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_valid_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let ct = SyntheticSeries::ct("P1", 2).size(8, 8);
        let mr = ct.next_series(Modality::Mr, 1);
        let paths = ct.write_to(dir.path()).unwrap();
        mr.write_to(dir.path()).unwrap();
        let obj = dicom_object::open_file(&paths[1]).unwrap();
        assert_eq!(
            obj.element(tags::PATIENT_ID).unwrap().to_str().unwrap(),
            "P1"
        );
        assert_eq!(
            obj.element(tags::INSTANCE_NUMBER)
                .unwrap()
                .to_str()
                .unwrap(),
            "2"
        );
        assert_eq!(
            obj.element(tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .len(),
            128
        );
        assert_ne!(ct.series_uid, mr.series_uid);
        assert_eq!(ct.study_uid, mr.study_uid);
        assert!(new_uid().len() <= 64);
    }
}

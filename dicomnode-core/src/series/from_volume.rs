//! Derived series from a volume: one classic instance per slice, with the volume's
//! geometry and references to the source slices; masks as series too.

use super::{
    finish, header_without_pixels, put, put_grey_pixels, DerivedSeries, GreyPixels, StoredAs,
};
use crate::input::value_of;
use crate::volume::{Units, Volume};
use crate::{DicomInstance, ProcessError};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use ndarray::{Array3, Axis};

/// The classic storage class that holds one frame of an enhanced one.
fn classic_class(sop_class: &str) -> &str {
    match sop_class {
        uids::ENHANCED_CT_IMAGE_STORAGE => uids::CT_IMAGE_STORAGE,
        uids::ENHANCED_MR_IMAGE_STORAGE => uids::MR_IMAGE_STORAGE,
        uids::ENHANCED_PET_IMAGE_STORAGE => uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
        other => other,
    }
}

fn ds_list(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| super::format_ds(*v)).collect())
}

fn sequence(items: Vec<InMemDicomObject>) -> dicom_core::value::Value<InMemDicomObject> {
    DataSetSequence::new(items, Length::UNDEFINED).into()
}

impl DerivedSeries {
    /// A derived series with `values` (same shape as `volume`) in the volume's units: one
    /// instance per slice, each with the header of its source slice (patient, study,
    /// frame of reference), the volume's geometry, new UIDs, the stored values chosen by
    /// [`StoredAs`], SourceImageSequence and ReferencedSeriesSequence pointing at the
    /// source. `sources` must hold the volume's instances. Slices of enhanced
    /// multi-frame sources become classic instances (Enhanced CT becomes CT, and so on).
    pub fn from_volume(
        &self,
        volume: &Volume,
        values: &Array3<f32>,
        sources: &[DicomInstance],
    ) -> Result<Vec<DicomInstance>, ProcessError> {
        if values.shape() != volume.data.shape() {
            return Err(ProcessError::new(format!(
                "values have the shape {:?}, the volume {:?}",
                values.shape(),
                volume.data.shape()
            )));
        }
        let (stored_of, signed, slope, intercept) = self.encoding(values);
        self.write(volume, sources, values, |slice| GreyPixels {
            stored: PrimitiveValue::U16(slice.iter().map(|&v| stored_of(v)).collect()),
            bits: 16,
            signed,
            slope,
            intercept,
        })
    }

    /// A mask or label series: `labels` (same shape as `volume`) stored as unsigned
    /// 16-bit values with slope 1 (0 for background, 1.. for labels), one instance per
    /// slice with the volume's geometry, as [`DerivedSeries::from_volume`].
    pub fn mask(
        &self,
        volume: &Volume,
        labels: &Array3<u16>,
        sources: &[DicomInstance],
    ) -> Result<Vec<DicomInstance>, ProcessError> {
        if labels.shape() != volume.data.shape() {
            return Err(ProcessError::new(format!(
                "labels have the shape {:?}, the volume {:?}",
                labels.shape(),
                volume.data.shape()
            )));
        }
        let mut out = self.write(volume, sources, labels, |slice| GreyPixels {
            stored: PrimitiveValue::U16(slice.iter().copied().collect()),
            bits: 16,
            signed: false,
            slope: 1.0,
            intercept: 0.0,
        })?;
        for instance in &mut out {
            instance.put(DataElement::new(
                tags::IMAGE_TYPE,
                VR::CS,
                PrimitiveValue::Strs(
                    ["DERIVED", "SECONDARY", "MASK"]
                        .into_iter()
                        .map(String::from)
                        .collect(),
                ),
            ));
            instance.put(DataElement::new(tags::RESCALE_TYPE, VR::LO, "US"));
            instance.remove_element(tags::UNITS);
        }
        Ok(out)
    }

    /// How values become stored values: the function, signedness, slope and intercept.
    fn encoding(&self, values: &Array3<f32>) -> (impl Fn(f32) -> u16, bool, f64, f64) {
        let (signed, slope, intercept) = match self.stored_as {
            StoredAs::Signed16 => (true, 1.0, 0.0),
            StoredAs::Unsigned16 => (false, 1.0, 0.0),
            StoredAs::Fitted => {
                let (slope, intercept) = super::fitted_rescale(values.iter().copied());
                (false, slope, intercept)
            }
        };
        let stored_of = move |v: f32| -> u16 {
            let v = if v.is_finite() {
                f64::from(v)
            } else {
                intercept
            };
            let s = ((v - intercept) / slope).round();
            if signed {
                s.clamp(-32768.0, 32767.0) as i16 as u16
            } else {
                s.clamp(0.0, 65535.0) as u16
            }
        };
        (stored_of, signed, slope, intercept)
    }

    fn write<T>(
        &self,
        volume: &Volume,
        sources: &[DicomInstance],
        values: &Array3<T>,
        pixels: impl Fn(ndarray::ArrayView2<T>) -> GreyPixels,
    ) -> Result<Vec<DicomInstance>, ProcessError> {
        let series_uid = self.next_series_uid();
        let [row_dir, col_dir, _] = volume.direction;
        let orientation = ds_list(&[
            row_dir[0], row_dir[1], row_dir[2], col_dir[0], col_dir[1], col_dir[2],
        ]);
        let (rows, columns) = (volume.data.shape()[1], volume.data.shape()[2]);
        let mut out = Vec::with_capacity(volume.slices.len());
        for (k, (slice, plane)) in volume
            .slices
            .iter()
            .zip(values.axis_iter(Axis(0)))
            .enumerate()
        {
            let source = sources
                .iter()
                .find(|i| {
                    value_of(i, tags::SOP_INSTANCE_UID).as_deref() == Some(&slice.sop_instance_uid)
                })
                .ok_or_else(|| {
                    ProcessError::new(format!(
                        "the source instance {} of slice {} is not among the sources given",
                        slice.sop_instance_uid,
                        k + 1
                    ))
                })?;
            let mut obj = header_without_pixels(source);
            for multi_frame in [
                tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
                tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
                tags::NUMBER_OF_FRAMES,
                tags::FRAME_INCREMENT_POINTER,
            ] {
                obj.remove_element(multi_frame);
            }
            put(
                &mut obj,
                tags::SOP_CLASS_UID,
                VR::UI,
                classic_class(&slice.sop_class_uid).into(),
            );
            let sop_uid = self.new_uid();
            self.identify(&mut obj, &series_uid, &sop_uid, &(k + 1).to_string());
            put(
                &mut obj,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                ds_list(&slice.position),
            );
            put(
                &mut obj,
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                orientation.clone(),
            );
            put(
                &mut obj,
                tags::PIXEL_SPACING,
                VR::DS,
                ds_list(&[volume.spacing[1], volume.spacing[2]]),
            );
            put(
                &mut obj,
                tags::SPACING_BETWEEN_SLICES,
                VR::DS,
                ds_list(&[volume.spacing[0]]),
            );
            put(&mut obj, tags::ROWS, VR::US, (rows as u16).into());
            put(&mut obj, tags::COLUMNS, VR::US, (columns as u16).into());
            if volume.units == Units::SuvBw {
                put(&mut obj, tags::UNITS, VR::CS, "GML".into());
            }
            let mut reference = InMemDicomObject::new_empty();
            reference.put(DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                slice.sop_class_uid.as_str(),
            ));
            reference.put(DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                slice.sop_instance_uid.as_str(),
            ));
            if let Some(frame) = slice.frame {
                reference.put(DataElement::new(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    (frame + 1).to_string(),
                ));
            }
            obj.put(DataElement::new(
                tags::SOURCE_IMAGE_SEQUENCE,
                VR::SQ,
                sequence(vec![reference.clone()]),
            ));
            let mut series_ref = InMemDicomObject::new_empty();
            series_ref.put(DataElement::new(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                volume.series_instance_uid.as_str(),
            ));
            series_ref.put(DataElement::new(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                VR::SQ,
                sequence(vec![reference]),
            ));
            obj.put(DataElement::new(
                tags::REFERENCED_SERIES_SEQUENCE,
                VR::SQ,
                sequence(vec![series_ref]),
            ));
            put_grey_pixels(&mut obj, pixels(plane));
            out.push(finish(obj, &sop_uid)?);
        }
        Ok(out)
    }
}

//! Building a derived series from a source series: the processor's usual result.
//!
//! ```
//! use dicomnode_core::series::{DerivedSeries, PixelBuffer};
//! use dicomnode_core::{pixels, synthetic::SyntheticSeries};
//!
//! let source = SyntheticSeries::ct("P", 2).size(4, 4).build().unwrap();
//! let derived = DerivedSeries::new("Plus one", 1001)
//!     .build(&source, |instance| {
//!         let hu = pixels::rescaled(instance)?;
//!         Ok(PixelBuffer::F32(hu.into_iter().map(|v| v + 1.0).collect()))
//!     })
//!     .unwrap();
//! assert_eq!(derived.len(), 2);
//! let before = pixels::rescaled(&source[0]).unwrap();
//! let after = pixels::rescaled(&derived[0]).unwrap();
//! assert!(before.iter().zip(&after).all(|(b, a)| (a - b - 1.0).abs() < 1e-3));
//! ```

use crate::input::value_of;
mod documents;
mod from_volume;

use crate::pixels::PixelError;
use crate::{DicomInstance, ProcessError};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// New pixel values for one instance, in real-world units (after rescale).
#[derive(Debug, Clone, PartialEq)]
pub enum PixelBuffer {
    /// Signed integers, written as they are (slope 1, intercept 0).
    I16(Vec<i16>),
    /// Unsigned integers, written as they are (slope 1, intercept 0).
    U16(Vec<u16>),
    /// Reals, written as unsigned 16-bit stored values with a slope and intercept chosen so
    /// that every value round-trips (exactly for integers within a 65 536 range, else within
    /// half a step).
    F32(Vec<f32>),
}

impl PixelBuffer {
    fn len(&self) -> usize {
        match self {
            PixelBuffer::I16(v) => v.len(),
            PixelBuffer::U16(v) => v.len(),
            PixelBuffer::F32(v) => v.len(),
        }
    }

    /// Stored values, pixel representation (0 unsigned, 1 signed), slope, intercept.
    fn encode(&self) -> (Vec<u16>, u16, f64, f64) {
        match self {
            PixelBuffer::I16(v) => (v.iter().map(|&x| x as u16).collect(), 1, 1.0, 0.0),
            PixelBuffer::U16(v) => (v.clone(), 0, 1.0, 0.0),
            PixelBuffer::F32(v) => {
                let (slope, intercept) = fitted_rescale(v.iter().copied());
                let min = intercept;
                let stored = v
                    .iter()
                    .map(|&x| {
                        let x = if x.is_finite() { f64::from(x) } else { min };
                        ((x - intercept) / slope).round().clamp(0.0, 65535.0) as u16
                    })
                    .collect();
                (stored, 0, slope, intercept)
            }
        }
    }
}

/// The slope and intercept that fit real values into unsigned 16-bit stored values: slope
/// 1 when they are integers within a 65 536 range (exact), else the range spread over
/// 65 535 steps; the intercept is the smallest finite value (0 when there is none).
pub(crate) fn fitted_rescale(values: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let (min, max) = values
        .clone()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    let (min, max) = if min.is_finite() {
        (min, max)
    } else {
        (0.0, 0.0)
    };
    let integral = values
        .into_iter()
        .all(|v| v.fract() == 0.0 || !v.is_finite());
    let slope = if integral && max - min <= 65535.0 {
        1.0
    } else if max > min {
        (max - min) / 65535.0
    } else {
        1.0
    };
    (slope, min)
}

/// How to derive a series: its description and number, and the root of its new UIDs.
#[derive(Debug, Clone)]
pub struct DerivedSeries {
    description: String,
    series_number: u32,
    uid_root: Option<String>,
    derivation: Option<String>,
    stored_as: StoredAs,
    series_uid: Option<String>,
}

/// How a derived series stores real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoredAs {
    /// Unsigned 16-bit values with a slope and intercept computed from the data's range
    /// (slope 1 when the values are integers within a 65 536 range).
    #[default]
    Fitted,
    /// Signed 16-bit values, slope 1, intercept 0 (values rounded and clamped).
    Signed16,
    /// Unsigned 16-bit values, slope 1, intercept 0 (values rounded and clamped).
    Unsigned16,
}

impl DerivedSeries {
    /// A derived series with this SeriesDescription and SeriesNumber; UIDs are `2.25.<UUID>`.
    pub fn new(description: impl Into<String>, series_number: u32) -> Self {
        DerivedSeries {
            description: description.into(),
            series_number,
            uid_root: None,
            derivation: None,
            stored_as: StoredAs::Fitted,
            series_uid: None,
        }
    }

    /// DerivationDescription (0008,2111): how the values were made, in words.
    pub fn derivation(mut self, text: impl Into<String>) -> Self {
        self.derivation = Some(text.into());
        self
    }

    /// Uses this SeriesInstanceUID (e.g. to put several screenshots in one series)
    /// instead of a new one for each call.
    pub fn series_uid(mut self, uid: impl Into<String>) -> Self {
        self.series_uid = Some(uid.into());
        self
    }

    /// The SeriesInstanceUID for the next instances: the one set, else a new one.
    pub(crate) fn next_series_uid(&self) -> String {
        self.series_uid.clone().unwrap_or_else(|| self.new_uid())
    }

    /// How real values are stored (see [`StoredAs`]); used by [`DerivedSeries::from_volume`].
    pub fn stored_as(mut self, stored_as: StoredAs) -> Self {
        self.stored_as = stored_as;
        self
    }

    /// Makes new UIDs under an organisation's root (`<root>.<UUID as integer>`, cut to
    /// 64 characters); the root should be short (at most 24 characters).
    pub fn uid_root(mut self, root: impl Into<String>) -> Self {
        self.uid_root = Some(root.into());
        self
    }

    /// A new UID under the configured root.
    pub fn new_uid(&self) -> String {
        match &self.uid_root {
            None => crate::synthetic::new_uid(),
            Some(root) => {
                let mut uid = format!(
                    "{}.{}",
                    root.trim_end_matches('.'),
                    uuid::Uuid::new_v4().as_u128()
                );
                uid.truncate(64);
                uid.trim_end_matches('.').to_string()
            }
        }
    }

    /// Builds one derived instance per source instance, with pixels from `pixels`.
    ///
    /// Patient, study and geometry attributes are kept; the series gets a new
    /// SeriesInstanceUID, each instance a new SOPInstanceUID; ImageType becomes
    /// DERIVED\SECONDARY; the pixel module is rewritten for 16-bit single-sample data.
    pub fn build<F>(
        &self,
        source: &[DicomInstance],
        mut pixels: F,
    ) -> Result<Vec<DicomInstance>, ProcessError>
    where
        F: FnMut(&DicomInstance) -> Result<PixelBuffer, PixelError>,
    {
        let series_uid = self.next_series_uid();
        let mut out = Vec::with_capacity(source.len());
        for (index, instance) in source.iter().enumerate() {
            let buffer = pixels(instance)?;
            out.push(self.derive_one(instance, &buffer, &series_uid, index)?);
        }
        Ok(out)
    }

    fn derive_one(
        &self,
        source: &DicomInstance,
        buffer: &PixelBuffer,
        series_uid: &str,
        index: usize,
    ) -> Result<DicomInstance, ProcessError> {
        let rows = value_of(source, tags::ROWS).and_then(|v| v.parse::<usize>().ok());
        let columns = value_of(source, tags::COLUMNS).and_then(|v| v.parse::<usize>().ok());
        let frames = value_of(source, tags::NUMBER_OF_FRAMES)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1);
        let (Some(rows), Some(columns)) = (rows, columns) else {
            return Err(ProcessError::new("source instance lacks Rows or Columns"));
        };
        let needed = rows
            .checked_mul(columns)
            .and_then(|n| n.checked_mul(frames));
        if needed != Some(buffer.len()) {
            return Err(ProcessError::new(format!(
                "pixel buffer has {} values, the image {rows}x{columns}x{frames} needs {}",
                buffer.len(),
                needed.map_or_else(|| "more than can be counted".to_string(), |n| n.to_string())
            )));
        }
        let (stored, representation, slope, intercept) = buffer.encode();
        let mut obj = header_without_pixels(source);
        let instance_number =
            value_of(source, tags::INSTANCE_NUMBER).unwrap_or_else(|| (index + 1).to_string());
        let sop_uid = self.new_uid();
        self.identify(&mut obj, series_uid, &sop_uid, &instance_number);
        put_grey_pixels(
            &mut obj,
            GreyPixels {
                stored: PrimitiveValue::U16(stored.into()),
                bits: 16,
                signed: representation == 1,
                slope,
                intercept,
            },
        );
        finish(obj, &sop_uid)
    }

    /// Sets the identity of a derived instance: new SOP Instance and Series UIDs, number,
    /// description, ImageType DERIVED\SECONDARY and the derivation description.
    pub(crate) fn identify(
        &self,
        obj: &mut InMemDicomObject,
        series_uid: &str,
        sop_uid: &str,
        instance_number: &str,
    ) {
        put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid.into());
        put(obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid.into());
        put(
            obj,
            tags::SERIES_NUMBER,
            VR::IS,
            self.series_number.to_string().into(),
        );
        put(
            obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            self.description.clone().into(),
        );
        put(obj, tags::INSTANCE_NUMBER, VR::IS, instance_number.into());
        put(
            obj,
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["DERIVED".to_string(), "SECONDARY".to_string()].into()),
        );
        if let Some(derivation) = &self.derivation {
            put(
                obj,
                tags::DERIVATION_DESCRIPTION,
                VR::ST,
                derivation.clone().into(),
            );
        }
    }
}

pub(crate) fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: PrimitiveValue) {
    obj.put(DataElement::new(tag, vr, value));
}

/// Every element of `source` but its pixel data.
pub(crate) fn header_without_pixels(source: &DicomInstance) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(
        source
            .iter()
            .filter(|e| e.header().tag != tags::PIXEL_DATA)
            .cloned(),
    )
}

/// Grey-scale stored values and how they map to real-world values.
pub(crate) struct GreyPixels {
    pub stored: PrimitiveValue,
    pub bits: u16,
    pub signed: bool,
    pub slope: f64,
    pub intercept: f64,
}

/// Writes the image pixel module of a single-sample grey-scale image.
pub(crate) fn put_grey_pixels(obj: &mut InMemDicomObject, pixels: GreyPixels) {
    put(obj, tags::SAMPLES_PER_PIXEL, VR::US, 1u16.into());
    put(
        obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2".into(),
    );
    put(obj, tags::BITS_ALLOCATED, VR::US, pixels.bits.into());
    put(obj, tags::BITS_STORED, VR::US, pixels.bits.into());
    put(obj, tags::HIGH_BIT, VR::US, (pixels.bits - 1).into());
    put(
        obj,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        u16::from(pixels.signed).into(),
    );
    put(
        obj,
        tags::RESCALE_SLOPE,
        VR::DS,
        format_ds(pixels.slope).into(),
    );
    put(
        obj,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        format_ds(pixels.intercept).into(),
    );
    for stale in [
        tags::SMALLEST_IMAGE_PIXEL_VALUE,
        tags::LARGEST_IMAGE_PIXEL_VALUE,
        tags::WINDOW_CENTER,
        tags::WINDOW_WIDTH,
        tags::PLANAR_CONFIGURATION,
        tags::MODALITY_LUT_SEQUENCE,
        tags::VOILUT_SEQUENCE,
        tags::VOILUT_FUNCTION,
        tags::PIXEL_PADDING_VALUE,
        tags::PIXEL_PADDING_RANGE_LIMIT,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
    ] {
        obj.remove_element(stale);
    }
    let vr = if pixels.bits == 8 { VR::OB } else { VR::OW };
    put(obj, tags::PIXEL_DATA, vr, pixels.stored);
}

/// The Part-10 instance of `obj`, in Explicit VR Little Endian.
pub(crate) fn finish(obj: InMemDicomObject, sop_uid: &str) -> Result<DicomInstance, ProcessError> {
    let sop_class = value_of(&obj, tags::SOP_CLASS_UID)
        .ok_or_else(|| ProcessError::new("source instance lacks SOPClassUID"))?;
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid);
    obj.with_meta(meta).map_err(ProcessError::from)
}

/// A decimal string of at most 16 characters (the DS limit) that parses back to `value`
/// as closely as 16 characters allow.
fn format_ds(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    for precision in (0..=15).rev() {
        let text = format!("{value:.precision$}");
        if text.len() <= 16 {
            return text;
        }
    }
    format!("{value:.6e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixels;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn integer_and_real_buffers_round_trip() {
        let source = SyntheticSeries::ct("P", 1).size(2, 2).build().unwrap();
        for buffer in [
            PixelBuffer::I16(vec![-1024, 0, 1, 3071]),
            PixelBuffer::U16(vec![0, 1, 65535, 7]),
            PixelBuffer::F32(vec![-1023.0, 1.0, 2.0, 3072.0]),
            PixelBuffer::F32(vec![0.125, -3.5, 1e4, 2.75]),
        ] {
            let derived = DerivedSeries::new("t", 9)
                .uid_root("1.2.826.0.1.3680043.9.9999")
                .build(&source, |_| Ok(buffer.clone()))
                .unwrap();
            let values = pixels::rescaled(&derived[0]).unwrap();
            let wanted: Vec<f32> = match &buffer {
                PixelBuffer::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
                PixelBuffer::U16(v) => v.iter().map(|&x| f32::from(x)).collect(),
                PixelBuffer::F32(v) => v.clone(),
            };
            for (got, want) in values.iter().zip(&wanted) {
                assert!((got - want).abs() <= 0.1, "{got} vs {want} in {buffer:?}");
            }
            let uid = value_of(&derived[0], tags::SOP_INSTANCE_UID).unwrap();
            assert!(uid.starts_with("1.2.826.0.1.3680043.9.9999.") && uid.len() <= 64);
            assert_ne!(
                value_of(&derived[0], tags::SERIES_INSTANCE_UID),
                value_of(&source[0], tags::SERIES_INSTANCE_UID)
            );
            assert_eq!(
                value_of(&derived[0], tags::STUDY_INSTANCE_UID),
                value_of(&source[0], tags::STUDY_INSTANCE_UID)
            );
        }
    }

    #[test]
    fn a_wrong_sized_buffer_is_an_error() {
        let source = SyntheticSeries::ct("P", 1).size(2, 2).build().unwrap();
        let err = DerivedSeries::new("t", 1)
            .build(&source, |_| Ok(PixelBuffer::U16(vec![1, 2, 3])))
            .unwrap_err();
        assert!(err.message().contains("needs 4"), "{err}");
    }
}

//! Typed access to native (uncompressed) pixel data, with the modality rescale applied.
//!
//! ```
//! use dicomnode_core::{pixels, synthetic::SyntheticSeries};
//! let ct = &SyntheticSeries::ct("P", 1).size(4, 4).build().unwrap()[0];
//! let hu = pixels::rescaled(ct).unwrap();
//! assert_eq!(hu.len(), 16);
//! assert!(hu.iter().all(|v| (-1000.0..=60.0).contains(v))); // air and water-ish
//! ```

use crate::input::value_of;
use crate::DicomInstance;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Why pixel values could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PixelError {
    /// The pixel data are compressed; decoding is not supported yet.
    #[error("pixel data in transfer syntax {0} are compressed: only native pixel data can be read (decompress first, e.g. with dcmdjpeg)")]
    Compressed(String),
    /// An attribute needed to read the pixels is missing or invalid.
    #[error("cannot read pixels: {0} is missing or invalid")]
    Attribute(&'static str),
    /// A layout this reader does not handle.
    #[error("cannot read pixels: {0}")]
    Unsupported(String),
}

/// How stored values map to real-world values (PS3.3 C.11.1: `value = stored * slope + intercept`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    /// RescaleSlope (1 if absent).
    pub slope: f64,
    /// RescaleIntercept (0 if absent).
    pub intercept: f64,
}

impl Rescale {
    /// The rescale of an instance.
    pub fn of(instance: &DicomInstance) -> Rescale {
        let number = |tag| value_of(instance, tag).and_then(|v| v.parse::<f64>().ok());
        Rescale {
            slope: number(tags::RESCALE_SLOPE).unwrap_or(1.0),
            intercept: number(tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        }
    }
}

/// The stored pixel values of a native single-sample image (all frames), as i32.
pub fn stored(instance: &DicomInstance) -> Result<Vec<i32>, PixelError> {
    let ts_uid = crate::uid::trim_uid(instance.meta().transfer_syntax());
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| PixelError::Unsupported(format!("unknown transfer syntax {ts_uid}")))?;
    if ts.is_encapsulated_pixel_data() {
        return Err(PixelError::Compressed(ts_uid.to_string()));
    }
    let number = |tag, name| {
        value_of(instance, tag)
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or(PixelError::Attribute(name))
    };
    let samples = number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
    if samples != 1 {
        return Err(PixelError::Unsupported(format!(
            "{samples} samples per pixel (only 1 is supported)"
        )));
    }
    let bits = number(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let signed = number(tags::PIXEL_REPRESENTATION, "PixelRepresentation")? == 1;
    let bytes = instance
        .element(tags::PIXEL_DATA)
        .map_err(|_| PixelError::Attribute("PixelData"))?
        .to_bytes()
        .map_err(|_| PixelError::Attribute("PixelData"))?;
    let big_endian = ts.endianness() == dicom_encoding::transfer_syntax::Endianness::Big;
    Ok(match (bits, signed) {
        (8, false) => bytes.iter().map(|&b| i32::from(b)).collect(),
        (8, true) => bytes.iter().map(|&b| i32::from(b as i8)).collect(),
        (16, _) => bytes
            .chunks_exact(2)
            .map(|c| {
                let raw = if big_endian {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                };
                if signed {
                    i32::from(raw as i16)
                } else {
                    i32::from(raw)
                }
            })
            .collect(),
        (other, _) => {
            return Err(PixelError::Unsupported(format!(
                "{other} bits allocated (8 and 16 are supported)"
            )))
        }
    })
}

/// The pixel values in real-world units (e.g. Hounsfield units for CT): stored values with
/// RescaleSlope and RescaleIntercept applied.
pub fn rescaled(instance: &DicomInstance) -> Result<Vec<f32>, PixelError> {
    let rescale = Rescale::of(instance);
    Ok(stored(instance)?
        .into_iter()
        .map(|v| (f64::from(v) * rescale.slope + rescale.intercept) as f32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn compressed_pixel_data_is_a_clear_error() {
        let mut ct = SyntheticSeries::ct("P", 1)
            .size(2, 2)
            .build()
            .unwrap()
            .remove(0);
        ct.meta_mut()
            .set_transfer_syntax(&dicom_transfer_syntax_registry::entries::JPEG_BASELINE);
        let error = rescaled(&ct).unwrap_err();
        assert!(matches!(error, PixelError::Compressed(_)));
        assert!(
            error.to_string().contains("1.2.840.10008.1.2.4.50"),
            "{error}"
        );
    }

    #[test]
    fn signed_values_are_rescaled() {
        let ct = SyntheticSeries::ct("P", 1)
            .size(2, 2)
            .build()
            .unwrap()
            .remove(0);
        let stored = stored(&ct).unwrap();
        let hu = rescaled(&ct).unwrap();
        for (s, h) in stored.iter().zip(&hu) {
            assert_eq!(*h, *s as f32 - 1024.0);
        }
    }
}

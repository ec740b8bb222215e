//! Pixel data: decoding every transfer syntax into typed samples ([`decode`]), stored
//! values and real-world values of grey-scale images ([`stored`], [`rescaled`]), and
//! re-encoding an instance in Explicit VR Little Endian ([`decompressed`]).
//!
//! ```
//! use dicomnode_core::{pixels, synthetic::SyntheticSeries};
//! let ct = &SyntheticSeries::ct("P", 1).size(4, 4).build().unwrap()[0];
//! let hu = pixels::rescaled(ct).unwrap();
//! assert_eq!(hu.len(), 16);
//! assert!(hu.iter().all(|v| (-1000.0..=60.0).contains(v))); // air and water-ish
//! ```

mod color;
mod decode;
mod layout;
mod samples;
mod transcode;

pub use decode::{decode, decode_frame, Image, Photometric};
pub(crate) use layout::Layout;
pub use samples::Samples;
pub use transcode::decompressed;

use crate::input::value_of;
use crate::DicomInstance;
use dicom_dictionary_std::tags;

/// Why pixel values could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PixelError {
    /// The transfer syntax is not one this build knows.
    #[error("unknown transfer syntax {0}: its pixel data cannot be decoded")]
    UnknownTransferSyntax(String),
    /// The transfer syntax is known, but no decoder for it is built in.
    #[error("no decoder for transfer syntax {name} ({uid}): its pixel data cannot be decoded (decompress it first, e.g. with DCMTK's dcmdjpeg or gdcmconv --raw)")]
    NoDecoder {
        /// The transfer syntax UID.
        uid: String,
        /// Its name.
        name: String,
    },
    /// The codec failed on these data.
    #[error("cannot decode pixel data in {transfer_syntax}")]
    Decode {
        /// The transfer syntax, name and UID.
        transfer_syntax: String,
        /// The codec's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The pixel data are shorter than the image attributes say.
    #[error("pixel data hold {found} bytes, the image attributes need {expected}")]
    Truncated {
        /// Bytes needed.
        expected: usize,
        /// Bytes there.
        found: usize,
    },
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
    /// The rescale of an instance: its own RescaleSlope and RescaleIntercept, else those of
    /// the shared functional groups (enhanced multi-frame), else slope 1 and intercept 0.
    pub fn of(instance: &DicomInstance) -> Rescale {
        Rescale::in_object(instance)
            .or_else(|| {
                crate::volume::functional::shared_item(
                    instance,
                    tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                )
                .and_then(Rescale::in_object)
            })
            .unwrap_or(Rescale {
                slope: 1.0,
                intercept: 0.0,
            })
    }

    /// RescaleSlope and RescaleIntercept of one object (a data set or a functional group
    /// item), if it has either.
    pub(crate) fn in_object(obj: &dicom_object::InMemDicomObject) -> Option<Rescale> {
        let number = |tag| {
            value_of(obj, tag)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|x| x.is_finite())
        };
        let slope = number(tags::RESCALE_SLOPE);
        let intercept = number(tags::RESCALE_INTERCEPT);
        if slope.is_none() && intercept.is_none() {
            return None;
        }
        Some(Rescale {
            slope: slope.unwrap_or(1.0),
            intercept: intercept.unwrap_or(0.0),
        })
    }

    /// The real-world value of a stored value.
    pub fn apply(&self, stored: f64) -> f64 {
        stored * self.slope + self.intercept
    }
}

fn monochrome(instance: &DicomInstance) -> Result<Image, PixelError> {
    let image = decode(instance)?;
    if image.samples_per_pixel != 1 {
        return Err(PixelError::Unsupported(format!(
            "{} samples per pixel (grey-scale values need 1; use pixels::decode for colour)",
            image.samples_per_pixel
        )));
    }
    Ok(image)
}

/// The stored values of a single-sample image (all frames), as i32, whatever its transfer
/// syntax.
pub fn stored(instance: &DicomInstance) -> Result<Vec<i32>, PixelError> {
    monochrome(instance)?.samples.to_i32()
}

/// The pixel values in real-world units (e.g. Hounsfield units for CT): stored values with
/// RescaleSlope and RescaleIntercept applied; for an enhanced multi-frame instance, each
/// frame's own (its functional group's, else the shared one's).
pub fn rescaled(instance: &DicomInstance) -> Result<Vec<f32>, PixelError> {
    let image = monochrome(instance)?;
    let common = Rescale::of(instance);
    let per_frame = image.frame_len();
    let mut out = Vec::with_capacity(image.samples.len());
    for frame in 0..image.frames as usize {
        let rescale = crate::volume::functional::frame_item(
            instance,
            frame,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        )
        .and_then(Rescale::in_object)
        .unwrap_or(common);
        let start = frame * per_frame;
        image
            .samples
            .extend_mapped(start..start + per_frame, &mut out, |v| {
                rescale.apply(v) as f32
            });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticSeries;

    #[test]
    fn native_data_labelled_compressed_is_a_decode_error_naming_the_syntax() {
        let mut ct = SyntheticSeries::ct("P", 1)
            .size(2, 2)
            .build()
            .unwrap()
            .remove(0);
        ct.meta_mut()
            .set_transfer_syntax(&dicom_transfer_syntax_registry::entries::JPEG_BASELINE);
        let error = rescaled(&ct).unwrap_err();
        let text = crate::error::error_chain(&error);
        assert!(matches!(error, PixelError::Decode { .. }), "{text}");
        assert!(text.contains("1.2.840.10008.1.2.4.50"), "{text}");
    }

    #[test]
    fn a_syntax_without_decoder_is_named() {
        let mut ct = SyntheticSeries::ct("P", 1)
            .size(2, 2)
            .build()
            .unwrap()
            .remove(0);
        ct.meta_mut().set_transfer_syntax(
            &dicom_transfer_syntax_registry::entries::MPEG2_MAIN_PROFILE_MAIN_LEVEL,
        );
        let error = rescaled(&ct).unwrap_err();
        assert!(matches!(error, PixelError::NoDecoder { .. }), "{error}");
        assert!(
            error.to_string().contains("1.2.840.10008.1.2.4.100"),
            "{error}"
        );
    }

    #[test]
    fn truncated_native_data_is_an_error_not_a_panic() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let mut ct = SyntheticSeries::ct("P", 1)
            .size(4, 4)
            .build()
            .unwrap()
            .remove(0);
        ct.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![1u16; 5].into()),
        ));
        assert!(matches!(
            decode(&ct).unwrap_err(),
            PixelError::Truncated {
                expected: 32,
                found: 10
            }
        ));
        assert!(decode_frame(&ct, 1).is_err());
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

//! Re-encoding an instance with native pixel data, for peers that do not accept its own
//! transfer syntax.

use super::decode::{decode, Photometric};
use super::samples::Samples;
use super::PixelError;
use crate::DicomInstance;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// The instance in Explicit VR Little Endian with native pixel data: compressed data are
/// decoded (colour as interleaved RGB), native data are kept as they are. The SOP Instance
/// UID is unchanged; a lossy source keeps LossyImageCompression "01".
pub fn decompressed(instance: &DicomInstance) -> Result<DicomInstance, PixelError> {
    let ts_uid = crate::uid::trim_uid(instance.meta().transfer_syntax()).to_string();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| PixelError::UnknownTransferSyntax(ts_uid.clone()))?;
    let mut out = instance.clone();
    if ts.is_encapsulated_pixel_data() {
        let image = decode(instance)?;
        let (vr, value) = match image.samples {
            Samples::U8(v) => (VR::OB, PrimitiveValue::U8(v.into())),
            Samples::I8(v) => (
                VR::OB,
                PrimitiveValue::U8(v.iter().map(|&x| x as u8).collect()),
            ),
            Samples::U16(v) => (VR::OW, PrimitiveValue::U16(v.into())),
            Samples::I16(v) => (VR::OW, PrimitiveValue::I16(v.into())),
            Samples::U32(v) => (VR::OL, PrimitiveValue::U32(v.into())),
            Samples::I32(v) => (VR::OL, PrimitiveValue::I32(v.into())),
        };
        out.put(DataElement::new(tags::PIXEL_DATA, vr, value));
        // They index fragments that no longer exist.
        out.remove_element(tags::EXTENDED_OFFSET_TABLE);
        out.remove_element(tags::EXTENDED_OFFSET_TABLE_LENGTHS);
        if image.photometric == Photometric::Rgb {
            out.put(DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("RGB"),
            ));
            out.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        if is_lossy(&ts_uid) {
            out.put(DataElement::new(
                tags::LOSSY_IMAGE_COMPRESSION,
                VR::CS,
                PrimitiveValue::from("01"),
            ));
        }
    }
    out.meta_mut()
        .set_transfer_syntax(&dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN);
    Ok(out)
}

/// Whether a transfer syntax may lose information (JPEG baseline and extended, JPEG-LS
/// near-lossless, JPEG 2000 and HTJ2K that allow lossy coding, video, JPEG XL).
pub(crate) fn is_lossy(ts_uid: &str) -> bool {
    matches!(
        ts_uid,
        "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.81"
            | "1.2.840.10008.1.2.4.91"
            | "1.2.840.10008.1.2.4.93"
            | "1.2.840.10008.1.2.4.203"
            | "1.2.840.10008.1.2.4.111"
            | "1.2.840.10008.1.2.4.112"
    ) || ts_uid.starts_with("1.2.840.10008.1.2.4.10")
}

//! Decoding an instance's pixel data, native or compressed, into typed samples.
//!
//! Native data (implicit/explicit little endian, explicit big endian, deflated) are read
//! here; encapsulated data go through dicom-rs's codecs (RLE, JPEG, JPEG-LS, JPEG 2000 and
//! HTJ2K). Either way the result has the same shape: samples of the stored type, colour by
//! pixel (planar configuration 0), YBR converted to RGB, bits above BitsStored cleared (or
//! sign-extended), and every length checked against Rows × Columns × frames.

use super::color;
use super::layout::Layout;
use super::samples::Samples;
use super::PixelError;
use crate::DicomInstance;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// How the samples of an image are to be seen (PS3.3 C.7.6.3.1.2), after decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Photometric {
    /// One sample per pixel; the lowest value is shown white.
    Monochrome1,
    /// One sample per pixel; the lowest value is shown black.
    Monochrome2,
    /// One sample per pixel, an index into the palette (the palette is not applied).
    PaletteColor,
    /// Three samples per pixel, red, green, blue (YBR data are converted to this).
    Rgb,
    /// Anything else, by its DICOM name.
    Other(String),
}

impl Photometric {
    fn parse(name: &str) -> Photometric {
        match name.trim() {
            "MONOCHROME1" => Photometric::Monochrome1,
            "MONOCHROME2" => Photometric::Monochrome2,
            "PALETTE COLOR" => Photometric::PaletteColor,
            "RGB" => Photometric::Rgb,
            other => Photometric::Other(other.to_string()),
        }
    }

    /// Whether this is a single-sample grey-scale interpretation.
    pub fn is_monochrome(&self) -> bool {
        matches!(self, Photometric::Monochrome1 | Photometric::Monochrome2)
    }
}

/// One instance's decoded pixel data.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Rows of each frame.
    pub rows: u32,
    /// Columns of each frame.
    pub columns: u32,
    /// Frames decoded (all of the instance's, or the one asked for).
    pub frames: u32,
    /// 1 (grey or palette) or 3 (RGB).
    pub samples_per_pixel: u16,
    /// The interpretation of the decoded samples (YBR has become RGB).
    pub photometric: Photometric,
    /// BitsStored of the instance.
    pub bits_stored: u16,
    /// Whether the samples are signed (PixelRepresentation 1).
    pub signed: bool,
    /// The samples, frame after frame, row after row, colour by pixel.
    pub samples: Samples,
}

impl Image {
    /// The number of samples in one frame.
    pub fn frame_len(&self) -> usize {
        self.rows as usize * self.columns as usize * usize::from(self.samples_per_pixel)
    }
}

/// Decodes every frame of an instance.
pub fn decode(instance: &DicomInstance) -> Result<Image, PixelError> {
    decode_frames(instance, None)
}

/// Decodes one frame (0-based) of an instance.
pub fn decode_frame(instance: &DicomInstance, frame: u32) -> Result<Image, PixelError> {
    decode_frames(instance, Some(frame))
}

fn decode_frames(instance: &DicomInstance, frame: Option<u32>) -> Result<Image, PixelError> {
    let layout = Layout::of(instance)?;
    if let Some(frame) = frame {
        if frame >= layout.frames {
            return Err(PixelError::Unsupported(format!(
                "frame {frame} asked for, the instance has {}",
                layout.frames
            )));
        }
    }
    let ts_uid = crate::uid::trim_uid(instance.meta().transfer_syntax()).to_string();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| PixelError::UnknownTransferSyntax(ts_uid.clone()))?;
    let frames = if frame.is_some() { 1 } else { layout.frames };
    let encapsulated = ts.is_encapsulated_pixel_data();
    let (bytes, photometric, planar) = if encapsulated {
        let bytes = decode_encapsulated(instance, &ts_uid, ts.name(), frame)?;
        // The codecs hand back colour by pixel. JPEG and JPEG 2000 convert YBR themselves;
        // RLE and JPEG-LS hand back the samples as coded.
        let converts_colour = ts_uid.starts_with("1.2.840.10008.1.2.4.5")
            || ts_uid.starts_with("1.2.840.10008.1.2.4.7")
            || ts_uid.starts_with("1.2.840.10008.1.2.4.9")
            || ts_uid.starts_with("1.2.840.10008.1.2.4.20");
        let photometric = if layout.samples_per_pixel == 3 && converts_colour {
            "RGB".to_string()
        } else {
            layout.photometric.clone()
        };
        (bytes, photometric, false)
    } else if layout.subsampled() {
        let bytes = native_bytes(instance, &layout, frame)?;
        let bytes = color::expand_422(&bytes, &layout, frames)?;
        (bytes, "YBR_FULL".to_string(), false)
    } else {
        (
            native_bytes(instance, &layout, frame)?,
            layout.photometric.clone(),
            layout.planar,
        )
    };
    let count = frames as usize * layout.frame_samples();
    // Native data may hold their bits above bit 0 (HighBit); codecs hand them back from bit 0.
    let shift = if encapsulated {
        0
    } else {
        u32::from(layout.high_bit + 1 - layout.bits_stored)
    };
    let samples = to_samples(&bytes, &layout, count, shift)?;
    let (samples, photometric) = if layout.samples_per_pixel == 3 {
        color::to_rgb(samples, &photometric, planar, layout.frame_samples())?
    } else {
        (samples, photometric)
    };
    Ok(Image {
        rows: layout.rows,
        columns: layout.columns,
        frames,
        samples_per_pixel: layout.samples_per_pixel,
        photometric: Photometric::parse(&photometric),
        bits_stored: layout.bits_stored,
        signed: layout.signed,
        samples,
    })
}

/// The native pixel bytes of all frames or one, as little-endian samples.
fn native_bytes(
    instance: &DicomInstance,
    layout: &Layout,
    frame: Option<u32>,
) -> Result<Vec<u8>, PixelError> {
    let element = instance
        .element(tags::PIXEL_DATA)
        .map_err(|_| PixelError::Attribute("PixelData"))?;
    let bytes = match element.value() {
        Value::Primitive(p) => p.to_bytes(),
        _ => return Err(PixelError::Attribute("PixelData")),
    };
    let frame_bytes = layout.frame_bytes();
    let (start, len) = match frame {
        Some(f) if layout.bits_allocated != 1 => (f as usize * frame_bytes, frame_bytes),
        Some(_) => (0, bytes.len()), // packed bits: unpack all, cut below
        None => (0, frame_bytes * layout.frames as usize),
    };
    let wanted = if layout.bits_allocated == 1 {
        (layout.frame_samples() * layout.frames as usize).div_ceil(8)
    } else {
        start + len
    };
    if bytes.len() < wanted {
        return Err(PixelError::Truncated {
            expected: wanted,
            found: bytes.len(),
        });
    }
    if layout.bits_allocated == 1 {
        let per_frame = layout.frame_samples();
        let (first, count) = match frame {
            Some(f) => (f as usize * per_frame, per_frame),
            None => (0, per_frame * layout.frames as usize),
        };
        return Ok((first..first + count)
            .map(|bit| (bytes[bit / 8] >> (bit % 8)) & 1)
            .collect());
    }
    Ok(bytes[start..start + len].to_vec())
}

fn decode_encapsulated(
    instance: &DicomInstance,
    ts_uid: &str,
    ts_name: &str,
    frame: Option<u32>,
) -> Result<Vec<u8>, PixelError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| PixelError::UnknownTransferSyntax(ts_uid.to_string()))?;
    if !ts.can_decode_all() {
        return Err(PixelError::NoDecoder {
            uid: ts_uid.to_string(),
            name: ts_name.to_string(),
        });
    }
    // A codec written in C or by someone else may panic on hostile data: that is this
    // instance's decoding error, not the end of the process.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match frame {
        Some(f) => instance.decode_pixel_data_frame(f).map(|d| d.into_data()),
        None => instance.decode_pixel_data().map(|d| d.into_data()),
    }));
    match decoded {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(source)) => Err(PixelError::Decode {
            transfer_syntax: format!("{ts_name} ({ts_uid})"),
            source: Box::new(source),
        }),
        Err(_) => Err(PixelError::Decode {
            transfer_syntax: format!("{ts_name} ({ts_uid})"),
            source: "the decoder panicked on this data".into(),
        }),
    }
}

/// Typed samples from little-endian bytes, with bits above BitsStored cleared or
/// sign-extended.
fn to_samples(
    bytes: &[u8],
    layout: &Layout,
    count: usize,
    shift: u32,
) -> Result<Samples, PixelError> {
    let width = if layout.bits_allocated == 1 {
        1
    } else {
        usize::from(layout.bits_allocated / 8)
    };
    if bytes.len() < count * width {
        return Err(PixelError::Truncated {
            expected: count * width,
            found: bytes.len(),
        });
    }
    let bytes = &bytes[..count * width];
    let stored = u32::from(layout.bits_stored);
    let unsigned = |raw: u32| -> u32 {
        let raw = raw >> shift;
        if stored >= 32 {
            raw
        } else {
            raw & ((1u32 << stored) - 1)
        }
    };
    let signed = |raw: u32| -> i32 {
        let raw = raw >> shift;
        if stored >= 32 {
            raw as i32
        } else {
            let shift = 32 - stored;
            ((raw << shift) as i32) >> shift
        }
    };
    Ok(match (width, layout.signed) {
        (1, false) => Samples::U8(
            bytes
                .iter()
                .map(|&b| unsigned(u32::from(b)) as u8)
                .collect(),
        ),
        (1, true) => Samples::I8(bytes.iter().map(|&b| signed(u32::from(b)) as i8).collect()),
        (2, false) => Samples::U16(
            bytes
                .chunks_exact(2)
                .map(|c| unsigned(u32::from(u16::from_le_bytes([c[0], c[1]]))) as u16)
                .collect(),
        ),
        (2, true) => Samples::I16(
            bytes
                .chunks_exact(2)
                .map(|c| signed(u32::from(u16::from_le_bytes([c[0], c[1]]))) as i16)
                .collect(),
        ),
        (4, false) => Samples::U32(
            bytes
                .chunks_exact(4)
                .map(|c| unsigned(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        (4, true) => Samples::I32(
            bytes
                .chunks_exact(4)
                .map(|c| signed(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        _ => {
            return Err(PixelError::Unsupported(format!(
                "{} bits allocated",
                layout.bits_allocated
            )))
        }
    })
}

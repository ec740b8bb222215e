//! The image pixel module of an instance: size, frames, samples, bits, colour.

use super::PixelError;
use crate::input::value_of;
use crate::DicomInstance;
use dicom_dictionary_std::tags;

/// The attributes that describe the pixel module of an instance.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub planar: bool,
    pub photometric: String,
    pub high_bit: u16,
}

/// The largest decoded size of one instance's pixel data, in bytes.
pub(crate) const MAX_DECODED_BYTES: u64 = 64 << 30;

impl Layout {
    pub(crate) fn of(instance: &DicomInstance) -> Result<Layout, PixelError> {
        let number = |tag, name| {
            value_of(instance, tag)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or(PixelError::Attribute(name))
        };
        let rows = number(tags::ROWS, "Rows")?;
        let columns = number(tags::COLUMNS, "Columns")?;
        let frames = match value_of(instance, tags::NUMBER_OF_FRAMES) {
            None => 1,
            Some(v) if v.trim().is_empty() => 1,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| PixelError::Attribute("NumberOfFrames"))?,
        };
        let samples_per_pixel = number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
        let bits_allocated = number(tags::BITS_ALLOCATED, "BitsAllocated")?;
        let bits_stored = number(tags::BITS_STORED, "BitsStored").unwrap_or(bits_allocated);
        let signed = number(tags::PIXEL_REPRESENTATION, "PixelRepresentation")? == 1;
        let planar = number(tags::PLANAR_CONFIGURATION, "PlanarConfiguration").unwrap_or(0) == 1;
        let photometric = value_of(instance, tags::PHOTOMETRIC_INTERPRETATION)
            .map(|v| v.trim().to_string())
            .ok_or(PixelError::Attribute("PhotometricInterpretation"))?;
        if rows == 0 || columns == 0 || frames == 0 {
            return Err(PixelError::Unsupported(format!(
                "an empty image ({rows} rows, {columns} columns, {frames} frames)"
            )));
        }
        if !matches!(samples_per_pixel, 1 | 3) {
            return Err(PixelError::Unsupported(format!(
                "{samples_per_pixel} samples per pixel (1 and 3 are supported)"
            )));
        }
        if !matches!(bits_allocated, 1 | 8 | 16 | 32) {
            return Err(PixelError::Unsupported(format!(
                "{bits_allocated} bits allocated (1, 8, 16 and 32 are supported)"
            )));
        }
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(PixelError::Attribute("BitsStored"));
        }
        // A HighBit that cannot hold BitsStored bits is ignored (bits taken from bit 0).
        let high_bit = number(tags::HIGH_BIT, "HighBit")
            .ok()
            .filter(|&h| h + 1 >= bits_stored && h < bits_allocated)
            .unwrap_or(bits_stored - 1);
        // Every size derived from these attributes below is computed in usize: bound the
        // decoded size first (4 bytes a sample at most), so that no product overflows.
        let decoded = [columns, samples_per_pixel, 4, frames]
            .iter()
            .try_fold(u64::from(rows), |acc, &n| acc.checked_mul(u64::from(n)))
            .filter(|&bytes| bytes <= MAX_DECODED_BYTES && usize::try_from(bytes).is_ok());
        if decoded.is_none() {
            return Err(PixelError::Unsupported(format!(
                "an image of {rows} rows, {columns} columns, {samples_per_pixel} samples and {frames} frames is larger than {} GiB decoded",
                MAX_DECODED_BYTES >> 30
            )));
        }
        Ok(Layout {
            rows,
            columns,
            frames,
            samples_per_pixel: samples_per_pixel as u16,
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            signed,
            planar,
            photometric,
            high_bit: high_bit as u16,
        })
    }

    pub(crate) fn frame_samples(&self) -> usize {
        self.rows as usize * self.columns as usize * usize::from(self.samples_per_pixel)
    }

    /// Whether native data hold two luminance and one pair of chrominance samples for each
    /// two pixels (YBR_FULL_422).
    pub(crate) fn subsampled(&self) -> bool {
        self.samples_per_pixel == 3 && self.photometric == "YBR_FULL_422"
    }

    /// Bytes of one frame as stored natively (1-bit data packed).
    pub(crate) fn frame_bytes(&self) -> usize {
        if self.subsampled() {
            self.rows as usize * self.columns as usize * 2 * usize::from(self.bits_allocated / 8)
        } else if self.bits_allocated == 1 {
            self.frame_samples().div_ceil(8)
        } else {
            self.frame_samples() * usize::from(self.bits_allocated / 8)
        }
    }
}

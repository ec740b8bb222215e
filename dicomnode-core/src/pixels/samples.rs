//! Decoded samples, typed as the instance stores them.

use super::PixelError;

/// Decoded samples, of the type the instance stores (BitsAllocated, PixelRepresentation).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Samples {
    /// 1 or 8 bits allocated, unsigned (1-bit data are unpacked to 0 and 1).
    U8(Vec<u8>),
    /// 8 bits allocated, signed.
    I8(Vec<i8>),
    /// 16 bits allocated, unsigned.
    U16(Vec<u16>),
    /// 16 bits allocated, signed.
    I16(Vec<i16>),
    /// 32 bits allocated, unsigned.
    U32(Vec<u32>),
    /// 32 bits allocated, signed.
    I32(Vec<i32>),
}

macro_rules! each_samples {
    ($samples:expr, $v:ident => $body:expr) => {
        match $samples {
            Samples::U8($v) => $body,
            Samples::I8($v) => $body,
            Samples::U16($v) => $body,
            Samples::I16($v) => $body,
            Samples::U32($v) => $body,
            Samples::I32($v) => $body,
        }
    };
}

impl Samples {
    /// The number of samples.
    pub fn len(&self) -> usize {
        each_samples!(self, v => v.len())
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` as an `f64` (exact for every stored type).
    pub fn get(&self, index: usize) -> Option<f64> {
        each_samples!(self, v => v.get(index).map(|&x| f64::from(x)))
    }

    /// Every sample in `range` converted with `f(value)` into `out` (appended).
    ///
    /// # Panics
    /// If `range` reaches past the samples (as slicing does).
    pub fn extend_mapped(
        &self,
        range: std::ops::Range<usize>,
        out: &mut Vec<f32>,
        f: impl Fn(f64) -> f32,
    ) {
        each_samples!(self, v => out.extend(v[range].iter().map(|&x| f(f64::from(x)))))
    }

    /// The samples as `i32`; unsigned 32-bit values above `i32::MAX` are an error.
    pub fn to_i32(&self) -> Result<Vec<i32>, PixelError> {
        Ok(match self {
            Samples::U8(v) => v.iter().map(|&x| i32::from(x)).collect(),
            Samples::I8(v) => v.iter().map(|&x| i32::from(x)).collect(),
            Samples::U16(v) => v.iter().map(|&x| i32::from(x)).collect(),
            Samples::I16(v) => v.iter().map(|&x| i32::from(x)).collect(),
            Samples::I32(v) => v.clone(),
            Samples::U32(v) => v
                .iter()
                .map(|&x| i32::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    PixelError::Unsupported(
                        "unsigned 32-bit values above 2^31-1 do not fit i32 (use decode)".into(),
                    )
                })?,
        })
    }
}

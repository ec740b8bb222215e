//! A series as a 3-D array in the modality's units, with its geometry.
//!
//! ```
//! use dicomnode_core::{synthetic::SyntheticSeries, volume::Volume};
//! let ct = SyntheticSeries::ct("P", 3).size(8, 8).build().unwrap();
//! let volume = Volume::of(&ct).unwrap();
//! assert_eq!(volume.data.shape(), &[3, 8, 8]);
//! assert_eq!(volume.units.as_str(), "HU");
//! ```

pub(crate) mod functional;
mod geometry;
mod suv;

pub use suv::SuvError;

use crate::input::value_of;
use crate::pixels::{self, PixelError};
use crate::DicomInstance;
use dicom_dictionary_std::tags;
use geometry::SliceHeader;
use ndarray::{Array3, Axis};

/// Why a volume could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// No instances.
    #[error("no instances to build a volume from")]
    Empty,
    /// The instances belong to more than one series.
    #[error("the instances belong to {} series ({}): build one volume per series (see dicomnode_core::selection)", .0.len(), .0.join(", "))]
    MixedSeries(Vec<String>),
    /// An attribute the geometry needs is missing or invalid.
    #[error("{attribute} is missing or invalid in {instance}")]
    MissingAttribute {
        /// The attribute.
        attribute: &'static str,
        /// The instance's SOP Instance UID.
        instance: String,
    },
    /// Some slices differ from the first in size, orientation or spacing.
    #[error("slices differ in {what} from {reference}: {}", instances.join(", "))]
    Inconsistent {
        /// What differs.
        what: &'static str,
        /// The slice compared with.
        reference: String,
        /// The slices that differ.
        instances: Vec<String>,
    },
    /// Two or more slices share a position.
    #[error("slices share a position: {}", instances.join(", "))]
    DuplicatePositions {
        /// The slices, in pairs.
        instances: Vec<String>,
    },
    /// The steps between slices are irregular (a missing slice, or a different spacing).
    #[error("irregular slice spacing: {}", gaps.iter().map(|g| g.to_string()).collect::<Vec<_>>().join("; "))]
    Gaps {
        /// Each irregular step.
        gaps: Vec<Gap>,
    },
    /// A slice's pixels could not be read.
    #[error("cannot read the pixels of {instance}")]
    Pixels {
        /// The slice.
        instance: String,
        /// Why.
        #[source]
        source: PixelError,
    },
    /// The volume does not fit in memory.
    #[error("a volume of {slices} slices of {rows}×{columns} does not fit in memory")]
    TooLarge {
        /// Slices.
        slices: usize,
        /// Rows.
        rows: usize,
        /// Columns.
        columns: usize,
    },
    /// SUV was required and cannot be computed.
    #[error(transparent)]
    Suv(#[from] SuvError),
}

/// An irregular step between two neighbouring slices.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// The slice before the step.
    pub after: String,
    /// The slice after the step.
    pub before: String,
    /// The step, in mm along the normal.
    pub distance: f64,
    /// The usual step (the median), in mm.
    pub expected: f64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} mm between {} and {} where {:.3} mm is usual",
            self.distance, self.after, self.before, self.expected
        )
    }
}

/// The units of a volume's values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Units {
    /// Hounsfield units (CT).
    Hounsfield,
    /// Standardized uptake value, body weight (PET).
    SuvBw,
    /// Another unit, by its DICOM name (PET Units, RescaleType), or `"US"` (unspecified).
    Other(String),
}

impl Units {
    /// `"HU"`, `"SUVbw"`, or the unit's DICOM name.
    pub fn as_str(&self) -> &str {
        match self {
            Units::Hounsfield => "HU",
            Units::SuvBw => "SUVbw",
            Units::Other(name) => name,
        }
    }
}

/// Whether PET values become SUVbw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SuvMode {
    /// SUVbw when the tags allow it; otherwise the stored unit, and the reason in
    /// [`Volume::notes`].
    #[default]
    WhenPossible,
    /// SUVbw or an error naming the missing tag.
    Required,
    /// Never: PET values stay in their stored unit (Bq/ml).
    Off,
}

/// Value statistics of a volume, in its units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistics {
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// The mean, summed in f64.
    pub mean: f64,
}

/// Where a slice of a volume came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSource {
    /// The SOP Instance UID of its instance.
    pub sop_instance_uid: String,
    /// The SOP Class UID of its instance.
    pub sop_class_uid: String,
    /// The frame (0-based) for a multi-frame instance.
    pub frame: Option<u32>,
    /// Its ImagePositionPatient.
    pub position: [f64; 3],
}

/// How to build a volume: SUV, the spacing tolerance, and whether gaps are allowed.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    suv: SuvMode,
    tolerance: f64,
    allow_gaps: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            suv: SuvMode::WhenPossible,
            tolerance: 0.01,
            allow_gaps: false,
        }
    }
}

impl VolumeOptions {
    /// Default options: SUV when possible, 1 % spacing tolerance, gaps are an error.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether PET values become SUVbw.
    pub fn suv(mut self, mode: SuvMode) -> Self {
        self.suv = mode;
        self
    }

    /// How far (relative) a step between slices may differ from the usual one.
    pub fn tolerance(mut self, relative: f64) -> Self {
        self.tolerance = relative.abs();
        self
    }

    /// Build a volume despite irregular steps, reporting them in [`Volume::gaps`] (the
    /// slices are stacked as they are; the spacing is the usual step).
    pub fn allow_gaps(mut self, allow: bool) -> Self {
        self.allow_gaps = allow;
        self
    }

    /// Builds the volume of `instances` (one series).
    pub fn build<'a>(
        &self,
        instances: impl IntoIterator<Item = &'a DicomInstance>,
    ) -> Result<Volume, VolumeError> {
        build(instances.into_iter().collect(), self)
    }
}

/// One series as a 3-D array of `f32` in the modality's units, with its geometry.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The values, `[slice, row, column]`, slices ascending along the normal.
    pub data: Array3<f32>,
    /// ImagePositionPatient of the first slice (the centre of its first voxel), in mm.
    pub origin: [f64; 3],
    /// `[between slices, between rows, between columns]` in mm; between slices is the
    /// step of the positions along the normal, not SliceThickness.
    pub spacing: [f64; 3],
    /// `[row direction, column direction, normal]`, unit vectors in patient coordinates
    /// (the row direction is the first triplet of ImageOrientationPatient).
    pub direction: [[f64; 3]; 3],
    /// The source of each slice, in the order of `data`.
    pub slices: Vec<SliceSource>,
    /// The units of `data`.
    pub units: Units,
    /// Modality of the series.
    pub modality: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// FrameOfReferenceUID, if the instances carry one.
    pub frame_of_reference_uid: Option<String>,
    /// Irregular steps, when they were allowed.
    pub gaps: Vec<Gap>,
    /// What the builder chose not to do, and why (e.g. SUV not possible).
    pub notes: Vec<String>,
}

impl Volume {
    /// The volume of one series with default [`VolumeOptions`].
    pub fn of<'a>(
        instances: impl IntoIterator<Item = &'a DicomInstance>,
    ) -> Result<Volume, VolumeError> {
        VolumeOptions::default().build(instances)
    }

    /// `[slices, rows, columns]`.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// Minimum, maximum and mean (summed in f64) over every voxel; NaN for an empty
    /// volume.
    pub fn statistics(&self) -> Statistics {
        let (mut min, mut max, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0f64);
        for &v in &self.data {
            min = min.min(v);
            max = max.max(v);
            sum += f64::from(v);
        }
        if self.data.is_empty() {
            return Statistics {
                min: f64::NAN,
                max: f64::NAN,
                mean: f64::NAN,
            };
        }
        Statistics {
            min: f64::from(min),
            max: f64::from(max),
            mean: sum / self.data.len() as f64,
        }
    }

    /// The patient position (mm) of voxel `[slice, row, column]`.
    pub fn position_of(&self, index: [usize; 3]) -> [f64; 3] {
        let [k, r, c] = index.map(|v| v as f64);
        let [row_dir, col_dir, normal] = self.direction;
        std::array::from_fn(|i| {
            self.origin[i]
                + c * self.spacing[2] * row_dir[i]
                + r * self.spacing[1] * col_dir[i]
                + k * self.spacing[0] * normal[i]
        })
    }
}

fn build(instances: Vec<&DicomInstance>, options: &VolumeOptions) -> Result<Volume, VolumeError> {
    let first = *instances.first().ok_or(VolumeError::Empty)?;
    let mut series: Vec<String> = instances
        .iter()
        .map(|i| value_of(i, tags::SERIES_INSTANCE_UID).unwrap_or_default())
        .collect();
    series.sort();
    series.dedup();
    if series.len() > 1 {
        return Err(VolumeError::MixedSeries(series));
    }
    let mut slices = geometry::slices_of(&instances)?;
    let geometry = geometry::sort_and_check(&mut slices, options.tolerance, options.allow_gaps)?;
    let modality = value_of(first, tags::MODALITY).unwrap_or_default();
    let mut notes = Vec::new();
    let (units, factors) = units_and_factors(first, &modality, &slices, options, &mut notes)?;
    let data = read_slices(&slices, &factors)?;
    Ok(Volume {
        data,
        origin: slices[0].position,
        spacing: geometry.spacing,
        direction: geometry.direction,
        slices: slices
            .iter()
            .map(|s| SliceSource {
                sop_instance_uid: s.sop_instance_uid.clone(),
                sop_class_uid: value_of(s.instance, tags::SOP_CLASS_UID).unwrap_or_default(),
                frame: s.frame,
                position: s.position,
            })
            .collect(),
        units,
        modality,
        series_instance_uid: series.pop().unwrap_or_default(),
        frame_of_reference_uid: value_of(first, tags::FRAME_OF_REFERENCE_UID),
        gaps: geometry.gaps,
        notes,
    })
}

/// The volume's units and a factor per slice applied after the rescale.
fn units_and_factors(
    first: &DicomInstance,
    modality: &str,
    slices: &[SliceHeader<'_>],
    options: &VolumeOptions,
    notes: &mut Vec<String>,
) -> Result<(Units, Vec<f64>), VolumeError> {
    let ones = vec![1.0; slices.len()];
    let stored_unit = || {
        value_of(first, tags::UNITS)
            .or_else(|| value_of(first, tags::RESCALE_TYPE))
            .map(Units::Other)
            .unwrap_or_else(|| Units::Other("US".into()))
    };
    match modality {
        "CT" => Ok((Units::Hounsfield, ones)),
        "PT" if options.suv != SuvMode::Off => match suv::factors(slices) {
            Ok(factors) => Ok((Units::SuvBw, factors)),
            Err(error) if options.suv == SuvMode::WhenPossible => {
                notes.push(format!("values left in the stored unit: {error}"));
                Ok((stored_unit(), ones))
            }
            Err(error) => Err(error.into()),
        },
        _ => Ok((stored_unit(), ones)),
    }
}

/// Decodes every slice into its place, on as many threads as there are cores.
fn read_slices(slices: &[SliceHeader<'_>], factors: &[f64]) -> Result<Array3<f32>, VolumeError> {
    let rows = slices[0].rows as usize;
    let columns = slices[0].columns as usize;
    let voxels = slices
        .len()
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(columns))
        .ok_or(VolumeError::TooLarge {
            slices: slices.len(),
            rows,
            columns,
        })?;
    // Asked for before any pixel is decoded: a failed allocation is an error, not an abort.
    let mut buffer: Vec<f32> = Vec::new();
    buffer
        .try_reserve_exact(voxels)
        .map_err(|_| VolumeError::TooLarge {
            slices: slices.len(),
            rows,
            columns,
        })?;
    buffer.resize(voxels, 0.0);
    let mut data = Array3::from_shape_vec((slices.len(), rows, columns), buffer).map_err(|_| {
        VolumeError::TooLarge {
            slices: slices.len(),
            rows,
            columns,
        }
    })?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(slices.len())
        .max(1);
    let per_thread = slices.len().div_ceil(threads);
    let results: Vec<Result<(), VolumeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = data
            .axis_chunks_iter_mut(Axis(0), per_thread)
            .zip(slices.chunks(per_thread).zip(factors.chunks(per_thread)))
            .map(|(mut block, (block_slices, block_factors))| {
                scope.spawn(move || {
                    let mut buffer = Vec::with_capacity(rows * columns);
                    for ((slice, factor), mut target) in block_slices
                        .iter()
                        .zip(block_factors)
                        .zip(block.axis_iter_mut(Axis(0)))
                    {
                        let image = match slice.frame {
                            Some(f) => pixels::decode_frame(slice.instance, f),
                            None => pixels::decode(slice.instance),
                        }
                        .map_err(|source| VolumeError::Pixels {
                            instance: slice.name(),
                            source,
                        })?;
                        buffer.clear();
                        let (slope, intercept) = (slice.rescale.slope, slice.rescale.intercept);
                        image
                            .samples
                            .extend_mapped(0..rows * columns, &mut buffer, |v| {
                                ((v * slope + intercept) * factor) as f32
                            });
                        for (t, v) in target.iter_mut().zip(&buffer) {
                            *t = *v;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(VolumeError::Pixels {
                        instance: "(a decoding thread)".into(),
                        source: PixelError::Unsupported("decoding panicked".into()),
                    })
                })
            })
            .collect()
    });
    for result in results {
        result?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests;

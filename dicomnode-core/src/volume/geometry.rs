//! Where each slice lies: reading positions and orientations, sorting along the normal,
//! and checking that the slices make one regular volume.

use super::functional::{frame_item, is_enhanced, numbers};
use super::{Gap, VolumeError};
use crate::input::value_of;
use crate::pixels::{Layout, Rescale};
use crate::DicomInstance;
use dicom_dictionary_std::tags;

/// One slice of a volume before its pixels are read: an instance, or one frame of an
/// enhanced multi-frame instance.
#[derive(Debug, Clone)]
pub(crate) struct SliceHeader<'a> {
    pub instance: &'a DicomInstance,
    pub frame: Option<u32>,
    pub sop_instance_uid: String,
    pub rows: u32,
    pub columns: u32,
    pub orientation: [f64; 6],
    pub position: [f64; 3],
    pub pixel_spacing: [f64; 2],
    pub rescale: Rescale,
}

impl SliceHeader<'_> {
    /// The slice's name in messages: its SOP Instance UID, and its frame if it is one.
    pub fn name(&self) -> String {
        match self.frame {
            Some(f) => format!("{} frame {}", self.sop_instance_uid, f + 1),
            None => self.sop_instance_uid.clone(),
        }
    }
}

fn fixed<const N: usize>(values: Option<Vec<f64>>) -> Option<[f64; N]> {
    values.and_then(|v| v.try_into().ok())
}

/// Every slice of every instance, in input order.
pub(crate) fn slices_of<'a>(
    instances: &[&'a DicomInstance],
) -> Result<Vec<SliceHeader<'a>>, VolumeError> {
    let mut out = Vec::new();
    for &instance in instances {
        let sop = value_of(instance, tags::SOP_INSTANCE_UID)
            .unwrap_or_else(|| "(no SOPInstanceUID)".into());
        let layout = Layout::of(instance).map_err(|source| VolumeError::Pixels {
            instance: sop.clone(),
            source,
        })?;
        let missing = |attribute: &'static str| VolumeError::MissingAttribute {
            attribute,
            instance: sop.clone(),
        };
        if layout.samples_per_pixel != 1 {
            return Err(VolumeError::Pixels {
                instance: sop.clone(),
                source: crate::pixels::PixelError::Unsupported(
                    "a volume needs grey-scale images (1 sample per pixel)".into(),
                ),
            });
        }
        if is_enhanced(instance) {
            // One functional group per frame, as PS3.3 C.7.6.16 requires: NumberOfFrames
            // alone decides nothing here (a header may claim any number).
            let groups = instance
                .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
                .and_then(|e| e.items())
                .map_or(0, |items| items.len());
            if groups != layout.frames as usize {
                return Err(missing(
                    "PerFrameFunctionalGroupsSequence (one item for each of NumberOfFrames)",
                ));
            }
            for frame in 0..layout.frames as usize {
                let orientation = frame_item(instance, frame, tags::PLANE_ORIENTATION_SEQUENCE)
                    .and_then(|i| fixed::<6>(numbers(i, tags::IMAGE_ORIENTATION_PATIENT)))
                    .ok_or_else(|| missing("ImageOrientationPatient (PlaneOrientationSequence)"))?;
                let position = frame_item(instance, frame, tags::PLANE_POSITION_SEQUENCE)
                    .and_then(|i| fixed::<3>(numbers(i, tags::IMAGE_POSITION_PATIENT)))
                    .ok_or_else(|| missing("ImagePositionPatient (PlanePositionSequence)"))?;
                let pixel_spacing = frame_item(instance, frame, tags::PIXEL_MEASURES_SEQUENCE)
                    .and_then(|i| fixed::<2>(numbers(i, tags::PIXEL_SPACING)))
                    .ok_or_else(|| missing("PixelSpacing (PixelMeasuresSequence)"))?;
                let rescale =
                    frame_item(instance, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
                        .and_then(Rescale::in_object)
                        .unwrap_or_else(|| Rescale::of(instance));
                out.push(SliceHeader {
                    instance,
                    frame: Some(frame as u32),
                    sop_instance_uid: sop.clone(),
                    rows: layout.rows,
                    columns: layout.columns,
                    orientation,
                    position,
                    pixel_spacing,
                    rescale,
                });
            }
        } else {
            if layout.frames != 1 {
                return Err(VolumeError::Pixels {
                    instance: sop.clone(),
                    source: crate::pixels::PixelError::Unsupported(format!(
                        "{} frames without functional groups: the position of each frame is unknown",
                        layout.frames
                    )),
                });
            }
            let orientation = fixed::<6>(numbers(instance, tags::IMAGE_ORIENTATION_PATIENT))
                .ok_or_else(|| missing("ImageOrientationPatient"))?;
            let position = fixed::<3>(numbers(instance, tags::IMAGE_POSITION_PATIENT))
                .ok_or_else(|| missing("ImagePositionPatient"))?;
            let pixel_spacing = fixed::<2>(numbers(instance, tags::PIXEL_SPACING))
                .ok_or_else(|| missing("PixelSpacing"))?;
            out.push(SliceHeader {
                instance,
                frame: None,
                sop_instance_uid: sop.clone(),
                rows: layout.rows,
                columns: layout.columns,
                orientation,
                position,
                pixel_spacing,
                rescale: Rescale::of(instance),
            });
        }
    }
    Ok(out)
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The geometry shared by the sorted slices.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    pub direction: [[f64; 3]; 3],
    pub spacing: [f64; 3],
    pub gaps: Vec<Gap>,
}

/// Sorts `slices` along the normal of their orientation and checks them: one size, one
/// orientation, one pixel spacing, distinct positions on one line, regular steps (within
/// `tolerance`, relative). Irregular steps are an error unless `allow_gaps`.
pub(crate) fn sort_and_check(
    slices: &mut [SliceHeader<'_>],
    tolerance: f64,
    allow_gaps: bool,
) -> Result<Geometry, VolumeError> {
    let Some(first) = slices.first().cloned() else {
        return Err(VolumeError::Empty);
    };
    let odd =
        |slices: &[SliceHeader<'_>], what: &'static str, differs: &dyn Fn(&SliceHeader) -> bool| {
            let others: Vec<String> = slices
                .iter()
                .filter(|s| differs(s))
                .map(|s| s.name())
                .collect();
            if others.is_empty() {
                Ok(())
            } else {
                Err(VolumeError::Inconsistent {
                    what,
                    reference: first.name(),
                    instances: others,
                })
            }
        };
    odd(slices, "size (rows, columns)", &|s| {
        (s.rows, s.columns) != (first.rows, first.columns)
    })?;
    odd(slices, "orientation (ImageOrientationPatient)", &|s| {
        s.orientation
            .iter()
            .zip(&first.orientation)
            .any(|(a, b)| (a - b).abs() > 1e-4)
    })?;
    odd(slices, "pixel spacing", &|s| {
        s.pixel_spacing
            .iter()
            .zip(&first.pixel_spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0))
    })?;
    let o = first.orientation;
    let row = [o[0], o[1], o[2]];
    let column = [o[3], o[4], o[5]];
    let normal = cross(row, column);
    let length = dot(normal, normal).sqrt();
    let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() <= 0.01;
    if !unit(row)
        || !unit(column)
        || dot(row, column).abs() > 0.01
        || !(0.99..=1.01).contains(&length)
    {
        return Err(VolumeError::Inconsistent {
            what: "orientation (row and column cosines are not unit and orthogonal)",
            reference: first.name(),
            instances: vec![first.name()],
        });
    }
    let normal = normal.map(|v| v / length);
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    // Sheared stacks (gantry tilt) cannot be a regular grid.
    let base = slices[0].position;
    let in_plane_limit = 0.5 * first.pixel_spacing[0].min(first.pixel_spacing[1]).max(1e-6);
    odd(
        slices,
        "positions (not on one line along the slice normal: gantry tilt?)",
        &|s| {
            let d = [
                s.position[0] - base[0],
                s.position[1] - base[1],
                s.position[2] - base[2],
            ];
            dot(d, row).abs() > in_plane_limit || dot(d, column).abs() > in_plane_limit
        },
    )?;
    let along: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let steps: Vec<f64> = along.windows(2).map(|w| w[1] - w[0]).collect();
    let duplicates: Vec<String> = steps
        .iter()
        .enumerate()
        .filter(|(_, &step)| step.abs() < 1e-3)
        .flat_map(|(i, _)| [slices[i].name(), slices[i + 1].name()])
        .collect();
    if !duplicates.is_empty() {
        return Err(VolumeError::DuplicatePositions {
            instances: duplicates,
        });
    }
    let nominal = if steps.is_empty() {
        let single = slices[0].instance;
        numbers(single, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| numbers(single, tags::SLICE_THICKNESS))
            .and_then(|v| v.first().copied())
            .filter(|v| *v > 0.0)
            .unwrap_or(1.0)
    } else {
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let gaps: Vec<Gap> = steps
        .iter()
        .enumerate()
        .filter(|(_, &step)| (step - nominal).abs() > tolerance * nominal)
        .map(|(i, &step)| Gap {
            after: slices[i].name(),
            before: slices[i + 1].name(),
            distance: step,
            expected: nominal,
        })
        .collect();
    if !gaps.is_empty() && !allow_gaps {
        return Err(VolumeError::Gaps { gaps });
    }
    Ok(Geometry {
        direction: [row, column, normal],
        spacing: [nominal, first.pixel_spacing[0], first.pixel_spacing[1]],
        gaps,
    })
}

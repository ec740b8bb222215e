//! Colour: planar to interleaved samples, YBR to RGB (PS3.3 C.7.6.3.1.2).

use super::layout::Layout;
use super::samples::Samples;
use super::PixelError;

/// Interleaves planar data and converts YBR_FULL to RGB; `frame_samples` counts the
/// samples of one frame (rows × columns × 3).
pub(crate) fn to_rgb(
    samples: Samples,
    photometric: &str,
    planar: bool,
    frame_samples: usize,
) -> Result<(Samples, String), PixelError> {
    let samples = if planar {
        interleave(samples, frame_samples)
    } else {
        samples
    };
    match photometric {
        "RGB" => Ok((samples, "RGB".to_string())),
        "YBR_FULL" => match samples {
            Samples::U8(mut v) => {
                for pixel in v.chunks_exact_mut(3) {
                    let rgb = ybr_full_to_rgb(pixel[0], pixel[1], pixel[2]);
                    pixel.copy_from_slice(&rgb);
                }
                Ok((Samples::U8(v), "RGB".to_string()))
            }
            _ => Err(PixelError::Unsupported(
                "YBR_FULL data of more than 8 bits".into(),
            )),
        },
        other => Err(PixelError::Unsupported(format!(
            "photometric interpretation {other} with 3 samples per pixel in this transfer syntax"
        ))),
    }
}

fn interleave(samples: Samples, frame_samples: usize) -> Samples {
    fn go<T: Copy + Default>(v: Vec<T>, frame_samples: usize) -> Vec<T> {
        let plane = frame_samples / 3;
        let mut out = vec![T::default(); v.len()];
        for (frame_in, frame_out) in v
            .chunks_exact(frame_samples)
            .zip(out.chunks_exact_mut(frame_samples))
        {
            for i in 0..plane {
                frame_out[3 * i] = frame_in[i];
                frame_out[3 * i + 1] = frame_in[plane + i];
                frame_out[3 * i + 2] = frame_in[2 * plane + i];
            }
        }
        out
    }
    match samples {
        Samples::U8(v) => Samples::U8(go(v, frame_samples)),
        Samples::I8(v) => Samples::I8(go(v, frame_samples)),
        Samples::U16(v) => Samples::U16(go(v, frame_samples)),
        Samples::I16(v) => Samples::I16(go(v, frame_samples)),
        Samples::U32(v) => Samples::U32(go(v, frame_samples)),
        Samples::I32(v) => Samples::I32(go(v, frame_samples)),
    }
}

/// YBR_FULL (JPEG/JFIF full-range YCbCr) to RGB, 8 bits.
fn ybr_full_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = f32::from(y);
    let cb = f32::from(cb) - 128.0;
    let cr = f32::from(cr) - 128.0;
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [
        clamp(y + 1.402 * cr),
        clamp(y - 0.344_136 * cb - 0.714_136 * cr),
        clamp(y + 1.772 * cb),
    ]
}

/// Expands native YBR_FULL_422 (Y1 Y2 Cb Cr for each two pixels of a row) to YBR_FULL.
pub(crate) fn expand_422(
    bytes: &[u8],
    layout: &Layout,
    frames: u32,
) -> Result<Vec<u8>, PixelError> {
    if layout.bits_allocated != 8 || !layout.columns.is_multiple_of(2) {
        return Err(PixelError::Unsupported(
            "YBR_FULL_422 with more than 8 bits or an odd number of columns".into(),
        ));
    }
    let pixels = layout.rows as usize * layout.columns as usize * frames as usize;
    let mut out = Vec::with_capacity(pixels * 3);
    for group in bytes.chunks_exact(4).take(pixels / 2) {
        let (y1, y2, cb, cr) = (group[0], group[1], group[2], group[3]);
        out.extend_from_slice(&[y1, cb, cr, y2, cb, cr]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_ybr_is_grey_rgb_and_primaries_land_near_their_corners() {
        assert_eq!(ybr_full_to_rgb(100, 128, 128), [100, 100, 100]);
        // Pure red in full-range YCbCr: Y 76, Cb 85, Cr 255.
        let [r, g, b] = ybr_full_to_rgb(76, 85, 255);
        assert!(r >= 253 && g <= 2 && b <= 2, "{r} {g} {b}");
    }

    #[test]
    fn planar_frames_are_interleaved_each_on_its_own() {
        // Two frames of two pixels, planar: RR GG BB per frame.
        let planar = Samples::U8(vec![1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]);
        let (rgb, name) = to_rgb(planar, "RGB", true, 6).unwrap();
        assert_eq!(name, "RGB");
        assert_eq!(
            rgb,
            Samples::U8(vec![1, 3, 5, 2, 4, 6, 11, 13, 15, 12, 14, 16])
        );
    }
}

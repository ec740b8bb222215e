//! `dicomnode volume`: read DICOM files as volumes, one per series, and print each
//! volume's geometry, units and value statistics, with the time each step took.

use anyhow::Context;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::selection::split_series;
use dicomnode_server::volume::{SuvMode, VolumeOptions};
use std::path::PathBuf;
use std::time::Instant;

/// Reads every file under `paths` and prints one volume per series; false if a series
/// could not become a volume.
pub(crate) fn volume(paths: &[PathBuf], allow_gaps: bool, suv: bool) -> anyhow::Result<bool> {
    let start = Instant::now();
    let mut instances = Vec::new();
    let mut unreadable = 0usize;
    for root in paths {
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            match open_file(entry.path()) {
                Ok(obj) => instances.push(obj),
                Err(error) => {
                    unreadable += 1;
                    eprintln!("skipping {}: {error}", entry.path().display());
                }
            }
        }
    }
    let read = start.elapsed();
    let options = VolumeOptions::new().allow_gaps(allow_gaps).suv(if suv {
        SuvMode::WhenPossible
    } else {
        SuvMode::Off
    });
    let mut ok = true;
    for series in split_series(&instances) {
        let built = Instant::now();
        match series.volume_with(&options) {
            Ok(volume) => {
                let stats = volume.statistics();
                println!(
                    "{} {}: {} slices × {} × {} in {}, spacing {:?} mm, origin {:?}, min {} max {} mean {:.4} ({} ms)",
                    series.uid,
                    volume.modality,
                    volume.shape()[0],
                    volume.shape()[1],
                    volume.shape()[2],
                    volume.units.as_str(),
                    volume.spacing,
                    volume.origin,
                    stats.min,
                    stats.max,
                    stats.mean,
                    built.elapsed().as_millis()
                );
                for gap in &volume.gaps {
                    println!("  gap: {gap}");
                }
                for note in &volume.notes {
                    println!("  note: {note}");
                }
            }
            Err(error) => {
                ok = false;
                println!(
                    "{}: {}",
                    series.uid,
                    dicomnode_server::ProcessError::from(error)
                );
            }
        }
    }
    eprintln!(
        "{} instances read in {} ms{}; total {} ms",
        instances.len(),
        read.as_millis(),
        if unreadable > 0 {
            format!(" ({unreadable} unreadable)")
        } else {
            String::new()
        },
        start.elapsed().as_millis()
    );
    Ok(ok)
}

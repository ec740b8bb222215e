//! `dicomnode deidentify` and `dicomnode reidentify`: the confidentiality profile over
//! files and folders, with progress.

use anyhow::Context;
use dicomnode_server::deidentify::{reidentify, Deidentifier, Mapping, ProfileOption};
use dicomnode_server::dicom_dictionary_std::tags;
use dicomnode_server::dicom_object::open_file;
use dicomnode_server::input::value_of;
use dicomnode_server::DicomInstance;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Every file under `input` (itself, if a file).
fn files(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot list {}", input.display()))?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Reads a DICOM file after the structure check that guards the node's receive path.
fn read(path: &Path) -> anyhow::Result<DicomInstance> {
    dicomnode_server::structure::check_file(path)?;
    Ok(open_file(path)?)
}

/// `<output>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`: input file and
/// folder names often hold names or IDs, so they are not carried over.
fn target(output: &Path, instance: &DicomInstance) -> PathBuf {
    let part = |tag| {
        dicomnode_server::sanitize::path_component(
            &value_of(instance, tag).unwrap_or_else(|| "unknown".into()),
        )
    };
    output
        .join(part(tags::STUDY_INSTANCE_UID))
        .join(part(tags::SERIES_INSTANCE_UID))
        .join(format!("{}.dcm", part(tags::SOP_INSTANCE_UID)))
}

fn write(output: &Path, instance: &DicomInstance) -> anyhow::Result<()> {
    let target = target(output, instance);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    instance.write_to_file(&target)?;
    Ok(())
}

fn bar(count: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A line for the user: above the progress bar, or on stderr when there is none.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What `deidentify` is asked to do.
pub(crate) struct DeidentifyArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub options: Vec<ProfileOption>,
    pub mapping: Option<PathBuf>,
    pub pseudonyms: Vec<(String, String)>,
    pub safe_private: Vec<String>,
    pub quiet: bool,
}

/// De-identifies every DICOM file under the input into the output folder, named by the new
/// UIDs; false if some file could not be.
pub(crate) fn deidentify(args: DeidentifyArgs) -> anyhow::Result<bool> {
    let mut mapping = match &args.mapping {
        Some(path) => Mapping::open(path)?,
        None => {
            eprintln!(
                "no --mapping FILE: replacements are not kept, results cannot be re-identified"
            );
            Mapping::random()
        }
    };
    let mut deidentifier = Deidentifier::new();
    for option in &args.options {
        deidentifier = deidentifier.with(*option);
    }
    for (id, pseudonym) in &args.pseudonyms {
        deidentifier = deidentifier.pseudonym(id, pseudonym);
    }
    for creator in &args.safe_private {
        deidentifier = deidentifier.safe_private_creator(creator);
    }
    let files = files(&args.input)?;
    let bar = bar(files.len(), args.quiet);
    let (mut done, mut failed, mut warned) = (0usize, 0usize, 0usize);
    for path in files {
        let result = read(&path).and_then(|obj| {
            let out = deidentifier.deidentify(&obj, &mut mapping)?;
            // Kept before the file is written: every written file can be re-identified,
            // even if the run is interrupted.
            mapping.save()?;
            write(&args.output, &out.instance)?;
            Ok(out.warnings)
        });
        match result {
            Ok(warnings) => {
                done += 1;
                for warning in warnings {
                    warned += 1;
                    say(&bar, format!("{}: warning: {warning}", path.display()));
                }
            }
            Err(error) => {
                failed += 1;
                say(
                    &bar,
                    format!("{}: not de-identified: {error:#}", path.display()),
                );
            }
        }
        bar.inc(1);
    }
    // The mapping is saved even when some files failed: the written ones need it.
    mapping.save()?;
    bar.finish_and_clear();
    println!(
        "{done} de-identified into {}{}{}",
        args.output.display(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        },
        if warned > 0 {
            format!(", {warned} warnings (see above)")
        } else {
            String::new()
        },
    );
    Ok(failed == 0)
}

/// Re-identifies every DICOM file under `input` into `output` with the mapping file.
pub(crate) fn reidentify_files(
    input: &Path,
    output: &Path,
    mapping: &Path,
    quiet: bool,
) -> anyhow::Result<bool> {
    if !mapping.exists() {
        anyhow::bail!("no mapping file {}", mapping.display());
    }
    let mapping = Mapping::open(mapping)?;
    let files = files(input)?;
    let bar = bar(files.len(), quiet);
    let (mut done, mut failed) = (0usize, 0usize);
    for path in files {
        let result = read(&path).and_then(|obj| write(output, &reidentify(&obj, &mapping)?));
        match result {
            Ok(()) => done += 1,
            Err(error) => {
                failed += 1;
                say(
                    &bar,
                    format!("{}: not re-identified: {error:#}", path.display()),
                );
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{done} re-identified into {}{}",
        output.display(),
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(failed == 0)
}

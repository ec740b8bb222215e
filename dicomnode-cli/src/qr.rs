//! `dicomnode find`, `get` and `move`: query/retrieve against a PACS, as the node does for
//! priors.

use dicomnode_server::input::{tag_name, value_of};
use dicomnode_server::retrieve::{self, Level, Progress, QrOptions, Query};
use dicomnode_server::Address;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};

/// `dicomnode find`: prints the answers as a table (or JSON lines).
pub(crate) fn find(
    pacs: &Address,
    options: &QrOptions,
    level: Level,
    keys: &[String],
    json: bool,
) -> anyhow::Result<bool> {
    let mut query = Query::new(level);
    for key in keys {
        query = query.parse_key(key)?;
    }
    let start = Instant::now();
    let answers = retrieve::find(pacs, options, &query)?;
    let columns = query.keys();
    if json {
        for answer in &answers {
            let row: serde_json::Map<String, serde_json::Value> = columns
                .iter()
                .map(|&tag| {
                    (
                        keyword(tag),
                        value_of(answer, tag).map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            println!("{}", serde_json::Value::Object(row));
        }
    } else {
        let header: Vec<String> = columns.iter().map(|&t| keyword(t)).collect();
        let rows: Vec<Vec<String>> = answers
            .iter()
            .map(|a| {
                columns
                    .iter()
                    .map(|&t| value_of(a, t).unwrap_or_default())
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
                    .min(64)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{:w$}", c.chars().take(64).collect::<String>()))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(&header));
        for row in &rows {
            println!("{}", line(row));
        }
        eprintln!(
            "{} answer(s) at {level} level from {pacs} in {:.0} ms",
            answers.len(),
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(true)
}

/// `dicomnode get`: retrieves one study with C-GET into `out`, one file per instance.
pub(crate) fn get(
    pacs: &Address,
    options: &QrOptions,
    study: &str,
    out: &Path,
    quiet: bool,
) -> anyhow::Result<bool> {
    std::fs::create_dir_all(out)?;
    let bar = progress_bar(quiet);
    let start = Instant::now();
    let mut files = retrieve::Part10Files::new(out);
    let report = retrieve::get(
        pacs,
        options,
        &Query::study(study),
        &[],
        &mut files,
        &mut |p| show(&bar, p),
    )?;
    bar.finish_and_clear();
    println!(
        "C-GET {study} from {pacs}: {} received, {} failed, {} warnings, status {:#06x}, in {:.1} s",
        report.received,
        report.progress.failed,
        report.progress.warning,
        report.status,
        start.elapsed().as_secs_f64()
    );
    Ok(report.progress.failed == 0 && files.written == report.received)
}

/// `dicomnode move`: asks the PACS to send one study to `destination` with C-MOVE.
pub(crate) fn move_study(
    pacs: &Address,
    options: &QrOptions,
    study: &str,
    destination: &str,
    quiet: bool,
) -> anyhow::Result<bool> {
    let bar = progress_bar(quiet);
    let start = Instant::now();
    let report = retrieve::move_to(pacs, options, &Query::study(study), destination, &mut |p| {
        show(&bar, p)
    })?;
    bar.finish_and_clear();
    println!(
        "C-MOVE {study} from {pacs} to {destination}: {} completed, {} failed, {} warnings, status {:#06x}, in {:.1} s",
        report.progress.completed,
        report.progress.failed,
        report.progress.warning,
        report.status,
        start.elapsed().as_secs_f64()
    );
    Ok(report.progress.failed == 0)
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, progress: &Progress) {
    let done =
        u64::from(progress.completed) + u64::from(progress.failed) + u64::from(progress.warning);
    if let Some(remaining) = progress.remaining {
        bar.set_length(done + u64::from(remaining));
    }
    bar.set_position(done);
    if progress.failed > 0 {
        bar.set_message(format!("{} failed", progress.failed));
    }
}

/// The keyword of a tag (its number when it has none).
fn keyword(tag: dicom_core::Tag) -> String {
    let name = tag_name(tag);
    name.split_whitespace().next().unwrap_or(&name).to_string()
}

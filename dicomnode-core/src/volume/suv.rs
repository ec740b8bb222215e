//! Standardized uptake value, body weight (SUVbw), for PET in Bq/ml.
//!
//! `SUVbw = activity concentration × weight [g] / injected dose decayed to the reference
//! time`. The reference time follows DecayCorrection (0054,1102): `START` corrects to the
//! series start (SeriesDate/SeriesTime, or the earliest acquisition when the series time
//! is later, as after re-processing), `ADMIN` to the injection (no decay), `NONE` to each
//! slice's own acquisition time.

use super::geometry::SliceHeader;
use crate::dates::days_from_civil;
use crate::input::value_of;
use crate::DicomInstance;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Why SUVbw could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SuvError {
    /// A tag that SUVbw needs is missing or empty.
    #[error("cannot compute SUVbw: {tag} is missing or empty in {instance}")]
    Missing {
        /// The attribute's name and tag.
        tag: String,
        /// The instance it was looked for in.
        instance: String,
    },
    /// A value that SUVbw needs cannot be read.
    #[error("cannot compute SUVbw: {tag} has the value {value:?}, which {problem}")]
    Invalid {
        /// The attribute's name and tag.
        tag: String,
        /// The value found.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

fn tag_text(tag: Tag) -> String {
    crate::input::tag_name(tag)
}

fn required(obj: &InMemDicomObject, tag: Tag, instance: &str) -> Result<String, SuvError> {
    value_of(obj, tag).ok_or_else(|| SuvError::Missing {
        tag: tag_text(tag),
        instance: instance.to_string(),
    })
}

fn positive(obj: &InMemDicomObject, tag: Tag, instance: &str) -> Result<f64, SuvError> {
    let text = required(obj, tag, instance)?;
    match text.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(SuvError::Invalid {
            tag: tag_text(tag),
            value: text,
            problem: "is not a positive number",
        }),
    }
}

/// Seconds since 0000-03-01 of a DICOM date (YYYYMMDD) and time (HHMMSS.FFFFFF).
fn seconds(date: &str, time: &str) -> Option<f64> {
    let date = date.trim();
    if date.len() < 8 || !date.is_ascii() || !date.bytes().take(8).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = date[0..4].parse().ok()?;
    let m: i64 = date[4..6].parse().ok()?;
    let d: i64 = date[6..8].parse().ok()?;
    Some(days_from_civil(y, m, d) as f64 * 86_400.0 + time_of_day(time)?)
}

/// Seconds into the day of a DICOM time (HH, HHMM, HHMMSS, HHMMSS.FFFFFF; colons of the
/// retired form accepted).
fn time_of_day(time: &str) -> Option<f64> {
    let time: String = time.trim().chars().filter(|c| *c != ':').collect();
    let (whole, fraction) = match time.split_once('.') {
        Some((w, f)) => (w.to_string(), format!("0.{f}")),
        None => (time.clone(), "0".to_string()),
    };
    if whole.len() < 2 || whole.len() > 6 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |range: std::ops::Range<usize>| -> f64 {
        whole
            .get(range)
            .and_then(|p| p.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(part(0..2) * 3600.0 + part(2..4) * 60.0 + part(4..6) + fraction.parse::<f64>().ok()?)
}

/// A DICOM date-time (YYYYMMDDHHMMSS.FFFFFF, an offset ignored) in seconds.
fn datetime(text: &str) -> Option<f64> {
    let text = text.trim();
    let text = text.split(['+', '-']).next()?;
    if text.len() < 8 || !text.is_ascii() {
        return None;
    }
    let (date, time) = text.split_at(8);
    seconds(date, if time.is_empty() { "00" } else { time })
}

fn acquisition_time(instance: &DicomInstance, series_date: &str) -> Option<f64> {
    if let Some(dt) = value_of(instance, tags::ACQUISITION_DATE_TIME) {
        return datetime(&dt);
    }
    let time = value_of(instance, tags::ACQUISITION_TIME)?;
    let date =
        value_of(instance, tags::ACQUISITION_DATE).unwrap_or_else(|| series_date.to_string());
    seconds(&date, &time)
}

/// The factor that turns each slice's Bq/ml into SUVbw, in slice order.
pub(crate) fn factors(slices: &[SliceHeader<'_>]) -> Result<Vec<f64>, SuvError> {
    let Some(first) = slices.first() else {
        return Ok(Vec::new());
    };
    let instance = first.instance;
    let name = first.name();
    let units = required(instance, tags::UNITS, &name)?;
    if units != "BQML" {
        return Err(SuvError::Invalid {
            tag: tag_text(tags::UNITS),
            value: units,
            problem:
                "is not BQML (activity concentration), the only unit SUVbw is defined from here",
        });
    }
    let weight_kg = positive(instance, tags::PATIENT_WEIGHT, &name)?;
    let drug = instance
        .get(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.first())
        .ok_or_else(|| SuvError::Missing {
            tag: tag_text(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE),
            instance: name.clone(),
        })?;
    let dose = positive(drug, tags::RADIONUCLIDE_TOTAL_DOSE, &name)?;
    let half_life = positive(drug, tags::RADIONUCLIDE_HALF_LIFE, &name)?;
    let correction = required(instance, tags::DECAY_CORRECTION, &name)?;
    let series_date = required(instance, tags::SERIES_DATE, &name)?;
    let injection = match value_of(drug, tags::RADIOPHARMACEUTICAL_START_DATE_TIME) {
        Some(dt) => datetime(&dt).ok_or(SuvError::Invalid {
            tag: tag_text(tags::RADIOPHARMACEUTICAL_START_DATE_TIME),
            value: dt,
            problem: "is not a DICOM date-time",
        })?,
        None => {
            let time = required(drug, tags::RADIOPHARMACEUTICAL_START_TIME, &name)?;
            seconds(&series_date, &time).ok_or(SuvError::Invalid {
                tag: tag_text(tags::RADIOPHARMACEUTICAL_START_TIME),
                value: time,
                problem: "is not a DICOM time",
            })?
        }
    };
    // An injection known by its time only, before midnight, for a scan after it.
    let since_injection = |at: f64| {
        let delta = at - injection;
        if delta < 0.0 && value_of(drug, tags::RADIOPHARMACEUTICAL_START_DATE_TIME).is_none() {
            delta + 86_400.0
        } else {
            delta
        }
    };
    let per_gram = |elapsed: f64| {
        weight_kg * 1000.0 / (dose * (-elapsed * std::f64::consts::LN_2 / half_life).exp())
    };
    match correction.as_str() {
        "ADMIN" => Ok(vec![weight_kg * 1000.0 / dose; slices.len()]),
        "START" => {
            let series_time = required(instance, tags::SERIES_TIME, &name)?;
            let series = seconds(&series_date, &series_time).ok_or(SuvError::Invalid {
                tag: tag_text(tags::SERIES_TIME),
                value: series_time,
                problem: "is not a DICOM time",
            })?;
            let earliest = slices
                .iter()
                .filter_map(|s| acquisition_time(s.instance, &series_date))
                .fold(f64::INFINITY, f64::min);
            let reference = if earliest.is_finite() && earliest < series {
                earliest
            } else {
                series
            };
            Ok(vec![per_gram(since_injection(reference)); slices.len()])
        }
        "NONE" => slices
            .iter()
            .map(|s| {
                acquisition_time(s.instance, &series_date)
                    .map(|at| per_gram(since_injection(at)))
                    .ok_or_else(|| SuvError::Missing {
                        tag: tag_text(tags::ACQUISITION_TIME),
                        instance: s.name(),
                    })
            })
            .collect(),
        _ => Err(SuvError::Invalid {
            tag: tag_text(tags::DECAY_CORRECTION),
            value: correction,
            problem: "is none of START, ADMIN, NONE",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_count_seconds() {
        let a = seconds("20240229", "235959.5").unwrap();
        let b = seconds("20240301", "000000").unwrap();
        assert!((b - a - 0.5).abs() < 1e-9);
        assert_eq!(time_of_day("10:30"), Some(37_800.0));
        assert_eq!(
            datetime("20240301013000.25+0100"),
            seconds("20240301", "013000.25")
        );
        assert_eq!(seconds("2024", "10"), None);
        assert_eq!(datetime("2024010\u{e9}101010"), None);
        assert_eq!(time_of_day("1\u{e9}3000"), None);
    }
}

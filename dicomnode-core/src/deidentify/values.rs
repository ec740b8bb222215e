//! Replacement values: dummies valid for each VR, shifted dates, cleaned text.

use crate::dates::{civil_from_days, days_from_civil};
use dicom_core::value::PrimitiveValue;
use dicom_core::VR;

/// A non-empty dummy value valid for `vr` (D).
pub(crate) fn dummy(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => "19000101".into(),
        VR::TM => "000000".into(),
        VR::DT => "19000101000000".into(),
        VR::AS => "000Y".into(),
        VR::DS | VR::IS => "0".into(),
        VR::US => PrimitiveValue::from(0u16),
        VR::SS => PrimitiveValue::from(0i16),
        VR::UL => PrimitiveValue::from(0u32),
        VR::SL => PrimitiveValue::from(0i32),
        VR::FL => PrimitiveValue::from(0f32),
        VR::FD => PrimitiveValue::from(0f64),
        VR::UV => PrimitiveValue::U64(std::iter::once(0u64).collect()),
        VR::SV => PrimitiveValue::I64(std::iter::once(0i64).collect()),
        VR::AT => PrimitiveValue::Tags(std::iter::once(dicom_core::Tag(0, 0)).collect()),
        VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => {
            PrimitiveValue::U8([0u8, 0].into_iter().collect())
        }
        VR::UR => "http://example.invalid".into(),
        VR::CS => "ANONYMIZED".into(),
        _ => "ANONYMIZED".into(),
    }
}

/// A date (YYYYMMDD, possibly followed by a time in a DT) moved by `days`; `None` when it
/// does not start with a valid date.
pub(crate) fn shift_date(text: &str, days: i64) -> Option<String> {
    let text = text.trim();
    if text.len() < 8 || !text.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    // The first 8 bytes are ASCII digits: slicing at 8 is on a character boundary.
    let (y, m, d) = (
        text[0..4].parse::<i64>().ok()?,
        text[4..6].parse::<i64>().ok()?,
        text[6..8].parse::<i64>().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(y, m, d) + days);
    Some(format!("{y:04}{m:02}{d:02}{}", &text[8..]))
}

/// Free text with every identifier in `identifiers` (names, IDs, dates of the patient and
/// study, at least 3 characters, matched without regard to case) replaced by `***`.
pub(crate) fn scrub(text: &str, identifiers: &[String]) -> String {
    let mut out = text.to_string();
    for identifier in identifiers {
        if identifier.chars().count() < 3 {
            continue;
        }
        // Case-insensitive matching by the regex engine: offsets are in the text itself,
        // whatever case folding does to byte lengths.
        match regex::RegexBuilder::new(&regex::escape(identifier))
            .case_insensitive(true)
            .build()
        {
            Ok(pattern) => out = pattern.replace_all(&out, "***").into_owned(),
            Err(_) => out = out.replace(identifier.as_str(), "***"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_across_months_years_and_leap_days() {
        assert_eq!(shift_date("20240301", -1).as_deref(), Some("20240229"));
        assert_eq!(
            shift_date("20250101120000.5", -1).as_deref(),
            Some("20241231120000.5")
        );
        assert_eq!(shift_date("2024", -1), None);
        assert_eq!(shift_date("20241340", 0), None);
    }

    #[test]
    fn identifiers_are_scrubbed_without_case() {
        let ids = vec!["Doe".to_string(), "PAT-7".to_string(), "Jo".to_string()];
        assert_eq!(
            scrub("CT for DOE, John (pat-7)", &ids),
            "CT for ***, John (***)"
        );
    }
}

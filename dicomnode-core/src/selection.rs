//! Splitting a patient's instances into series and picking series by their tags: how a
//! pipeline that receives a PET/CT study asks for "the CT volume and the PET volume".
//!
//! ```
//! use dicomnode_core::selection::{split_series, SeriesQuery};
//! use dicomnode_core::synthetic::{Modality, SyntheticSeries};
//! use dicomnode_core::Matcher;
//! use dicom_dictionary_std::tags;
//!
//! let ct = SyntheticSeries::ct("P", 3).size(4, 4);
//! let mr = ct.next_series(Modality::Mr, 2);
//! let mut all = ct.build().unwrap();
//! all.extend(mr.build().unwrap());
//!
//! let series = split_series(&all);
//! assert_eq!(series.len(), 2);
//! let ct = SeriesQuery::new().with(tags::MODALITY, Matcher::exact("CT")).one(&series).unwrap();
//! assert_eq!(ct.volume().unwrap().shape(), [3, 4, 4]);
//! ```

use crate::input::{tag_name, value_of, Matcher};
use crate::volume::{Volume, VolumeError, VolumeOptions};
use crate::DicomInstance;
use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// The instances of one series, in the order they were given.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// SeriesInstanceUID (empty when the instances have none).
    pub uid: String,
    /// The instances.
    pub instances: Vec<&'a DicomInstance>,
}

impl<'a> Series<'a> {
    /// The value of `tag` in the series' first instance (series-level attributes such as
    /// Modality, SeriesDescription, FrameOfReferenceUID).
    pub fn value(&self, tag: Tag) -> Option<String> {
        self.instances.first().and_then(|i| value_of(i, tag))
    }

    /// Modality of the series.
    pub fn modality(&self) -> Option<String> {
        self.value(tags::MODALITY)
    }

    /// The series as a volume, with default options.
    pub fn volume(&self) -> Result<Volume, VolumeError> {
        Volume::of(self.instances.iter().copied())
    }

    /// The series as a volume, with `options`.
    pub fn volume_with(&self, options: &VolumeOptions) -> Result<Volume, VolumeError> {
        options.build(self.instances.iter().copied())
    }
}

/// The series of `instances`, ordered by SeriesNumber then SeriesInstanceUID.
pub fn split_series<'a>(instances: impl IntoIterator<Item = &'a DicomInstance>) -> Vec<Series<'a>> {
    let mut series: Vec<Series<'a>> = Vec::new();
    for instance in instances {
        let uid = value_of(instance, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        match series.iter_mut().find(|s| s.uid == uid) {
            Some(s) => s.instances.push(instance),
            None => series.push(Series {
                uid,
                instances: vec![instance],
            }),
        }
    }
    let number = |s: &Series| {
        s.value(tags::SERIES_NUMBER)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    };
    series.sort_by(|a, b| number(a).cmp(&number(b)).then_with(|| a.uid.cmp(&b.uid)));
    series
}

/// Why no single series was picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No series matches.
    #[error("no series matches {query} (series present: {present})")]
    NoMatch {
        /// The query.
        query: String,
        /// The series there were, with their modality and description.
        present: String,
    },
    /// More than one series matches.
    #[error("{} series match {query}: {}", series.len(), series.join(", "))]
    Ambiguous {
        /// The query.
        query: String,
        /// The matching series.
        series: Vec<String>,
    },
}

/// Conditions on series-level tags; a series matches when all hold.
#[derive(Clone, Default)]
pub struct SeriesQuery {
    conditions: Vec<(Tag, Matcher)>,
}

impl std::fmt::Debug for SeriesQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn describe_series(s: &Series) -> String {
    format!(
        "{} ({}{})",
        s.uid,
        s.modality().unwrap_or_else(|| "no modality".into()),
        s.value(tags::SERIES_DESCRIPTION)
            .map(|d| format!(", {d:?}"))
            .unwrap_or_default()
    )
}

impl SeriesQuery {
    /// A query that every series matches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition: the series' value of `tag` must match.
    pub fn with(mut self, tag: Tag, matcher: Matcher) -> Self {
        self.conditions.push((tag, matcher));
        self
    }

    fn describe(&self) -> String {
        if self.conditions.is_empty() {
            return "any series".into();
        }
        self.conditions
            .iter()
            .map(|(tag, m)| format!("{} {m:?}", tag_name(*tag)))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Whether `series` matches.
    pub fn matches(&self, series: &Series) -> bool {
        self.conditions
            .iter()
            .all(|(tag, m)| series.value(*tag).is_some_and(|v| m.matches(&v)))
    }

    /// Every matching series.
    pub fn all<'s, 'a>(&self, series: &'s [Series<'a>]) -> Vec<&'s Series<'a>> {
        series.iter().filter(|s| self.matches(s)).collect()
    }

    /// The one matching series, or an error saying there is none or several.
    pub fn one<'s, 'a>(&self, series: &'s [Series<'a>]) -> Result<&'s Series<'a>, SelectError> {
        let found = self.all(series);
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(SelectError::NoMatch {
                query: self.describe(),
                present: if series.is_empty() {
                    "none".into()
                } else {
                    series
                        .iter()
                        .map(describe_series)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
            many => Err(SelectError::Ambiguous {
                query: self.describe(),
                series: many.iter().map(|s| describe_series(s)).collect(),
            }),
        }
    }
}

//! When a patient (or a study, or a series) is complete: the rule each input applies to
//! what it holds ([`Enough`]), how instances are grouped into batches ([`Grouping`]), and
//! what happens when a group waits too long ([`Completion`]).
//!
//! Senders rarely say "that was the last image". The rules here decide from what arrived
//! and when: a count, the instance numbers, series that went quiet, a rule over the quiet
//! series' tags ("a CT and a PET of the same frame of reference").
//!
//! ```
//! use dicomnode_core::{Completion, Enough, Grouping, MaxWait};
//! use std::time::Duration;
//!
//! // A study is complete when it holds a CT and a PET series of one frame of reference,
//! // each quiet for 10 s; after 30 minutes it is processed with what is there.
//! let enough = Enough::modalities_in_one_frame(["CT", "PT"], Duration::from_secs(10));
//! let completion = Completion::new()
//!     .group_by(Grouping::Study)
//!     .max_wait(Duration::from_secs(1800), MaxWait::Process);
//! assert_eq!(completion.grouping(), Grouping::Study);
//! assert!(format!("{enough:?}").contains("CT"));
//! ```

use crate::matching::value_of;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An instance an input holds, as its rule sees it: the header and when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct HeldInstance<'a> {
    /// Every element before Pixel Data.
    pub header: &'a InMemDicomObject,
    /// When the node stored it (after a restart: its file's time).
    pub arrived: SystemTime,
}

/// One series of an input, summarised for series rules.
#[derive(Debug, Clone)]
pub struct SeriesState<'a> {
    /// SeriesInstanceUID (empty when absent).
    pub uid: String,
    /// Instances of it held.
    pub instances: usize,
    /// Time since its last instance arrived.
    pub quiet_for: Duration,
    /// The header of its first instance, for series-level tags (Modality,
    /// FrameOfReferenceUID, SeriesDescription).
    pub first: &'a InMemDicomObject,
}

impl SeriesState<'_> {
    /// The value of a series-level `tag`.
    pub fn value(&self, tag: dicom_core::Tag) -> Option<String> {
        value_of(self.first, tag)
    }
}

/// The series in `held`, ordered by UID, with how long each has been quiet at `now`.
pub fn series_states<'a>(held: &[HeldInstance<'a>], now: SystemTime) -> Vec<SeriesState<'a>> {
    let mut by_uid: BTreeMap<String, SeriesState<'a>> = BTreeMap::new();
    for instance in held {
        let uid = value_of(instance.header, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        let quiet = now.duration_since(instance.arrived).unwrap_or_default();
        let entry = by_uid.entry(uid.clone()).or_insert(SeriesState {
            uid,
            instances: 0,
            quiet_for: quiet,
            first: instance.header,
        });
        entry.instances += 1;
        entry.quiet_for = entry.quiet_for.min(quiet);
    }
    by_uid.into_values().collect()
}

/// The test behind an [`Enough`].
type EnoughTest = dyn Fn(&[HeldInstance<'_>], SystemTime) -> bool + Send + Sync;

/// When an input holds enough instances for its patient (or study) to be processed.
#[derive(Clone)]
pub struct Enough {
    test: Arc<EnoughTest>,
    description: String,
    /// The shortest quiet time a rule waits for (the node looks at least this often).
    quiet: Option<Duration>,
}

impl Enough {
    fn new(
        description: String,
        quiet: Option<Duration>,
        test: impl Fn(&[HeldInstance<'_>], SystemTime) -> bool + Send + Sync + 'static,
    ) -> Self {
        Enough {
            test: Arc::new(test),
            description,
            quiet,
        }
    }

    /// At least `n` instances.
    pub fn at_least(n: usize) -> Self {
        Enough::new(format!("at least {n} instances"), None, move |held, _| {
            held.len() >= n
        })
    }

    /// Every InstanceNumber from 1 to the expected count is present. The expected count is
    /// `count` if given, else the ImagesInAcquisition of the instances held.
    pub fn all_instance_numbers(count: Option<u32>) -> Self {
        let description = match count {
            Some(n) => format!("InstanceNumbers 1..={n} all present"),
            None => "InstanceNumbers 1..=ImagesInAcquisition all present".to_string(),
        };
        Enough::new(description, None, move |held, _| {
            let expected = count.or_else(|| {
                held.iter().find_map(|h| {
                    value_of(h.header, tags::IMAGES_IN_ACQUISITION).and_then(|v| v.parse().ok())
                })
            });
            let Some(expected) = expected else {
                return false;
            };
            let present: BTreeSet<u32> = held
                .iter()
                .filter_map(|h| {
                    value_of(h.header, tags::INSTANCE_NUMBER).and_then(|v| v.parse().ok())
                })
                .collect();
            (1..=expected).all(|n| present.contains(&n))
        })
    }

    /// At least one instance, and every series held got no new instance for `quiet`: for
    /// senders that give no signal at the end of a series.
    pub fn series_quiet(quiet: Duration) -> Self {
        Enough::new(
            format!("every series quiet for {quiet:?}"),
            Some(quiet),
            move |held, now| {
                !held.is_empty()
                    && series_states(held, now)
                        .iter()
                        .all(|s| s.quiet_for >= quiet)
            },
        )
    }

    /// `rule` holds over the series that got no new instance for `quiet` (series still
    /// growing are not shown to it): "the series this study needs are complete".
    pub fn series_rule(
        description: impl Into<String>,
        quiet: Duration,
        rule: impl Fn(&[SeriesState<'_>]) -> bool + Send + Sync + 'static,
    ) -> Self {
        let description = format!("{} (series quiet for {quiet:?})", description.into());
        Enough::new(description, Some(quiet), move |held, now| {
            let settled: Vec<SeriesState<'_>> = series_states(held, now)
                .into_iter()
                .filter(|s| s.quiet_for >= quiet)
                .collect();
            rule(&settled)
        })
    }

    /// A quiet series of each of `modalities`, all of one FrameOfReferenceUID (e.g. the CT
    /// and the PET of a PET/CT).
    pub fn modalities_in_one_frame<I, S>(modalities: I, quiet: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let wanted: Vec<String> = modalities.into_iter().map(Into::into).collect();
        let description = format!("a series of each of {wanted:?} in one frame of reference");
        Enough::series_rule(description, quiet, move |series| {
            // Frames of reference that have every wanted modality.
            let mut by_frame: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in series {
                if let (Some(frame), Some(modality)) = (
                    s.value(tags::FRAME_OF_REFERENCE_UID),
                    s.value(tags::MODALITY),
                ) {
                    by_frame.entry(frame).or_default().insert(modality);
                }
            }
            by_frame
                .values()
                .any(|found| wanted.iter().all(|m| found.contains(m)))
        })
    }

    /// A predicate of your own over the headers held, with a description for the log.
    pub fn when(
        description: impl Into<String>,
        test: impl Fn(&[&InMemDicomObject]) -> bool + Send + Sync + 'static,
    ) -> Self {
        Enough::new(description.into(), None, move |held, _| {
            let headers: Vec<&InMemDicomObject> = held.iter().map(|h| h.header).collect();
            test(&headers)
        })
    }

    /// Both rules hold.
    pub fn and(self, other: Enough) -> Self {
        let quiet = match (self.quiet, other.quiet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let description = format!("{} and {}", self.description, other.description);
        let (a, b) = (self.test, other.test);
        Enough::new(description, quiet, move |held, now| {
            a(held, now) && b(held, now)
        })
    }

    /// Whether `held` is enough at `now`.
    pub fn test(&self, held: &[HeldInstance<'_>], now: SystemTime) -> bool {
        (self.test)(held, now)
    }

    /// The shortest quiet time the rule waits for, if it waits for one.
    pub fn quiet_time(&self) -> Option<Duration> {
        self.quiet
    }
}

impl fmt::Debug for Enough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// What one batch holds: a patient's instances, one study's, or one series'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grouping {
    /// Everything of a patient (by the patient key tag) is one batch.
    #[default]
    Patient,
    /// Each study (StudyInstanceUID) of a patient is a batch of its own: a second study
    /// of the same patient is kept apart.
    Study,
    /// Each series (SeriesInstanceUID) is a batch of its own.
    Series,
}

/// Separates the patient key from the study's or series' UID in a group's key (a control
/// character: a patient key holding one is refused).
pub const GROUP_SEPARATOR: char = '\u{1c}';

/// The key of the group `header` belongs to, for a patient key `patient`.
pub fn group_key(
    patient: &str,
    grouping: Grouping,
    header: &InMemDicomObject,
) -> Result<String, String> {
    if patient.contains(GROUP_SEPARATOR) {
        return Err("the patient key holds a control character (0x1C)".into());
    }
    let tag = match grouping {
        Grouping::Patient => return Ok(patient.to_string()),
        Grouping::Study => tags::STUDY_INSTANCE_UID,
        Grouping::Series => tags::SERIES_INSTANCE_UID,
    };
    match value_of(header, tag) {
        Some(uid) => Ok(format!("{patient}{GROUP_SEPARATOR}{uid}")),
        None => Err(format!(
            "{} is missing, and batches are grouped by it",
            crate::matching::tag_name(tag)
        )),
    }
}

/// The patient key part of a group's key.
pub fn patient_of(group_key: &str) -> &str {
    split_group_key(group_key).0
}

/// A group's key as (patient key, study or series UID).
pub fn split_group_key(group_key: &str) -> (&str, Option<&str>) {
    match group_key.split_once(GROUP_SEPARATOR) {
        Some((patient, uid)) => (patient, Some(uid)),
        None => (group_key, None),
    }
}

/// A group's key for the log: `P1` or `P1 / 1.2.3`.
pub fn display_group_key(group_key: &str) -> String {
    match split_group_key(group_key) {
        (patient, Some(uid)) => format!("{patient} / {uid}"),
        (patient, None) => patient.to_string(),
    }
}

/// What happens to a group that waited [`Completion::max_wait`] since its first instance
/// and still is not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxWait {
    /// Process it with what is there.
    Process,
    /// Remove it (logged, with what it held).
    Discard,
    /// Keep waiting, until the node's expiry removes or quarantines it.
    KeepWaiting,
}

/// A pipeline's completion rules beside its inputs' own: the grouping, and the forced
/// completion after a maximum wait.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    grouping: Grouping,
    max_wait: Option<(Duration, MaxWait)>,
}

impl Completion {
    /// Group by patient, no maximum wait.
    pub fn new() -> Self {
        Completion::default()
    }

    /// Sets what one batch holds.
    pub fn group_by(mut self, grouping: Grouping) -> Self {
        self.grouping = grouping;
        self
    }

    /// After `wait` since a group's first instance, applies `policy` if it is not complete.
    pub fn max_wait(mut self, wait: Duration, policy: MaxWait) -> Self {
        self.max_wait = Some((wait, policy));
        self
    }

    /// What one batch holds.
    pub fn grouping(&self) -> Grouping {
        self.grouping
    }

    /// The maximum wait and its policy, if set.
    pub fn max_wait_policy(&self) -> Option<(Duration, MaxWait)> {
        self.max_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};

    fn header(series: &str, modality: &str, frame: &str) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series),
            DataElement::new(tags::MODALITY, VR::CS, modality),
            DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, frame),
        ])
    }

    #[test]
    fn series_rules_wait_for_quiet_series_of_one_frame() {
        let now = SystemTime::now();
        let (ct, pt, pt_other) = (
            header("1.1", "CT", "9.1"),
            header("1.2", "PT", "9.1"),
            header("1.3", "PT", "9.2"),
        );
        let at = |h, secs_ago| HeldInstance {
            header: h,
            arrived: now - Duration::from_secs(secs_ago),
        };
        let rule = Enough::modalities_in_one_frame(["CT", "PT"], Duration::from_secs(10));
        assert_eq!(rule.quiet_time(), Some(Duration::from_secs(10)));
        // The PET is still growing: not complete.
        assert!(!rule.test(&[at(&ct, 30), at(&pt, 30), at(&pt, 2)], now));
        // Both quiet: complete.
        assert!(rule.test(&[at(&ct, 30), at(&pt, 11)], now));
        // A PET of another frame of reference does not count.
        assert!(!rule.test(&[at(&ct, 30), at(&pt_other, 30)], now));
        let quiet = Enough::series_quiet(Duration::from_secs(5));
        assert!(!quiet.test(&[], now));
        assert!(quiet.test(&[at(&ct, 6), at(&pt, 5)], now));
        assert!(!quiet.test(&[at(&ct, 6), at(&pt, 4)], now));
        let both = quiet.and(Enough::at_least(3));
        assert!(!both.test(&[at(&ct, 6), at(&pt, 5)], now));
        assert!(both.test(&[at(&ct, 6), at(&pt, 5), at(&pt, 7)], now));
        assert_eq!(both.quiet_time(), Some(Duration::from_secs(5)));
    }
}

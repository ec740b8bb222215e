//! Inputs: the named sets a pipeline's instances are sorted into, with the rules an
//! instance must meet to enter and the rule that says when an input has enough.

pub use crate::completion::Enough;
use crate::completion::HeldInstance;
pub use crate::matching::{tag_name, value_of, Matcher};
use crate::prior::Priors;
use dicom_core::Tag;
use dicom_object::InMemDicomObject;
use std::fmt;
use std::time::SystemTime;

/// A named input of a pipeline.
///
/// ```
/// use dicomnode_core::{Enough, Input, Matcher};
/// use dicom_dictionary_std::tags;
///
/// let ct = Input::new("ct")
///     .require(tags::SERIES_INSTANCE_UID)
///     .matching(tags::MODALITY, Matcher::exact("CT"))
///     .matching(tags::SERIES_DESCRIPTION, Matcher::regex("(?i)^ax").unwrap())
///     .enough_when(Enough::at_least(150));
/// assert_eq!(ct.name(), "ct");
/// ```
#[derive(Clone)]
pub struct Input {
    name: String,
    required: Vec<Tag>,
    rules: Vec<(Tag, Matcher)>,
    enough: Enough,
    priors: Option<Priors>,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("required", &self.required)
            .field("rules", &self.rules)
            .field("enough", &self.enough)
            .field("priors", &self.priors)
            .finish()
    }
}

impl Input {
    /// An input that takes every instance and has enough as soon as it holds one.
    pub fn new(name: impl Into<String>) -> Self {
        Input {
            name: name.into(),
            required: Vec::new(),
            rules: Vec::new(),
            enough: Enough::at_least(1),
            priors: None,
        }
    }

    /// Makes this a prior input: it takes no instance a sender stores, but the prior
    /// studies the node fetches from a PACS when a patient's (or study's) first instance
    /// arrives. It has enough once the fetch ended, with the studies or with the reason
    /// they are unavailable (see [`InputContainer::prior_status`]).
    ///
    /// [`InputContainer::prior_status`]: crate::InputContainer::prior_status
    pub fn priors(mut self, priors: Priors) -> Self {
        self.priors = Some(priors);
        self
    }

    /// The prior studies this input fetches, if it is a prior input.
    pub fn prior_source(&self) -> Option<&Priors> {
        self.priors.as_ref()
    }

    /// Requires the instance to carry `tag` with a non-empty value.
    pub fn require(mut self, tag: Tag) -> Self {
        self.required.push(tag);
        self
    }

    /// Requires the value of `tag` to match `matcher` (which implies [`Input::require`]).
    pub fn matching(mut self, tag: Tag, matcher: Matcher) -> Self {
        self.rules.push((tag, matcher));
        self
    }

    /// Sets when the input has enough instances for processing.
    pub fn enough_when(mut self, enough: Enough) -> Self {
        self.enough = enough;
        self
    }

    /// The rule that says when the input has enough.
    pub fn enough(&self) -> &Enough {
        &self.enough
    }

    /// The input's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks whether an instance (its header: every element before Pixel Data) may enter.
    pub fn admit(&self, header: &InMemDicomObject) -> Result<(), Rejection> {
        if self.priors.is_some() {
            return Err(Rejection::PriorsOnly);
        }
        for &tag in &self.required {
            if value_of(header, tag).is_none() {
                return Err(Rejection::Missing { tag });
            }
        }
        for (tag, matcher) in &self.rules {
            let Some(value) = value_of(header, *tag) else {
                return Err(Rejection::Missing { tag: *tag });
            };
            if !matcher.matches(&value) {
                return Err(Rejection::Mismatch {
                    tag: *tag,
                    found: value,
                    wanted: matcher.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Whether the instances held (their headers) are enough for processing, as if they
    /// all arrived now.
    pub fn has_enough(&self, held: &[&InMemDicomObject]) -> bool {
        let now = SystemTime::now();
        let held: Vec<HeldInstance<'_>> = held
            .iter()
            .map(|header| HeldInstance {
                header,
                arrived: now,
            })
            .collect();
        self.enough.test(&held, now)
    }

    /// Whether the instances held are enough at `now`, with their arrival times.
    pub fn has_enough_at(&self, held: &[HeldInstance<'_>], now: SystemTime) -> bool {
        self.enough.test(held, now)
    }
}

/// The single input of a pipeline that declares none: every instance, enough at once.
pub fn default_inputs() -> Vec<Input> {
    vec![Input::new("instances")]
}

/// Why an input did not admit an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// A required tag is absent or empty.
    #[error("{} is missing or empty", tag_name(*tag))]
    Missing {
        /// The tag.
        tag: Tag,
    },
    /// A tag's value does not match the rule.
    #[error("{} is {found:?}, wanted {wanted}", tag_name(*tag))]
    Mismatch {
        /// The tag.
        tag: Tag,
        /// The value found.
        found: String,
        /// What the rule wanted.
        wanted: String,
    },
    /// A prior input takes only the prior studies the node fetches.
    #[error("it takes only the prior studies the node fetches")]
    PriorsOnly,
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;

    fn header(modality: &str, number: u32) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::MODALITY, VR::CS, modality),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, number.to_string()),
            DataElement::new(tags::IMAGES_IN_ACQUISITION, VR::IS, "3"),
        ])
    }

    #[test]
    fn rules_explain_rejections() {
        let input = Input::new("ct")
            .matching(tags::MODALITY, Matcher::one_of(["CT", "PT"]))
            .require(tags::SERIES_INSTANCE_UID);
        let err = input.admit(&header("MR", 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SeriesInstanceUID (0020,000E) is missing or empty"
        );
        let input = Input::new("ct").matching(tags::MODALITY, Matcher::one_of(["CT", "PT"]));
        let err = input.admit(&header("MR", 1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Modality (0008,0060) is \"MR\", wanted one of [\"CT\", \"PT\"]"
        );
        assert!(input.admit(&header("PT", 1)).is_ok());
        let re = Input::new("x").matching(tags::MODALITY, Matcher::regex("^C").unwrap());
        assert!(re.admit(&header("CT", 1)).is_ok());
        assert!(re.admit(&header("MR", 1)).is_err());
    }

    #[test]
    fn instance_numbers_complete() {
        let enough = Input::new("ct").enough_when(Enough::all_instance_numbers(None));
        let (a, b, c) = (header("CT", 1), header("CT", 2), header("CT", 3));
        assert!(!enough.has_enough(&[&a, &c]));
        assert!(enough.has_enough(&[&c, &a, &b]));
        let fixed = Input::new("ct").enough_when(Enough::all_instance_numbers(Some(2)));
        assert!(fixed.has_enough(&[&b, &a]));
        assert!(!Input::new("x")
            .enough_when(Enough::at_least(4))
            .has_enough(&[&a, &b, &c]));
    }
}

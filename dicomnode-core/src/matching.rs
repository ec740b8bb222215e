//! Reading tag values, and the rules a value must meet ([`Matcher`]): shared by the
//! inputs' admission rules, prior-study choices and completion rules.

use dicom_core::Tag;
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;
use regex::Regex;
use std::fmt;
use std::sync::Arc;

/// The text value of `tag` in `obj`, trimmed of DICOM padding; `None` when absent or empty.
pub fn value_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == ' ' || c == '\0');
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// A readable name for a tag, e.g. `Modality (0008,0060)`.
pub fn tag_name(tag: Tag) -> String {
    use dicom_core::dictionary::DataDictionary;
    match StandardDataDictionary.by_tag(tag) {
        Some(entry) => format!("{} {}", entry.alias, tag),
        None => tag.to_string(),
    }
}

/// How a tag's value must look.
#[derive(Clone)]
pub enum Matcher {
    /// Exactly this value.
    Exact(String),
    /// One of these values.
    OneOf(Vec<String>),
    /// A regular expression that must match (use `^...$` to anchor).
    Regex(Regex),
    /// A predicate over the value, with a description for the log.
    Predicate {
        /// Says what the predicate accepts, for rejection messages.
        description: String,
        /// The test.
        test: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    },
}

impl Matcher {
    /// Matches exactly `value`.
    pub fn exact(value: impl Into<String>) -> Self {
        Matcher::Exact(value.into())
    }

    /// Matches any of `values`.
    pub fn one_of<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Matcher::OneOf(values.into_iter().map(Into::into).collect())
    }

    /// Matches the regular expression `pattern`.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Matcher::Regex(Regex::new(pattern)?))
    }

    /// Matches values for which `test` returns true.
    pub fn predicate(
        description: impl Into<String>,
        test: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Matcher::Predicate {
            description: description.into(),
            test: Arc::new(test),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(wanted) => value == wanted,
            Matcher::OneOf(wanted) => wanted.iter().any(|w| w == value),
            Matcher::Regex(re) => re.is_match(value),
            Matcher::Predicate { test, .. } => test(value),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(v) => write!(f, "{v:?}"),
            Matcher::OneOf(vs) => write!(f, "one of {vs:?}"),
            Matcher::Regex(re) => write!(f, "a match of /{}/", re.as_str()),
            Matcher::Predicate { description, .. } => f.write_str(description),
        }
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

//! Query identifiers: the level, the matching keys and the keys asked back.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::InMemDicomObject;
use std::fmt;

/// The level of a query or retrieval (study root information model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Patients (answered by PACSs that support it even in the study root).
    Patient,
    /// Studies.
    Study,
    /// Series of a study.
    Series,
    /// Instances of a series.
    Image,
}

impl Level {
    /// The value of QueryRetrieveLevel (0008,0052).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }

    /// The keys asked back by default at this level.
    fn default_return_keys(self) -> &'static [Tag] {
        match self {
            Level::Patient => &[
                tags::PATIENT_ID,
                tags::PATIENT_NAME,
                tags::PATIENT_BIRTH_DATE,
            ],
            Level::Study => &[
                tags::PATIENT_ID,
                tags::PATIENT_NAME,
                tags::STUDY_INSTANCE_UID,
                tags::STUDY_DATE,
                tags::STUDY_DESCRIPTION,
                tags::MODALITIES_IN_STUDY,
                tags::ACCESSION_NUMBER,
                tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            ],
            Level::Series => &[
                tags::STUDY_INSTANCE_UID,
                tags::SERIES_INSTANCE_UID,
                tags::SERIES_NUMBER,
                tags::MODALITY,
                tags::SERIES_DESCRIPTION,
                tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
            ],
            Level::Image => &[
                tags::STUDY_INSTANCE_UID,
                tags::SERIES_INSTANCE_UID,
                tags::SOP_INSTANCE_UID,
                tags::SOP_CLASS_UID,
                tags::INSTANCE_NUMBER,
            ],
        }
    }
}

impl std::str::FromStr for Level {
    type Err = QueryKeyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "PATIENT" => Ok(Level::Patient),
            "STUDY" => Ok(Level::Study),
            "SERIES" => Ok(Level::Series),
            "IMAGE" | "INSTANCE" => Ok(Level::Image),
            _ => Err(QueryKeyError::Level(text.to_string())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a query key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryKeyError {
    /// Not a level.
    #[error("{0:?} is not a query level (PATIENT, STUDY, SERIES or IMAGE)")]
    Level(String),
    /// Not a keyword of the data dictionary nor a tag like `0010,0020`.
    #[error("{0:?} is neither a DICOM keyword nor a tag")]
    UnknownKey(String),
}

/// A C-FIND identifier (or the identifier of a C-MOVE/C-GET): the level, keys to match, and
/// keys asked back empty.
///
/// ```
/// use dicomnode_server::retrieve::{Level, Query};
/// use dicom_dictionary_std::tags;
/// let query = Query::new(Level::Study)
///     .matching(tags::PATIENT_ID, "P1")
///     .parse_key("ModalitiesInStudy=CT").unwrap()
///     .parse_key("StudyDescription").unwrap();
/// assert_eq!(query.value(tags::PATIENT_ID), Some("P1".to_string()));
/// assert_eq!(query.value(tags::MODALITIES_IN_STUDY), Some("CT".to_string()));
/// assert_eq!(query.value(tags::STUDY_DESCRIPTION), None);
/// ```
#[derive(Debug, Clone)]
pub struct Query {
    level: Level,
    identifier: InMemDicomObject,
}

impl Query {
    /// A query at `level` that asks back the level's usual keys.
    pub fn new(level: Level) -> Self {
        let mut identifier = InMemDicomObject::new_empty();
        identifier.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            level.as_str(),
        ));
        let mut query = Query { level, identifier };
        for &tag in level.default_return_keys() {
            query = query.returning(tag);
        }
        query
    }

    /// A query for one study by its Study Instance UID (the identifier of a retrieval).
    pub fn study(study_instance_uid: &str) -> Self {
        let mut identifier = InMemDicomObject::new_empty();
        identifier.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            Level::Study.as_str(),
        ));
        identifier.put(DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            study_instance_uid,
        ));
        Query {
            level: Level::Study,
            identifier,
        }
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Matches `tag` against `value` (wildcards `*`, `?` and date ranges `A-B` as the
    /// PACS supports them).
    pub fn matching(mut self, tag: Tag, value: impl Into<String>) -> Self {
        self.identifier
            .put(DataElement::new(tag, vr_of(tag), value.into()));
        self
    }

    /// Asks `tag` back (an empty key), unless it is matched already.
    pub fn returning(mut self, tag: Tag) -> Self {
        if self.identifier.get(tag).is_none() {
            self.identifier
                .put(DataElement::new(tag, vr_of(tag), PrimitiveValue::Empty));
        }
        self
    }

    /// Adds a key written `Keyword=value`, `gggg,eeee=value`, or without `=value` (asked
    /// back), as on `findscu`'s command line.
    pub fn parse_key(self, text: &str) -> Result<Self, QueryKeyError> {
        let (name, value) = match text.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value)),
            None => (text.trim(), None),
        };
        let tag = StandardDataDictionary
            .by_name(name)
            .map(|e| e.tag())
            .or_else(|| StandardDataDictionary.parse_tag(name))
            .ok_or_else(|| QueryKeyError::UnknownKey(name.to_string()))?;
        if tag == tags::QUERY_RETRIEVE_LEVEL {
            let level: Level = value.unwrap_or_default().parse()?;
            let mut query = Query::new(level);
            query.identifier = self.identifier;
            query.identifier.put(DataElement::new(
                tags::QUERY_RETRIEVE_LEVEL,
                VR::CS,
                level.as_str(),
            ));
            return Ok(query);
        }
        Ok(match value {
            Some(value) => self.matching(tag, value),
            None => self.returning(tag),
        })
    }

    /// The matching value of `tag`, if any.
    pub fn value(&self, tag: Tag) -> Option<String> {
        dicomnode_core::input::value_of(&self.identifier, tag)
    }

    /// The identifier to send.
    pub fn identifier(&self) -> &InMemDicomObject {
        &self.identifier
    }

    /// The tags of the identifier other than the level, in order.
    pub fn keys(&self) -> Vec<Tag> {
        self.identifier
            .iter()
            .map(|e| e.header().tag)
            .filter(|&t| t != tags::QUERY_RETRIEVE_LEVEL && t != tags::SPECIFIC_CHARACTER_SET)
            .collect()
    }
}

/// The VR of a standard tag (LO for an unknown one).
fn vr_of(tag: Tag) -> VR {
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(vr)) => vr,
        Some(_) => VR::US,
        None => VR::LO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_like_findscu() {
        let q = Query::new(Level::Patient)
            .parse_key("QueryRetrieveLevel=SERIES")
            .unwrap()
            .parse_key("0008,0060=CT")
            .unwrap()
            .parse_key("StudyDate=20200101-20201231")
            .unwrap();
        assert_eq!(q.level(), Level::Series);
        assert_eq!(q.value(tags::MODALITY), Some("CT".into()));
        assert_eq!(q.value(tags::STUDY_DATE), Some("20200101-20201231".into()));
        assert!(q.keys().contains(&tags::PATIENT_ID));
        assert_eq!(
            Query::new(Level::Study)
                .parse_key("NoSuchKeyword")
                .unwrap_err(),
            QueryKeyError::UnknownKey("NoSuchKeyword".into())
        );
        assert!("nonsense".parse::<Level>().is_err());
    }
}

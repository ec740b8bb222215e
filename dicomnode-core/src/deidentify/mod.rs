//! De-identification by DICOM PS3.15 Annex E's Basic Application Level Confidentiality
//! Profile, with its options, and re-identification of results that come back.
//!
//! The profile's table is kept as data ([`profile`], edition [`EDITION`]); every
//! attribute it lists gets its action (D, Z, X, K, C, U and the combinations) in every
//! data set and, recursively, in every sequence item. Private attributes are removed
//! unless retained. UIDs are replaced consistently: the replacement is derived from the
//! UID with a keyed hash, so the same key gives the same UIDs in every process, and the
//! [`Mapping`] records them (in a file, if asked) for [`reidentify`].
//!
//! Pixel data are left as they are: burned-in annotation is not removed, and instances
//! that say `BurnedInAnnotation = YES` are reported in [`Deidentified::warnings`].
//!
//! ```
//! use dicomnode_core::deidentify::{Deidentifier, Mapping, ProfileOption};
//! use dicomnode_core::input::value_of;
//! use dicomnode_core::synthetic::SyntheticSeries;
//! use dicom_dictionary_std::tags;
//!
//! let ct = SyntheticSeries::ct("PAT-1", 1).size(2, 2).build().unwrap().remove(0);
//! let mut mapping = Mapping::random();
//! let out = Deidentifier::new()
//!     .with(ProfileOption::RetainLongitudinalModifiedDates)
//!     .deidentify(&ct, &mut mapping)
//!     .unwrap();
//! assert_ne!(value_of(&out.instance, tags::PATIENT_ID).as_deref(), Some("PAT-1"));
//! assert_eq!(value_of(&out.instance, tags::PATIENT_IDENTITY_REMOVED).as_deref(), Some("YES"));
//! let back = dicomnode_core::deidentify::reidentify(&out.instance, &mapping).unwrap();
//! assert_eq!(value_of(&back, tags::PATIENT_ID).as_deref(), Some("PAT-1"));
//! ```

mod mapping;
pub mod profile;
mod reidentify;
mod values;
mod walk;

pub use mapping::{Mapping, PatientRecord};
pub use profile::{Action, EDITION};
pub use reidentify::reidentify;

use crate::input::value_of;
use crate::DicomInstance;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use std::collections::BTreeMap;
use std::path::PathBuf;
use walk::Walk;

/// An option of the profile (PS3.15 E.3), in the order of the table's columns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProfileOption {
    /// Retain Safe Private: keep the private attributes the standard lists as safe
    /// (PS3.15 Table E.3.10-1) and those of creators named with
    /// [`Deidentifier::safe_private_creator`].
    RetainSafePrivate,
    /// Retain UIDs.
    RetainUids,
    /// Retain Device Identity.
    RetainDeviceIdentity,
    /// Retain Institution Identity.
    RetainInstitutionIdentity,
    /// Retain Patient Characteristics (sex, age, size, weight, ...).
    RetainPatientCharacteristics,
    /// Retain Longitudinal Temporal Information, full dates.
    RetainLongitudinalFullDates,
    /// Retain Longitudinal Temporal Information, modified dates: every date of a patient
    /// moved by the same number of days (derived from the key and the PatientID).
    RetainLongitudinalModifiedDates,
    /// Clean Descriptors: free text kept with the patient's and study's identifiers
    /// replaced by `***`.
    CleanDescriptors,
    /// Clean Structured Content.
    CleanStructuredContent,
    /// Clean Graphics.
    CleanGraphics,
}

impl ProfileOption {
    /// Every option, in the order of Table E.1-1's columns.
    pub const ALL: [ProfileOption; 10] = [
        ProfileOption::RetainSafePrivate,
        ProfileOption::RetainUids,
        ProfileOption::RetainDeviceIdentity,
        ProfileOption::RetainInstitutionIdentity,
        ProfileOption::RetainPatientCharacteristics,
        ProfileOption::RetainLongitudinalFullDates,
        ProfileOption::RetainLongitudinalModifiedDates,
        ProfileOption::CleanDescriptors,
        ProfileOption::CleanStructuredContent,
        ProfileOption::CleanGraphics,
    ];

    /// Its name on the command line (`retain-uids`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ProfileOption::RetainSafePrivate => "retain-safe-private",
            ProfileOption::RetainUids => "retain-uids",
            ProfileOption::RetainDeviceIdentity => "retain-device-identity",
            ProfileOption::RetainInstitutionIdentity => "retain-institution-identity",
            ProfileOption::RetainPatientCharacteristics => "retain-patient-characteristics",
            ProfileOption::RetainLongitudinalFullDates => "retain-long-full-dates",
            ProfileOption::RetainLongitudinalModifiedDates => "retain-long-modified-dates",
            ProfileOption::CleanDescriptors => "clean-descriptors",
            ProfileOption::CleanStructuredContent => "clean-structured-content",
            ProfileOption::CleanGraphics => "clean-graphics",
        }
    }

    /// Its code in CID 7050 (De-identification Method), value and meaning.
    pub fn code(&self) -> (&'static str, &'static str) {
        match self {
            ProfileOption::CleanGraphics => ("113103", "Clean Graphics Option"),
            ProfileOption::CleanStructuredContent => ("113104", "Clean Structured Content Option"),
            ProfileOption::CleanDescriptors => ("113105", "Clean Descriptors Option"),
            ProfileOption::RetainLongitudinalFullDates => (
                "113106",
                "Retain Longitudinal Temporal Information Full Dates Option",
            ),
            ProfileOption::RetainLongitudinalModifiedDates => (
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
            ProfileOption::RetainPatientCharacteristics => {
                ("113108", "Retain Patient Characteristics Option")
            }
            ProfileOption::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
            ProfileOption::RetainUids => ("113110", "Retain UIDs Option"),
            ProfileOption::RetainSafePrivate => ("113111", "Retain Safe Private Option"),
            ProfileOption::RetainInstitutionIdentity => {
                ("113112", "Retain Institution Identity Option")
            }
        }
    }
}

impl std::str::FromStr for ProfileOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileOption::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown option {s:?}; the options are {}",
                    ProfileOption::ALL.map(|o| o.name()).join(", ")
                )
            })
    }
}

/// Why an instance could not be de-identified or re-identified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeidentifyError {
    /// The key is unusable.
    #[error("de-identification key: {0}")]
    Key(String),
    /// The mapping file could not be read or written.
    #[error("mapping file {path}")]
    MappingFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a mapping file (its first line is not a mapping header).
    #[error("{path} is not a mapping file")]
    NotAMapping {
        /// The file.
        path: PathBuf,
        /// Why its first line was refused.
        #[source]
        source: serde_json::Error,
    },
    /// The new file meta group could not be made.
    #[error("cannot make the file meta group of the de-identified instance")]
    Meta(#[source] Box<dicom_object::WithMetaError>),
}

/// A de-identified instance, with what the de-identifier wants a person to know.
#[derive(Debug)]
pub struct Deidentified {
    /// The instance.
    pub instance: DicomInstance,
    /// E.g. burned-in annotation left in the pixels.
    pub warnings: Vec<String>,
}

/// The patient attributes whose original values the mapping keeps for re-identification.
const PATIENT_IDENTITY: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::OTHER_PATIENT_NAMES,
    tags::PATIENT_BIRTH_NAME,
    tags::PATIENT_MOTHER_BIRTH_NAME,
];

/// The study attributes whose original values the mapping keeps, by study.
const STUDY_IDENTITY: &[Tag] = &[
    tags::ACCESSION_NUMBER,
    tags::STUDY_ID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
];

fn tag_key(tag: Tag) -> String {
    format!("{:04X},{:04X}", tag.0, tag.1)
}

fn key_tag(key: &str) -> Option<Tag> {
    let (g, e) = key.split_once(',')?;
    Some(Tag(
        u16::from_str_radix(g, 16).ok()?,
        u16::from_str_radix(e, 16).ok()?,
    ))
}

fn dictionary_vr(tag: Tag) -> VR {
    use dicom_core::dictionary::DataDictionary;
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr.relaxed())
        .unwrap_or(VR::LO)
}

/// Applies the profile with the options chosen.
#[derive(Debug, Clone, Default)]
pub struct Deidentifier {
    options: Vec<ProfileOption>,
    pseudonyms: BTreeMap<String, String>,
    safe_private_creators: Vec<String>,
}

impl Deidentifier {
    /// The Basic Profile without options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an option.
    pub fn with(mut self, option: ProfileOption) -> Self {
        if !self.options.contains(&option) {
            self.options.push(option);
        }
        self
    }

    /// The options chosen.
    pub fn options(&self) -> &[ProfileOption] {
        &self.options
    }

    /// Uses `pseudonym` for the patient with this PatientID (instead of one derived from
    /// the key).
    pub fn pseudonym(
        mut self,
        patient_id: impl Into<String>,
        pseudonym: impl Into<String>,
    ) -> Self {
        self.pseudonyms.insert(patient_id.into(), pseudonym.into());
        self
    }

    /// Under [`ProfileOption::RetainSafePrivate`], keeps every private attribute of this
    /// private creator too (a vendor's block known locally to hold no identity), besides
    /// those the standard lists as safe. Without the option, private attributes are removed.
    pub fn safe_private_creator(mut self, creator: impl Into<String>) -> Self {
        self.safe_private_creators.push(creator.into());
        self
    }

    /// De-identifies one instance, recording replacements in `mapping` (call
    /// [`Mapping::save`] to keep them in its file).
    pub fn deidentify(
        &self,
        instance: &DicomInstance,
        mapping: &mut Mapping,
    ) -> Result<Deidentified, DeidentifyError> {
        let patient_id = value_of(instance, tags::PATIENT_ID).unwrap_or_default();
        let mut warnings = Vec::new();
        // Without a PatientID, the patient is told apart by name and birth date.
        let identity = if patient_id.is_empty() {
            let name = value_of(instance, tags::PATIENT_NAME).unwrap_or_default();
            let birth = value_of(instance, tags::PATIENT_BIRTH_DATE).unwrap_or_default();
            if name.is_empty() && birth.is_empty() {
                warnings.push(
                    "no PatientID, PatientName or PatientBirthDate: the instance shares the pseudonym of every such instance".to_string(),
                );
            }
            format!("name:{name}|birth:{birth}")
        } else {
            patient_id.clone()
        };
        let pseudonym = self
            .pseudonyms
            .get(&patient_id)
            .cloned()
            .unwrap_or_else(|| mapping.derived_pseudonym(&identity));
        let shift_days = mapping.date_shift_days(&identity);
        let mut identifiers: Vec<String> = [
            tags::PATIENT_ID,
            // Other Patient IDs (retired, still sent).
            Tag(0x0010, 0x1000),
            tags::ACCESSION_NUMBER,
            tags::PATIENT_BIRTH_DATE,
            tags::STUDY_ID,
        ]
        .iter()
        .filter_map(|&t| value_of(instance, t))
        .flat_map(|v| v.split('\\').map(str::to_string).collect::<Vec<_>>())
        .collect();
        for name_tag in [
            tags::PATIENT_NAME,
            tags::OTHER_PATIENT_NAMES,
            tags::PATIENT_BIRTH_NAME,
            tags::REFERRING_PHYSICIAN_NAME,
        ] {
            if let Some(name) = value_of(instance, name_tag) {
                identifiers.extend(
                    name.split(['^', '\\', ' ', '='])
                        .filter(|p| !p.is_empty())
                        .map(str::to_string),
                );
            }
        }
        let mut walk = Walk {
            options: &self.options,
            safe_private_creators: &self.safe_private_creators,
            mapping,
            pseudonym: pseudonym.clone(),
            shift_days,
            identifiers,
        };
        let mut obj = walk.object(instance);
        self.mark(&mut obj);

        let mut record = PatientRecord {
            pseudonym: pseudonym.clone(),
            date_shift_days: shift_days,
            ..Default::default()
        };
        for &tag in PATIENT_IDENTITY {
            if let Some(v) = instance.get(tag).and_then(|e| e.to_str().ok()) {
                record.patient.insert(tag_key(tag), v.to_string());
            }
        }
        let new_study = value_of(&obj, tags::STUDY_INSTANCE_UID).unwrap_or_default();
        let study: BTreeMap<String, String> = STUDY_IDENTITY
            .iter()
            .filter_map(|&tag| {
                let v = instance.get(tag)?.to_str().ok()?;
                Some((tag_key(tag), v.to_string()))
            })
            .collect();
        record.studies.insert(new_study, study);
        walk.mapping.record_patient(record);

        if value_of(instance, tags::BURNED_IN_ANNOTATION).as_deref() == Some("YES") {
            let warning = format!(
                "{} says BurnedInAnnotation YES: its pixels may show identities, and pixel data are not cleaned",
                value_of(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default()
            );
            tracing::warn!("{warning}");
            warnings.push(warning);
        }
        let instance = with_meta(obj, instance)?;
        Ok(Deidentified { instance, warnings })
    }

    /// Patient Identity Removed, the method and its codes, and what became of dates.
    fn mark(&self, obj: &mut InMemDicomObject) {
        put(obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES".into());
        // One LO value (at most 64 characters) for the profile and one for each option.
        let method: Vec<String> = std::iter::once(format!("PS3.15 {EDITION} Basic Profile"))
            .chain(self.options.iter().map(|o| o.code().1.to_string()))
            .collect();
        put(
            obj,
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            PrimitiveValue::Strs(method.into()),
        );
        let codes = std::iter::once(("113100", "Basic Application Confidentiality Profile"))
            .chain(self.options.iter().map(ProfileOption::code))
            .map(|(value, meaning)| {
                InMemDicomObject::from_element_iter([
                    DataElement::new(tags::CODE_VALUE, VR::SH, value),
                    DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM"),
                    DataElement::new(tags::CODE_MEANING, VR::LO, meaning),
                ])
            })
            .collect::<Vec<_>>();
        obj.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(codes, Length::UNDEFINED),
        ));
        let temporal = if self
            .options
            .contains(&ProfileOption::RetainLongitudinalFullDates)
        {
            "UNMODIFIED"
        } else if self
            .options
            .contains(&ProfileOption::RetainLongitudinalModifiedDates)
        {
            "MODIFIED"
        } else {
            "REMOVED"
        };
        put(
            obj,
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            temporal.into(),
        );
    }
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: PrimitiveValue) {
    obj.put(DataElement::new(tag, vr, value));
}

/// The Part-10 instance of `obj` with a new file meta group naming this application (the
/// source's transfer syntax kept).
fn with_meta(
    obj: InMemDicomObject,
    source: &DicomInstance,
) -> Result<DicomInstance, DeidentifyError> {
    let sop_class = value_of(&obj, tags::SOP_CLASS_UID).unwrap_or_else(|| {
        source
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string()
    });
    let sop_instance = value_of(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(source.meta().transfer_syntax().trim_end_matches('\0'))
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .implementation_version_name("DICOMNODE_RS");
    obj.with_meta(meta)
        .map_err(|e| DeidentifyError::Meta(Box::new(e)))
}

#[cfg(test)]
mod mapping_tests;
#[cfg(test)]
mod tests;

//! The walk over a data set that applies the profile's action to each element, in
//! sequence items too.

use super::profile::{Action, SafePrivate, Table};
use super::{values, Mapping, ProfileOption};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::collections::BTreeMap;

/// What the walk over a data set needs.
pub(crate) struct Walk<'a> {
    pub options: &'a [ProfileOption],
    pub safe_private_creators: &'a [String],
    pub mapping: &'a mut Mapping,
    pub pseudonym: String,
    pub shift_days: i64,
    pub identifiers: Vec<String>,
}

impl Walk<'_> {
    pub(crate) fn object(&mut self, source: &InMemDicomObject) -> InMemDicomObject {
        let mut out = InMemDicomObject::new_empty();
        let creators = private_creators(source);
        for element in source.iter() {
            if let Some(kept) = self.element(element, &creators) {
                out.put(kept);
            }
        }
        out
    }

    fn items(&mut self, items: &[InMemDicomObject]) -> Vec<InMemDicomObject> {
        items.iter().map(|item| self.object(item)).collect()
    }

    /// The element after the profile's action, or `None` to remove it.
    fn element(
        &mut self,
        element: &DataElement<InMemDicomObject>,
        creators: &BTreeMap<(u16, u8), String>,
    ) -> Option<DataElement<InMemDicomObject>> {
        let tag = element.tag();
        let vr = element.vr();
        if tag.0 % 2 == 1 {
            return self.private(element, creators);
        }
        let is_sequence = matches!(element.value(), Value::Sequence(_));
        let Some(row) = Table::standard().row(tag) else {
            // Not in the table: kept, except UIDs that are identities (an instance's,
            // a frame of reference's), which are replaced like those the table lists.
            if vr == VR::UI
                && !self.options.contains(&ProfileOption::RetainUids)
                && !NAMES_A_CLASS.contains(&tag)
            {
                return Some(self.uids(element));
            }
            return Some(self.recursed(element));
        };
        let mut action = row.action(self.options);
        // An option's "clean" where this cleaner cannot clean (binary values, overlays,
        // timestamps): the basic action, which removes or replaces.
        if action == Action::C && !cleanable(vr, is_sequence) {
            action = row.basic;
        }
        // The patient's identity becomes the pseudonym wherever the profile changes it.
        if (tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME) && action != Action::K {
            return Some(DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(self.pseudonym.as_str()),
            ));
        }
        match action {
            Action::X => None,
            Action::K => Some(self.recursed(element)),
            Action::Z | Action::XOrZ => Some(if is_sequence {
                DataElement::new(tag, VR::SQ, DataSetSequence::<InMemDicomObject>::empty())
            } else {
                DataElement::new(tag, vr, PrimitiveValue::Empty)
            }),
            Action::D | Action::ZOrD | Action::XOrD | Action::XOrZOrD => Some(if is_sequence {
                self.recursed(element)
            } else if vr == VR::UI {
                self.uids(element)
            } else {
                DataElement::new(tag, vr, values::dummy(vr))
            }),
            Action::U | Action::XOrZOrUids => Some(if is_sequence {
                self.recursed(element)
            } else if vr == VR::UI {
                self.uids(element)
            } else {
                DataElement::new(tag, vr, values::dummy(vr))
            }),
            Action::C => Some(self.cleaned(element)),
        }
    }

    /// The element with each sequence item de-identified (others as they are).
    fn recursed(
        &mut self,
        element: &DataElement<InMemDicomObject>,
    ) -> DataElement<InMemDicomObject> {
        match element.value() {
            Value::Sequence(seq) => DataElement::new(
                element.tag(),
                VR::SQ,
                DataSetSequence::new(self.items(seq.items()), Length::UNDEFINED),
            ),
            _ => element.clone(),
        }
    }

    fn uids(&mut self, element: &DataElement<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        let mapped: Vec<String> = match element.value() {
            Value::Primitive(p) => p
                .to_multi_str()
                .iter()
                .map(|u| u.trim_end_matches(['\0', ' ']))
                .filter(|u| !u.is_empty())
                // UIDs the standard defines (classes, syntaxes, well-known frames of
                // reference) identify no one.
                .map(|u| {
                    if u.starts_with("1.2.840.10008.") {
                        u.to_string()
                    } else {
                        self.mapping.uid(u)
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        if mapped.is_empty() {
            return DataElement::new(element.tag(), VR::UI, PrimitiveValue::Empty);
        }
        DataElement::new(element.tag(), VR::UI, PrimitiveValue::Strs(mapped.into()))
    }

    fn cleaned(
        &mut self,
        element: &DataElement<InMemDicomObject>,
    ) -> DataElement<InMemDicomObject> {
        let (tag, vr) = (element.tag(), element.vr());
        let Value::Primitive(p) = element.value() else {
            return self.recursed(element);
        };
        let texts = p.to_multi_str();
        let map = |f: &dyn Fn(&str) -> String| -> PrimitiveValue {
            PrimitiveValue::Strs(texts.iter().map(|t| f(t)).collect())
        };
        match vr {
            VR::DA | VR::DT => {
                let days = self.shift_days;
                DataElement::new(
                    tag,
                    vr,
                    map(&|t| values::shift_date(t, days).unwrap_or_default()),
                )
            }
            VR::TM => element.clone(),
            VR::AE => {
                let mapping = &*self.mapping;
                DataElement::new(
                    tag,
                    vr,
                    map(&|t| {
                        let hash = mapping.keyed_hash(format!("ae:{}", t.trim()).as_bytes());
                        format!(
                            "AE{:02X}{:02X}{:02X}{:02X}",
                            hash[0], hash[1], hash[2], hash[3]
                        )
                    }),
                )
            }
            VR::UI => self.uids(element),
            VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC | VR::PN => {
                let ids = &self.identifiers;
                DataElement::new(tag, vr, map(&|t| values::scrub(t, ids)))
            }
            _ => element.clone(),
        }
    }

    /// A private element: kept under Retain Safe Private when the standard lists it as
    /// safe (Table E.3.10-1) or its creator is one the user named safe (a creator element
    /// is kept when its block may hold safe attributes); otherwise removed.
    fn private(
        &mut self,
        element: &DataElement<InMemDicomObject>,
        creators: &BTreeMap<(u16, u8), String>,
    ) -> Option<DataElement<InMemDicomObject>> {
        if !self.options.contains(&ProfileOption::RetainSafePrivate) {
            return None;
        }
        let tag = element.tag();
        let safe_list = SafePrivate::standard();
        let named_safe = |c: &str| self.safe_private_creators.iter().any(|s| s == c);
        let safe = if (0x0010..=0x00FF).contains(&tag.1) {
            creators
                .get(&(tag.0, tag.1 as u8))
                .is_some_and(|c| named_safe(c) || safe_list.has_creator(tag.0, c))
        } else {
            creators.get(&(tag.0, (tag.1 >> 8) as u8)).is_some_and(|c| {
                named_safe(c) || safe_list.contains(tag.0, c, (tag.1 & 0xFF) as u8)
            })
        };
        safe.then(|| self.recursed(element))
    }
}

/// UID attributes that name a kind of thing (a SOP class, a coding scheme), not a thing:
/// never replaced.
const NAMES_A_CLASS: &[dicom_core::Tag] = &[
    tags::SOP_CLASS_UID,
    tags::REFERENCED_SOP_CLASS_UID,
    tags::RELATED_GENERAL_SOP_CLASS_UID,
    tags::ORIGINAL_SPECIALIZED_SOP_CLASS_UID,
    tags::SOP_CLASSES_IN_STUDY,
    tags::CODING_SCHEME_UID,
    tags::CONTEXT_UID,
    tags::MAPPING_RESOURCE_UID,
    tags::REFERENCED_SOP_CLASS_UID_IN_FILE,
    tags::REFERENCED_TRANSFER_SYNTAX_UID_IN_FILE,
    tags::TRANSFER_SYNTAX_UID,
];

/// Whether the cleaner can clean a value of this VR: dates (shifted), AE titles (hashed),
/// UIDs (replaced), text (identifiers scrubbed), times (kept), sequences (recursed).
fn cleanable(vr: VR, is_sequence: bool) -> bool {
    is_sequence
        || matches!(
            vr,
            VR::DA
                | VR::DT
                | VR::TM
                | VR::AE
                | VR::UI
                | VR::LO
                | VR::SH
                | VR::ST
                | VR::LT
                | VR::UT
                | VR::UC
                | VR::PN
        )
}

/// The private creators of a data set: (group, block) to creator name.
fn private_creators(obj: &InMemDicomObject) -> BTreeMap<(u16, u8), String> {
    obj.iter()
        .filter(|e| e.tag().0 % 2 == 1 && (0x0010..=0x00FF).contains(&e.tag().1))
        .filter_map(|e| {
            let name = e.to_str().ok()?.trim().to_string();
            Some(((e.tag().0, e.tag().1 as u8), name))
        })
        .collect()
}

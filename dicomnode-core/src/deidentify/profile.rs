//! PS3.15 Table E.1-1, the Application Level Confidentiality Profile Attributes, as data:
//! `table_e1_1.tsv` is the standard's own table (edition [`EDITION`]), extracted from its
//! DocBook source by `scripts/extract_confidentiality_table.py`. This module reads it and
//! says, for a tag and a set of options, what to do.

use super::ProfileOption;
use dicom_core::Tag;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The edition of DICOM PS3.15 the table comes from.
pub const EDITION: &str = "2024c";

const TABLE: &str = include_str!("table_e1_1.tsv");

/// PS3.15 Table E.3.10-1, Safe Private Attributes, of the same edition.
const SAFE_PRIVATE: &str = include_str!("safe_private.tsv");

/// The private attributes the standard lists as safe: (group, private creator, element
/// within the creator's block).
pub struct SafePrivate {
    elements: std::collections::HashSet<(u16, String, u8)>,
}

impl SafePrivate {
    /// The standard's list (edition [`EDITION`]).
    pub fn standard() -> &'static SafePrivate {
        static LIST: OnceLock<SafePrivate> = OnceLock::new();
        LIST.get_or_init(|| {
            let elements = SAFE_PRIVATE
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let mut cells = line.split('\t');
                    let element = cells.next()?;
                    let creator = cells.next()?.trim().to_string();
                    let inner = element.strip_prefix('(')?.strip_suffix(')')?;
                    let (group, low) = inner.split_once(",xx")?;
                    Some((
                        u16::from_str_radix(group, 16).ok()?,
                        creator,
                        u8::from_str_radix(low, 16).ok()?,
                    ))
                })
                .collect();
            SafePrivate { elements }
        })
    }

    /// How many attributes the list holds.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Whether element `low` of `creator`'s block in `group` is safe.
    pub fn contains(&self, group: u16, creator: &str, low: u8) -> bool {
        self.elements.contains(&(group, creator.to_string(), low))
    }

    /// Whether `creator` has any safe attribute in `group`.
    pub fn has_creator(&self, group: u16, creator: &str) -> bool {
        self.elements
            .iter()
            .any(|(g, c, _)| *g == group && c == creator)
    }
}

/// An action of the profile (PS3.15 Table E.1-1a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Replace with a non-empty dummy value of the VR.
    D,
    /// Replace with an empty value (or a dummy).
    Z,
    /// Remove.
    X,
    /// Keep (sequences: apply the profile to their items).
    K,
    /// Clean: replace with values of similar meaning that identify no one.
    C,
    /// Replace the UID with another, consistently.
    U,
    /// Z, or D where the attribute is Type 1.
    ZOrD,
    /// X, or Z where the attribute is Type 2.
    XOrZ,
    /// X, or D where the attribute is Type 1.
    XOrD,
    /// X, Z or D by the attribute's type.
    XOrZOrD,
    /// X, Z, or U applied to the UIDs a sequence holds.
    XOrZOrUids,
}

impl Action {
    fn parse(code: &str) -> Option<Action> {
        Some(match code {
            "D" => Action::D,
            "Z" => Action::Z,
            "X" => Action::X,
            "K" => Action::K,
            "C" => Action::C,
            "U" => Action::U,
            "Z/D" => Action::ZOrD,
            "X/Z" => Action::XOrZ,
            "X/D" => Action::XOrD,
            "X/Z/D" => Action::XOrZOrD,
            "X/Z/U*" => Action::XOrZOrUids,
            _ => return None,
        })
    }

    /// The code as the standard writes it.
    pub fn code(&self) -> &'static str {
        match self {
            Action::D => "D",
            Action::Z => "Z",
            Action::X => "X",
            Action::K => "K",
            Action::C => "C",
            Action::U => "U",
            Action::ZOrD => "Z/D",
            Action::XOrZ => "X/Z",
            Action::XOrD => "X/D",
            Action::XOrZOrD => "X/Z/D",
            Action::XOrZOrUids => "X/Z/U*",
        }
    }
}

/// Which tags a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagPattern {
    /// One tag.
    Exact(Tag),
    /// `(50xx,xxxx)`: curve data, every element of the repeating groups 5000-50FF.
    CurveGroups,
    /// `(60xx,eeee)`: one element of the overlay groups 6000-60FF.
    OverlayElement(u16),
    /// `(gggg,eeee)` with gggg odd: private attributes.
    Private,
}

impl TagPattern {
    fn parse(text: &str) -> Option<TagPattern> {
        if text.starts_with("(gggg,eeee)") {
            return Some(TagPattern::Private);
        }
        let inner = text.strip_prefix('(')?.strip_suffix(')')?;
        let (group, element) = inner.split_once(',')?;
        if group == "50xx" && element == "xxxx" {
            return Some(TagPattern::CurveGroups);
        }
        if group == "60xx" {
            return u16::from_str_radix(element, 16)
                .ok()
                .map(TagPattern::OverlayElement);
        }
        Some(TagPattern::Exact(Tag(
            u16::from_str_radix(group, 16).ok()?,
            u16::from_str_radix(element, 16).ok()?,
        )))
    }

    /// Whether `tag` is covered.
    pub fn covers(&self, tag: Tag) -> bool {
        match *self {
            TagPattern::Exact(t) => t == tag,
            TagPattern::CurveGroups => {
                (0x5000..=0x50FF).contains(&tag.0) && tag.0.is_multiple_of(2)
            }
            TagPattern::OverlayElement(e) => {
                (0x6000..=0x60FF).contains(&tag.0) && tag.0.is_multiple_of(2) && tag.1 == e
            }
            TagPattern::Private => tag.0 % 2 == 1,
        }
    }
}

/// One row of Table E.1-1.
#[derive(Debug, Clone)]
pub struct Row {
    /// The attribute's name as the standard writes it.
    pub name: String,
    /// The tags it covers.
    pub pattern: TagPattern,
    /// The Basic Profile's action.
    pub basic: Action,
    /// Each option's action, where the option has one (see [`ProfileOption::ALL`]).
    pub options: Vec<(ProfileOption, Action)>,
}

impl Row {
    /// The action with `options` on: an option's action replaces the basic one; where
    /// several enabled options have one, keeping (K) wins over cleaning (C), which wins
    /// over the basic action (the standard does not order options; keeping what the user
    /// asked to retain is the choice made here).
    pub fn action(&self, options: &[ProfileOption]) -> Action {
        let enabled = || {
            self.options
                .iter()
                .filter(|(o, _)| options.contains(o))
                .map(|(_, a)| *a)
        };
        if enabled().any(|a| a == Action::K) {
            Action::K
        } else if enabled().any(|a| a == Action::C) {
            Action::C
        } else {
            self.basic
        }
    }
}

/// The table, parsed once.
pub struct Table {
    rows: Vec<Row>,
    exact: HashMap<Tag, usize>,
}

impl Table {
    /// The standard's table (edition [`EDITION`]).
    pub fn standard() -> &'static Table {
        static TABLE_PARSED: OnceLock<Table> = OnceLock::new();
        TABLE_PARSED.get_or_init(|| Table::parse(TABLE))
    }

    fn parse(text: &str) -> Table {
        let mut rows = Vec::new();
        for line in text.lines().skip(1) {
            let cells: Vec<&str> = line.split('\t').collect();
            // The file is checked at build time by the tests; a malformed line is skipped.
            if cells.len() != 15 {
                continue;
            }
            let (Some(pattern), Some(basic)) =
                (TagPattern::parse(cells[1]), Action::parse(cells[4]))
            else {
                continue;
            };
            let options = ProfileOption::ALL
                .iter()
                .zip(&cells[5..])
                .filter_map(|(o, code)| Action::parse(code).map(|a| (*o, a)))
                .collect();
            rows.push(Row {
                name: cells[0].to_string(),
                pattern,
                basic,
                options,
            });
        }
        let exact = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.pattern {
                TagPattern::Exact(t) => Some((t, i)),
                _ => None,
            })
            .collect();
        Table { rows, exact }
    }

    /// Every row, in the standard's order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The row that covers `tag`, if any.
    pub fn row(&self, tag: Tag) -> Option<&Row> {
        match self.exact.get(&tag) {
            Some(&i) => self.rows.get(i),
            None => self
                .rows
                .iter()
                .find(|r| !matches!(r.pattern, TagPattern::Exact(_)) && r.pattern.covers(tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    #[test]
    fn the_whole_standard_table_is_read() {
        let lines = TABLE.lines().count() - 1;
        assert_eq!(Table::standard().rows().len(), lines);
        assert_eq!(lines, 623);
        let t = Table::standard();
        assert_eq!(t.row(tags::PATIENT_NAME).unwrap().basic, Action::Z);
        let study = t.row(tags::STUDY_INSTANCE_UID).unwrap();
        assert_eq!(study.action(&[]), Action::U);
        assert_eq!(study.action(&[ProfileOption::RetainUids]), Action::K);
        let date = t.row(tags::STUDY_DATE).unwrap();
        assert_eq!(
            date.action(&[ProfileOption::RetainLongitudinalModifiedDates]),
            Action::C
        );
        assert_eq!(
            date.action(&[ProfileOption::RetainLongitudinalFullDates]),
            Action::K
        );
        assert_eq!(t.row(Tag(0x6002, 0x3000)).unwrap().basic, Action::X);
        assert_eq!(t.row(Tag(0x5010, 0x0005)).unwrap().basic, Action::X);
        assert_eq!(
            t.row(Tag(0x0029, 0x1010)).unwrap().pattern,
            TagPattern::Private
        );
        assert!(t.row(tags::ROWS).is_none());
        let safe = SafePrivate::standard();
        assert_eq!(safe.len(), SAFE_PRIVATE.lines().count() - 1);
        assert!(safe.contains(0x7053, "Philips PET Private Group", 0x00));
        assert!(!safe.contains(0x7053, "Philips PET Private Group", 0x50));
    }
}

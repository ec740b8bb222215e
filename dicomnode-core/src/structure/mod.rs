//! Checks the structure of an encoded data set before anything parses it.
//!
//! The dicom-rs parser trusts what a data set declares: it reserves an element's declared
//! length before reading it (a 60-byte message declaring 4 GiB makes it zero-fill 4 GiB),
//! and it descends into nested sequences by recursion (a 32 kB data set nested 1,500 deep
//! overflows a thread's stack, which aborts the whole process). Data from a peer is
//! therefore walked here first, without recursion and without allocating anything a
//! length field asks for: every declared length must fit in what really follows, and
//! sequences may nest at most [`MAX_SEQUENCE_DEPTH`] deep. Only a data set that passes is
//! handed to the parser.

use dicom_core::{Tag, VR};
use dicom_encoding::transfer_syntax::{Codec, Endianness};
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::io::{self, Read, Seek, SeekFrom};
use walker::{Encoding, Seeking, Streamed, Walker};

mod walker;

/// How deep sequences may nest (a sequence inside an item of a sequence is depth 2). Real
/// data sets rarely pass 10 (structured reports, enhanced multi-frame); the parser needs
/// about 1.4 KiB of stack per level, so this stays far below any thread's stack.
pub const MAX_SEQUENCE_DEPTH: usize = 64;

/// The implicit VR little endian transfer syntax (the only implicit one).
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// How much of a deflated data set is inflated in memory to read its header.
const MAX_INFLATED_HEADER: u64 = 64 << 20;
/// A deflated data set inflating past this is refused (a deflate bomb).
const MAX_INFLATED: u64 = 1 << 32;

/// Why a data set was refused before parsing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StructureError {
    /// An element or item declares more bytes than follow it.
    #[error("{tag} at byte {at} declares {declared} bytes, but only {left} follow")]
    LengthBeyondEnd {
        /// The element (or item) tag.
        tag: Tag,
        /// Where its header starts.
        at: u64,
        /// The declared length.
        declared: u64,
        /// What really follows, up to the end of what encloses it.
        left: u64,
    },
    /// Sequences nest deeper than [`MAX_SEQUENCE_DEPTH`].
    #[error("sequences nest deeper than {max} levels (at {tag}, byte {at})")]
    TooDeep {
        /// The limit.
        max: usize,
        /// The sequence that went past it.
        tag: Tag,
        /// Where its header starts.
        at: u64,
    },
    /// The data set ends inside an element header or an open sequence or item.
    #[error("the data set ends early, at byte {at}, inside {inside}")]
    Truncated {
        /// Where it ends.
        at: u64,
        /// What was open.
        inside: &'static str,
    },
    /// An element where only items may be, an item outside a sequence, a delimiter that
    /// closes nothing.
    #[error("unexpected {tag} at byte {at}: {why}")]
    Misplaced {
        /// The tag found.
        tag: Tag,
        /// Where.
        at: u64,
        /// What was expected.
        why: &'static str,
    },
    /// An undefined length on an element that cannot have one.
    #[error("{tag} at byte {at} has an undefined length but VR {vr} cannot have one")]
    UndefinedLength {
        /// The element.
        tag: Tag,
        /// Where.
        at: u64,
        /// Its VR.
        vr: VR,
    },
    /// The transfer syntax is unknown, or its data sets cannot be read (e.g. deflated
    /// without the codec).
    #[error("data sets in transfer syntax {0:?} cannot be read by this node")]
    TransferSyntax(String),
    /// The header of a deflated data set (before Pixel Data) inflates past what is read
    /// into memory.
    #[error("the deflated data set's header inflates to {inflated} bytes, more than the {limit} read into memory")]
    HeaderTooLarge {
        /// The header's inflated length.
        inflated: u64,
        /// The limit.
        limit: u64,
    },
    /// A deflated data set inflates past the limit.
    #[error("the deflated data set inflates past {} GiB", MAX_INFLATED >> 30)]
    InflatesTooFar,
    /// Reading failed.
    #[error("cannot read the data set")]
    Io(#[from] io::Error),
}

/// Checks a data set held in memory, encoded in `transfer_syntax`.
pub fn check_bytes(bytes: &[u8], transfer_syntax: &str) -> Result<(), StructureError> {
    check_seekable(io::Cursor::new(bytes), bytes.len() as u64, transfer_syntax)
}

/// Checks a data set of `len` bytes starting at the current position of `source` (a file
/// after its meta group, say). Values are skipped by seeking, not read.
pub fn check_seekable<R: Read + Seek>(
    source: R,
    len: u64,
    transfer_syntax: &str,
) -> Result<(), StructureError> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| StructureError::TransferSyntax(transfer_syntax.to_string()))?;
    let encoding = Encoding {
        explicit: transfer_syntax.trim_end_matches(['\0', ' ']) != IMPLICIT_VR_LE,
        big_endian: matches!(ts.endianness(), Endianness::Big),
    };
    match ts.codec() {
        Codec::Dataset(None) => Err(StructureError::TransferSyntax(transfer_syntax.to_string())),
        Codec::Dataset(Some(_)) => deflated_header_len(source, len, transfer_syntax).map(|_| ()),
        _ => Walker::new(Seeking(io::BufReader::new(source)), Some(len), encoding).walk(),
    }
}

/// Walks a deflated data set (values read through, so proven present, since the inflated
/// length is unknown) and returns the inflated length of its header: the bytes before the
/// top-level Pixel Data, or all of them.
fn deflated_header_len<R: Read>(
    source: R,
    len: u64,
    transfer_syntax: &str,
) -> Result<u64, StructureError> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| StructureError::TransferSyntax(transfer_syntax.to_string()))?;
    let Codec::Dataset(Some(adapter)) = ts.codec() else {
        return Err(StructureError::TransferSyntax(transfer_syntax.to_string()));
    };
    let encoding = Encoding {
        explicit: true,
        big_endian: matches!(ts.endianness(), Endianness::Big),
    };
    let inflated = adapter.adapt_reader(Box::new(io::BufReader::new(source).take(len)));
    let mut walker = Walker::new(Streamed(inflated.take(MAX_INFLATED + 1)), None, encoding);
    walker.walk()?;
    if walker.pos > MAX_INFLATED {
        return Err(StructureError::InflatesTooFar);
    }
    Ok(walker.pixel_data_at.unwrap_or(walker.pos))
}

/// Why the header of a received data set could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Its structure was refused before parsing.
    #[error(transparent)]
    Structure(#[from] StructureError),
    /// The parser refused it.
    #[error("cannot parse the data set")]
    Parse(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads the elements before Pixel Data of a data set encoded in `transfer_syntax`, which
/// starts at the current position of `source` and runs to its end: all the inputs' rules
/// need, without reading the pixels. The structure is checked first ([`check_seekable`]).
pub fn read_header<R: Read + Seek>(
    mut source: R,
    transfer_syntax: &str,
) -> Result<dicom_object::InMemDicomObject, HeaderError> {
    let start = source.stream_position().map_err(StructureError::Io)?;
    let end = source.seek(SeekFrom::End(0)).map_err(StructureError::Io)?;
    source
        .seek(SeekFrom::Start(start))
        .map_err(StructureError::Io)?;
    let mut header = dicom_object::InMemDicomObject::new_empty();
    let deflate = TransferSyntaxRegistry
        .get(transfer_syntax)
        .and_then(|ts| match ts.codec() {
            Codec::Dataset(Some(adapter)) => Some(adapter),
            _ => None,
        });
    // A deflated data set is checked by the walk below, which also measures its header.
    if deflate.is_none() {
        check_seekable(&mut source, end.saturating_sub(start), transfer_syntax)?;
        source
            .seek(SeekFrom::Start(start))
            .map_err(StructureError::Io)?;
    }
    let parsed = match deflate {
        // Deflated: the collector reads the inflated stream as the explicit VR little
        // endian data set it is (the check above bounded how far it inflates).
        // The collector needs to seek, so the inflated header is held in memory: only the
        // header (up to the Pixel Data element's own header), whose every length the walk
        // proved, and only if it is at most MAX_INFLATED_HEADER.
        Some(adapter) => {
            let header_len =
                deflated_header_len(&mut source, end.saturating_sub(start), transfer_syntax)?;
            if header_len > MAX_INFLATED_HEADER {
                return Err(StructureError::HeaderTooLarge {
                    inflated: header_len,
                    limit: MAX_INFLATED_HEADER,
                }
                .into());
            }
            source
                .seek(SeekFrom::Start(start))
                .map_err(StructureError::Io)?;
            let mut inflated = Vec::new();
            adapter
                .adapt_reader(Box::new(io::BufReader::new(source)))
                // The Pixel Data element's tag, VR and length follow the header.
                .take(header_len + 12)
                .read_to_end(&mut inflated)
                .map_err(StructureError::Io)?;
            dicom_object::collector::DicomCollector::new_with_ts(
                io::BufReader::new(io::Cursor::new(inflated)),
                EXPLICIT_VR_LE.to_string(),
            )
            .read_dataset_up_to_pixeldata(&mut header)
        }
        None => dicom_object::collector::DicomCollector::new_with_ts(
            io::BufReader::new(source),
            transfer_syntax.to_string(),
        )
        .read_dataset_up_to_pixeldata(&mut header),
    };
    parsed.map_err(|e| HeaderError::Parse(Box::new(e)))?;
    Ok(header)
}

/// Checks the data set of a Part-10 file: the meta group is read, then the data set is
/// checked in the transfer syntax the meta group names.
pub fn check_file(path: &std::path::Path) -> Result<(), StructureError> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let (start, transfer_syntax) = read_meta(&mut file, len)?;
    file.seek(SeekFrom::Start(start))?;
    check_seekable(file, len.saturating_sub(start), &transfer_syntax)
}

/// Reads the meta group of a Part-10 file just far enough to know where the data set
/// starts and its transfer syntax.
fn read_meta(file: &mut std::fs::File, len: u64) -> Result<(u64, String), StructureError> {
    let truncated = |at| StructureError::Truncated {
        at,
        inside: "the file meta group",
    };
    let mut head = [0u8; 144];
    file.read_exact(&mut head).map_err(|_| truncated(0))?;
    if &head[128..132] != b"DICM" || head[132..138] != [2, 0, 0, 0, b'U', b'L'] {
        return Err(StructureError::Misplaced {
            tag: Tag(0x0002, 0x0000),
            at: 132,
            why: "a Part-10 file starts with DICM and the meta group length",
        });
    }
    let group_len = u64::from(u32::from_le_bytes([
        head[140], head[141], head[142], head[143],
    ]));
    let start = 144 + group_len;
    if start > len || group_len > 64 * 1024 {
        return Err(StructureError::LengthBeyondEnd {
            tag: Tag(0x0002, 0x0000),
            at: 132,
            declared: group_len,
            left: len.saturating_sub(144),
        });
    }
    let mut meta = vec![0u8; group_len as usize];
    file.read_exact(&mut meta).map_err(|_| truncated(144))?;
    // Explicit VR little endian elements; the transfer syntax UID is (0002,0010).
    let mut at = 0usize;
    let mut transfer_syntax = None;
    while at + 8 <= meta.len() {
        let group = u16::from_le_bytes([meta[at], meta[at + 1]]);
        let element = u16::from_le_bytes([meta[at + 2], meta[at + 3]]);
        let vr = [meta[at + 4], meta[at + 5]];
        let long = walker::has_long_length(VR::from_binary(vr).unwrap_or(VR::UN));
        let (header, value_len) = if long {
            if at + 12 > meta.len() {
                break;
            }
            let l = u32::from_le_bytes([meta[at + 8], meta[at + 9], meta[at + 10], meta[at + 11]]);
            (12, l as usize)
        } else {
            (
                8,
                usize::from(u16::from_le_bytes([meta[at + 6], meta[at + 7]])),
            )
        };
        let value = at + header;
        let Some(end) = value.checked_add(value_len).filter(|e| *e <= meta.len()) else {
            return Err(truncated(144 + at as u64));
        };
        if (group, element) == (0x0002, 0x0010) {
            if transfer_syntax.is_some() {
                // Which one a parser would take is not for a file to decide.
                return Err(StructureError::Misplaced {
                    tag: Tag(0x0002, 0x0010),
                    at: 144 + at as u64,
                    why: "the file meta group names its transfer syntax twice",
                });
            }
            let uid = String::from_utf8_lossy(&meta[value..end]);
            transfer_syntax = Some(uid.trim_end_matches(['\0', ' ']).to_string());
        }
        at = end;
    }
    transfer_syntax
        .map(|ts| (start, ts))
        .ok_or(StructureError::Misplaced {
            tag: Tag(0x0002, 0x0010),
            at: 144,
            why: "the file meta group names no transfer syntax",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue};
    use dicom_object::InMemDicomObject;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    fn le_element(tag: Tag, vr: &[u8; 2], len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&tag.0.to_le_bytes());
        b.extend_from_slice(&tag.1.to_le_bytes());
        b.extend_from_slice(vr);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    fn nested(depth: usize) -> Vec<u8> {
        let seq = Tag(0x0040, 0xA730);
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend(le_element(seq, b"SQ", 0xFFFF_FFFF));
            bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..depth {
            bytes.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        bytes
    }

    #[test]
    fn real_data_sets_pass_in_every_native_syntax() {
        let series = crate::synthetic::SyntheticSeries::ct("P", 2)
            .size(8, 8)
            .build()
            .unwrap();
        let mut obj = series[0].clone().into_inner();
        let item = InMemDicomObject::from_element_iter([DataElement::new(
            Tag(0x0008, 0x0100),
            VR::SH,
            PrimitiveValue::from("CODE"),
        )]);
        obj.put(DataElement::new(
            Tag(0x0008, 0x1032),
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item.clone(), item]),
        ));
        for ts in [IMPLICIT_VR_LE, EXPLICIT_LE, "1.2.840.10008.1.2.2"] {
            let syntax = TransferSyntaxRegistry.get(ts).unwrap();
            let mut bytes = Vec::new();
            obj.write_dataset_with_ts(&mut bytes, syntax).unwrap();
            check_bytes(&bytes, ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
        }
    }

    #[test]
    fn lying_lengths_are_refused_before_anything_is_reserved() {
        let mut bytes = le_element(Tag(0x0010, 0x0010), b"UT", 0xFFFF_FFF0);
        bytes.extend_from_slice(b"only a few bytes");
        assert!(matches!(
            check_bytes(&bytes, EXPLICIT_LE),
            Err(StructureError::LengthBeyondEnd {
                declared: 0xFFFF_FFF0,
                ..
            })
        ));
        let mut implicit = Vec::new();
        implicit.extend_from_slice(&[0x10, 0x00, 0x10, 0x00]);
        implicit.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(check_bytes(&implicit, IMPLICIT_VR_LE).is_err());
    }

    #[test]
    fn nesting_is_capped() {
        check_bytes(&nested(MAX_SEQUENCE_DEPTH), EXPLICIT_LE).unwrap();
        assert!(matches!(
            check_bytes(&nested(1500), EXPLICIT_LE),
            Err(StructureError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_meta_group_naming_two_transfer_syntaxes_is_refused() {
        let element = |element: u16, value: &[u8]| {
            let mut b = vec![0x02, 0x00];
            b.extend_from_slice(&element.to_le_bytes());
            b.extend_from_slice(b"UI");
            b.extend_from_slice(&(value.len() as u16).to_le_bytes());
            b.extend_from_slice(value);
            b
        };
        let mut group = element(0x0010, b"1.2.840.10008.1.2\0");
        group.extend(element(0x0010, b"1.2.840.10008.1.2.1\0"));
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        file.extend_from_slice(&(group.len() as u32).to_le_bytes());
        file.extend(group);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.dcm");
        std::fs::write(&path, file).unwrap();
        assert!(matches!(
            check_file(&path),
            Err(StructureError::Misplaced { why, .. }) if why.contains("twice")
        ));
    }

    #[test]
    fn a_part10_file_sent_as_a_data_set_is_refused() {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend(le_element(Tag(0x0002, 0x0001), b"OB", 2));
        bytes.extend_from_slice(&[0, 1]);
        assert!(check_bytes(&bytes, EXPLICIT_LE).is_err());
        assert!(check_bytes(b"hello, this is plain text\r\n", IMPLICIT_VR_LE).is_err());
    }
}

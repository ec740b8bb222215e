//! The walk itself: one pass over the encoded elements, with an explicit stack of what
//! is open (sequences, items, encapsulated fragments) instead of recursion.

use super::{StructureError, MAX_SEQUENCE_DEPTH};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use std::io::{self, Read, Seek};

const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How elements are encoded.
#[derive(Clone, Copy)]
pub(super) struct Encoding {
    pub(super) explicit: bool,
    pub(super) big_endian: bool,
}

/// Bytes to walk: values are either skipped by seeking or read through.
pub(super) trait Bytes {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Skips `n` bytes; for a stream, fails if fewer follow.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

/// Bytes that can be skipped by seeking.
pub(super) struct Seeking<R>(pub(super) io::BufReader<R>);
impl<R: Read + Seek> Bytes for Seeking<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
    fn skip(&mut self, n: u64) -> io::Result<()> {
        // The length was checked against what follows before.
        let n = i64::try_from(n).map_err(io::Error::other)?;
        self.0.seek_relative(n)
    }
}

/// Bytes that must be read through.
pub(super) struct Streamed<R>(pub(super) R);
impl<R: Read> Bytes for Streamed<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact(buf)
    }
    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.0).take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// What encloses the current position.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// A sequence's value: only items (and its delimiter).
    Sequence,
    /// Encapsulated pixel data: only fragment items (and its delimiter).
    Fragments,
    /// An item of a sequence: a nested data set.
    Item,
}

struct Frame {
    open: Open,
    /// The first byte after it, when its length is defined.
    end: Option<u64>,
}

/// One walk over a data set.
pub(super) struct Walker<B> {
    bytes: B,
    /// The data set's length, when known.
    len: Option<u64>,
    pub(super) pos: u64,
    encoding: Encoding,
    stack: Vec<Frame>,
    /// Where the top-level Pixel Data element starts, once seen.
    pub(super) pixel_data_at: Option<u64>,
}

impl<B: Bytes> Walker<B> {
    pub(super) fn new(bytes: B, len: Option<u64>, encoding: Encoding) -> Self {
        Walker {
            bytes,
            len,
            pos: 0,
            encoding,
            stack: Vec::new(),
            pixel_data_at: None,
        }
    }

    /// The end of the innermost enclosing thing of defined length.
    fn limit(&self) -> Option<u64> {
        self.stack.iter().rev().find_map(|f| f.end).or(self.len)
    }

    fn depth(&self) -> usize {
        self.stack.iter().filter(|f| f.open != Open::Item).count()
    }

    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.encoding.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.encoding.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn read<const N: usize>(&mut self, inside: &'static str) -> Result<[u8; N], StructureError> {
        let mut buf = [0u8; N];
        match self.bytes.read_exact(&mut buf) {
            Ok(()) => {
                self.pos += N as u64;
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StructureError::Truncated {
                at: self.pos,
                inside,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks that `declared` bytes fit before the end of what encloses them, and skips
    /// them when `skip`.
    fn fits(&mut self, tag: Tag, at: u64, declared: u32) -> Result<u64, StructureError> {
        let declared = u64::from(declared);
        if let Some(limit) = self.limit() {
            let left = limit.saturating_sub(self.pos);
            if declared > left {
                return Err(StructureError::LengthBeyondEnd {
                    tag,
                    at,
                    declared,
                    left,
                });
            }
        }
        Ok(self.pos + declared)
    }

    fn skip(&mut self, tag: Tag, at: u64, declared: u32) -> Result<(), StructureError> {
        let end = self.fits(tag, at, declared)?;
        match self.bytes.skip(u64::from(declared)) {
            Ok(()) => {
                self.pos = end;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(StructureError::LengthBeyondEnd {
                    tag,
                    at,
                    declared: u64::from(declared),
                    left: 0,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn push(
        &mut self,
        open: Open,
        tag: Tag,
        at: u64,
        end: Option<u64>,
    ) -> Result<(), StructureError> {
        self.stack.push(Frame { open, end });
        if self.depth() > MAX_SEQUENCE_DEPTH {
            return Err(StructureError::TooDeep {
                max: MAX_SEQUENCE_DEPTH,
                tag,
                at,
            });
        }
        Ok(())
    }

    /// Walks to the end; the first thing that does not fit is the error.
    pub(super) fn walk(&mut self) -> Result<(), StructureError> {
        loop {
            // Close what ends here.
            while self
                .stack
                .last()
                .is_some_and(|f| f.end.is_some_and(|end| end <= self.pos))
            {
                self.stack.pop();
            }
            if self.len.is_some_and(|len| self.pos >= len) {
                return match self.stack.last() {
                    None => Ok(()),
                    Some(_) => Err(StructureError::Truncated {
                        at: self.pos,
                        inside: "an open sequence or item",
                    }),
                };
            }
            let at = self.pos;
            let mut first = [0u8; 1];
            if self.len.is_none() {
                // A stream: its end is where reading stops.
                match self.bytes.read_exact(&mut first) {
                    Ok(()) => self.pos += 1,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return if self.stack.is_empty() {
                            Ok(())
                        } else {
                            Err(StructureError::Truncated {
                                at,
                                inside: "an open sequence or item",
                            })
                        };
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                first = self.read::<1>("an element's tag")?;
            }
            let rest = self.read::<3>("an element's tag")?;
            let group = self.u16([first[0], rest[0]]);
            let element = self.u16([rest[1], rest[2]]);
            let tag = Tag(group, element);
            let top = self.stack.last().map(|f| f.open);
            if group == 0xFFFE {
                let length = {
                    let raw = self.read::<4>("an item's length")?;
                    self.u32(raw)
                };
                self.on_item(tag, at, length, top)?;
                continue;
            }
            if matches!(top, Some(Open::Sequence | Open::Fragments)) {
                return Err(StructureError::Misplaced {
                    tag,
                    at,
                    why: "only items may be inside a sequence",
                });
            }
            if tag == PIXEL_DATA && self.stack.is_empty() && self.pixel_data_at.is_none() {
                self.pixel_data_at = Some(at);
            }
            let (vr, length) = self.element_header()?;
            let vr = vr.unwrap_or_else(|| implicit_vr(tag, length));
            if length == UNDEFINED {
                match vr {
                    VR::SQ | VR::UN => self.push(Open::Sequence, tag, at, None)?,
                    VR::OB | VR::OW if tag == PIXEL_DATA => {
                        self.push(Open::Fragments, tag, at, None)?
                    }
                    vr => return Err(StructureError::UndefinedLength { tag, at, vr }),
                }
            } else if vr == VR::SQ {
                let end = self.fits(tag, at, length)?;
                self.push(Open::Sequence, tag, at, Some(end))?;
            } else {
                self.skip(tag, at, length)?;
            }
        }
    }

    fn on_item(
        &mut self,
        tag: Tag,
        at: u64,
        length: u32,
        top: Option<Open>,
    ) -> Result<(), StructureError> {
        match (tag, top) {
            (ITEM, Some(Open::Sequence)) if length == UNDEFINED => {
                self.push(Open::Item, tag, at, None)
            }
            (ITEM, Some(Open::Sequence)) => {
                let end = self.fits(tag, at, length)?;
                self.push(Open::Item, tag, at, Some(end))
            }
            (ITEM, Some(Open::Fragments)) if length != UNDEFINED => self.skip(tag, at, length),
            (ITEM_END, Some(Open::Item)) if self.stack.last().is_some_and(|f| f.end.is_none()) => {
                self.stack.pop();
                Ok(())
            }
            (SEQUENCE_END, Some(Open::Sequence | Open::Fragments))
                if self.stack.last().is_some_and(|f| f.end.is_none()) =>
            {
                self.stack.pop();
                Ok(())
            }
            _ => Err(StructureError::Misplaced {
                tag,
                at,
                why: "an item or delimiter where none can be",
            }),
        }
    }

    /// Reads an element's VR (explicit syntaxes) and length.
    fn element_header(&mut self) -> Result<(Option<VR>, u32), StructureError> {
        if !self.encoding.explicit {
            let length = {
                let raw = self.read::<4>("an element's length")?;
                self.u32(raw)
            };
            return Ok((None, length));
        }
        let vr_bytes = self.read::<2>("an element's VR")?;
        let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
        let long = has_long_length(vr);
        if long {
            let _reserved = self.read::<2>("an element's header")?;
            let length = {
                let raw = self.read::<4>("an element's length")?;
                self.u32(raw)
            };
            Ok((Some(vr), length))
        } else {
            let length = {
                let raw = self.read::<2>("an element's length")?;
                self.u16(raw)
            };
            Ok((Some(vr), u32::from(length)))
        }
    }
}

/// Whether an explicit VR element of this VR has a 4-byte length (after 2 reserved bytes).
/// An unknown VR is read as UN, as dicom-rs does.
pub(super) fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::SV
            | VR::UV
    )
}

/// The VR an implicit VR element is read with: a sequence if the dictionary says so (or
/// its length is undefined), encapsulated-style for undefined-length Pixel Data.
fn implicit_vr(tag: Tag, length: u32) -> VR {
    if tag == PIXEL_DATA && length == UNDEFINED {
        return VR::OB;
    }
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(VR::SQ)) => VR::SQ,
        _ if length == UNDEFINED => VR::SQ,
        _ => VR::UN,
    }
}

//! The parsing the node does on receipt (structure check, header up to Pixel Data, the
//! patient key, the inputs' rules), fed with mutated and hostile data sets: it must
//! answer every one (a header or an error) without panicking, quickly, and refuse what
//! declares more than it holds or nests too deep.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicomnode_core::input::value_of;
use dicomnode_core::structure::{read_header, HeaderError, StructureError, MAX_SEQUENCE_DEPTH};
use dicomnode_core::synthetic::SyntheticSeries;
use dicomnode_core::{Enough, Input, Matcher};
use proptest::prelude::*;
use std::io::Cursor;
use std::time::{Duration, Instant};

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";

/// A real CT data set, encoded in `ts`.
fn encoded(ts: &str) -> Vec<u8> {
    let series = SyntheticSeries::ct("FUZZ", 1)
        .size(4, 4)
        .build()
        .expect("a synthetic CT");
    let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .expect("a known syntax");
    let mut bytes = Vec::new();
    series[0]
        .write_dataset_with_ts(&mut bytes, syntax)
        .expect("encodes");
    bytes
}

/// What the node does with a received data set, up to the decision to store it.
fn receive(bytes: &[u8], ts: &str) -> Result<Option<String>, HeaderError> {
    let header = read_header(Cursor::new(bytes), ts)?;
    let key = value_of(&header, tags::PATIENT_ID);
    let input = Input::new("ct")
        .matching(tags::MODALITY, Matcher::exact("CT"))
        .require(tags::SOP_INSTANCE_UID)
        .enough_when(Enough::at_least(1));
    let _ = input.admit(&header);
    Ok(key)
}

/// A mutation of a data set.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite 4 bytes at a position with a (hostile) length.
    Length(usize, u32),
    /// Flip bits of one byte.
    Flip(usize, u8),
    /// Cut the data set short.
    Truncate(usize),
    /// Insert random bytes.
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (
            any::<usize>(),
            prop_oneof![
                Just(0xFFFF_FFFFu32),
                Just(0xFFFF_FFF0),
                Just(0x7FFF_FFF0),
                Just(0x0010_0000),
                any::<u32>()
            ]
        )
            .prop_map(|(at, len)| Mutation::Length(at, len)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Length(at, len) => {
            let at = at % bytes.len();
            for (i, b) in len.to_le_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        Mutation::Flip(at, b) => {
            let at = at % bytes.len();
            bytes[at] ^= b | 1;
        }
        Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
        Mutation::Insert(at, more) => {
            let at = at % bytes.len();
            bytes.splice(at..at, more.iter().copied());
        }
    }
}

/// Sequences nested `depth` deep in explicit VR LE, around a patient ID.
fn nested(depth: usize, defined_lengths: bool) -> Vec<u8> {
    let mut inner = Vec::new();
    inner.extend_from_slice(&[0x10, 0x00, 0x20, 0x00, b'L', b'O', 4, 0]);
    inner.extend_from_slice(b"DEEP");
    for _ in 0..depth {
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        let mut seq = vec![0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0];
        if defined_lengths {
            item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
            item.extend_from_slice(&inner);
            seq.extend_from_slice(&(item.len() as u32).to_le_bytes());
            seq.extend_from_slice(&item);
        } else {
            item.extend_from_slice(&[0xFF; 4]);
            item.extend_from_slice(&inner);
            item.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            seq.extend_from_slice(&[0xFF; 4]);
            seq.extend_from_slice(&item);
            seq.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        inner = seq;
    }
    inner
}

fn syntax() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(EXPLICIT_LE), Just(IMPLICIT_LE), Just(EXPLICIT_BE)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn mutated_data_sets_get_an_answer_quickly(
        syntax in syntax(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = encoded(syntax);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let started = Instant::now();
        // A panic fails the test; so does a slow answer (an allocation of gigabytes).
        let _ = receive(&bytes, syntax);
        prop_assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn random_bytes_get_an_answer(
        syntax in syntax(),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let started = Instant::now();
        let _ = receive(&bytes, syntax);
        prop_assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn nesting_is_accepted_up_to_the_cap_and_refused_beyond(
        depth in 0usize..400,
        defined in any::<bool>(),
    ) {
        let bytes = nested(depth, defined);
        let result = receive(&bytes, EXPLICIT_LE);
        if depth <= MAX_SEQUENCE_DEPTH {
            prop_assert!(result.is_ok(), "depth {}: {:?}", depth, result.err());
        } else {
            let too_deep = matches!(result, Err(HeaderError::Structure(StructureError::TooDeep { .. })));
            prop_assert!(too_deep, "depth {}", depth);
        }
    }
}

#[test]
fn the_unmutated_data_sets_pass_with_their_patient_key() {
    for syntax in [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE] {
        let key = receive(&encoded(syntax), syntax).expect("a header");
        assert_eq!(key.as_deref(), Some("FUZZ"), "{syntax}");
        let header = read_header(Cursor::new(encoded(syntax)), syntax).expect("a header");
        assert!(
            header.get(Tag(0x7FE0, 0x0010)).is_none(),
            "stops before Pixel Data"
        );
    }
}

#[test]
fn a_nesting_of_1500_is_refused_not_a_stack_overflow() {
    for defined in [false, true] {
        let result = receive(&nested(1500, defined), EXPLICIT_LE);
        assert!(
            matches!(
                result,
                Err(HeaderError::Structure(StructureError::TooDeep { .. }))
            ),
            "{result:?}"
        );
    }
}

#[test]
fn a_declared_length_of_4_gib_is_refused_without_reserving_it() {
    // A patient ID element declaring 0xFFFFFFF0 bytes (a UT-style long header) in 60 bytes.
    let mut bytes = vec![0x10, 0x00, 0x20, 0x00, b'U', b'T', 0, 0];
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.extend_from_slice(&[b'X'; 48]);
    let started = Instant::now();
    let result = receive(&bytes, EXPLICIT_LE);
    assert!(
        matches!(
            result,
            Err(HeaderError::Structure(StructureError::LengthBeyondEnd {
                declared: 0xFFFF_FFF0,
                ..
            }))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(200));
}

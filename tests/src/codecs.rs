//! The transfer syntaxes the tests make data in, with the real tools that encode them
//! (DCMTK, GDCM) and the tools' own decoders as the reference.

use crate::{dcmtk, run};
use std::path::Path;
use std::process::Command;

/// An encoding: a name, the encoder, the reference decoder, whether it is lossless, and
/// for lossy ones the largest difference allowed between our decode and the reference's.
pub struct Syntax {
    /// A short name for messages and file names.
    pub name: &'static str,
    /// The transfer syntax UID the encoder writes.
    pub uid: &'static str,
    /// The encoder and its options (input and output paths follow).
    pub encode: &'static [&'static str],
    /// The reference decoder (input and output paths follow).
    pub decode: &'static [&'static str],
    /// `None` for a lossless syntax; else how far our decode may be from the reference's.
    pub tolerance: Option<f64>,
}

/// Every syntax the tests encode.
pub const SYNTAXES: &[Syntax] = &[
    Syntax {
        name: "explicit",
        uid: "1.2.840.10008.1.2.1",
        encode: &["/usr/bin/dcmconv", "+te"],
        decode: &["/usr/bin/dcmconv", "+te"],
        tolerance: None,
    },
    Syntax {
        name: "implicit",
        uid: "1.2.840.10008.1.2",
        encode: &["/usr/bin/dcmconv", "+ti"],
        decode: &["/usr/bin/dcmconv", "+te"],
        tolerance: None,
    },
    Syntax {
        name: "big-endian",
        uid: "1.2.840.10008.1.2.2",
        encode: &["/usr/bin/dcmconv", "+tb"],
        decode: &["/usr/bin/dcmconv", "+te"],
        tolerance: None,
    },
    Syntax {
        name: "deflated",
        uid: "1.2.840.10008.1.2.1.99",
        encode: &["/usr/bin/dcmconv", "+td"],
        decode: &["/usr/bin/dcmconv", "+te"],
        tolerance: None,
    },
    Syntax {
        name: "rle",
        uid: "1.2.840.10008.1.2.5",
        encode: &["/usr/bin/dcmcrle"],
        decode: &["/usr/bin/dcmdrle"],
        tolerance: None,
    },
    Syntax {
        name: "jpeg-lossless-14",
        uid: "1.2.840.10008.1.2.4.57",
        encode: &["/usr/bin/dcmcjpeg", "+el"],
        decode: &["/usr/bin/dcmdjpeg"],
        tolerance: None,
    },
    Syntax {
        name: "jpeg-lossless-sv1",
        uid: "1.2.840.10008.1.2.4.70",
        encode: &["/usr/bin/dcmcjpeg", "+e1"],
        decode: &["/usr/bin/dcmdjpeg"],
        tolerance: None,
    },
    Syntax {
        name: "jpeg-ls-lossless",
        uid: "1.2.840.10008.1.2.4.80",
        encode: &["/usr/bin/dcmcjpls", "+el"],
        decode: &["/usr/bin/dcmdjpls"],
        tolerance: None,
    },
    Syntax {
        name: "j2k-lossless",
        uid: "1.2.840.10008.1.2.4.90",
        encode: &["/usr/bin/gdcmconv", "--j2k"],
        decode: &["/usr/bin/gdcmconv", "--raw"],
        tolerance: None,
    },
    Syntax {
        name: "jpeg-baseline",
        uid: "1.2.840.10008.1.2.4.50",
        encode: &["/usr/bin/dcmcjpeg", "+eb"],
        decode: &["/usr/bin/dcmdjpeg"],
        tolerance: Some(3.0),
    },
    Syntax {
        name: "jpeg-extended",
        uid: "1.2.840.10008.1.2.4.51",
        encode: &["/usr/bin/dcmcjpeg", "+ee"],
        decode: &["/usr/bin/dcmdjpeg"],
        tolerance: Some(3.0),
    },
    Syntax {
        name: "jpeg-ls-near",
        uid: "1.2.840.10008.1.2.4.81",
        encode: &["/usr/bin/dcmcjpls", "+en", "+md", "2"],
        decode: &["/usr/bin/dcmdjpls"],
        tolerance: Some(0.0),
    },
    Syntax {
        name: "j2k-lossy",
        uid: "1.2.840.10008.1.2.4.91",
        encode: &["/usr/bin/gdcmconv", "--j2k", "--lossy", "-q", "40"],
        decode: &["/usr/bin/gdcmconv", "--raw"],
        tolerance: Some(1.0),
    },
];

/// The syntax named `name`.
pub fn syntax(name: &str) -> &'static Syntax {
    SYNTAXES
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no syntax {name}"))
}

/// Runs a tool of the table on `input`, writing `output`; panics with its output if it fails.
pub fn tool(argv: &[&str], input: &Path, output: &Path) {
    let mut command = if argv[0].starts_with("/usr/bin/dcm") {
        dcmtk(argv[0].trim_start_matches("/usr/bin/"))
    } else {
        Command::new(argv[0])
    };
    command.args(&argv[1..]).arg(input).arg(output);
    let (status, text) = run(command);
    assert!(
        status.status.success(),
        "{argv:?} {} failed: {text}",
        input.display()
    );
}

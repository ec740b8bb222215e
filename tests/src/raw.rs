//! A DICOM peer speaking raw bytes, for tests that send what no well-behaved SCU would.

use dicomnode_server::dicom_ul::pdu::{
    AssociationRQ, PDataValue, PDataValueType, PresentationContextProposed, UserVariableItem,
};
use dicomnode_server::dicom_ul::{read_pdu, write_pdu, Pdu};
use dicomnode_server::dimse::Command;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The AE title of the tests' node.
pub const TEST_NODE_AE: &str = "TEST_NODE";

/// A peer speaking raw bytes: it can send what no well-behaved SCU would.
pub struct Raw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// How a raw peer's wait ended.
#[derive(Debug)]
pub enum Heard {
    /// A PDU.
    Pdu(Box<Pdu>),
    /// The node closed the connection.
    Closed,
    /// Nothing within the wait.
    Nothing,
}

impl Raw {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("the node accepts");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one PDU.
    pub fn send_pdu(&mut self, pdu: &Pdu) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, pdu).expect("encodes");
        self.send(&bytes)
    }

    /// The next PDU the node sends, or how the wait ended.
    pub fn hear(&mut self, within: Duration) -> Heard {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(pdu)) = read_pdu(&self.buffer[..], 1 << 30, false) {
                let len = 6 + u32::from_be_bytes([
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                    self.buffer[5],
                ]) as usize;
                self.buffer.drain(..len);
                return Heard::Pdu(Box::new(pdu));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Heard::Nothing;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("a read time-out");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Heard::Closed,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Heard::Closed,
            }
        }
    }

    /// Waits for the node to end the conversation (an A-ABORT, a rejection, or closing the
    /// connection); returns what ended it. Panics if the node keeps it open.
    pub fn expect_end(&mut self, within: Duration, case: &str) -> String {
        let started = Instant::now();
        loop {
            match self.hear(within.saturating_sub(started.elapsed())) {
                Heard::Closed => return "closed".into(),
                Heard::Pdu(pdu) => match *pdu {
                    Pdu::AbortRQ { .. } => return "aborted".into(),
                    Pdu::AssociationRJ(_) => return "rejected".into(),
                    Pdu::PData { .. } | Pdu::AssociationAC(_) => continue,
                    other => return format!("{other:?}"),
                },
                Heard::Nothing => panic!("{case}: the node kept the connection open"),
            }
        }
    }

    /// Associates for `contexts` (abstract syntax, one transfer syntax each, ids 1, 3,
    /// ...) announcing `max_pdu`.
    pub fn associate(port: u16, calling: &str, contexts: &[(&str, &str)], max_pdu: u32) -> Raw {
        let mut raw = Raw::connect(port);
        raw.send_pdu(&association_request(calling, contexts, max_pdu))
            .expect("sends the request");
        match raw.hear(Duration::from_secs(5)) {
            Heard::Pdu(pdu) if matches!(*pdu, Pdu::AssociationAC(_)) => raw,
            other => panic!("association not accepted: {other:?}"),
        }
    }

    /// Sends a command (and a data set) on context 1 and returns the response's status.
    pub fn request(&mut self, command: Vec<u8>, data: Option<Vec<u8>>) -> u16 {
        let mut values = vec![PDataValue {
            presentation_context_id: 1,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command,
        }];
        if let Some(data) = data {
            values.push(PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Data,
                is_last: true,
                data,
            });
        }
        self.send_pdu(&Pdu::PData { data: values })
            .expect("sends the request");
        match self.hear(Duration::from_secs(10)) {
            Heard::Pdu(pdu) => match *pdu {
                Pdu::PData { data } => Command::decode(&data[0].data)
                    .expect("a readable response")
                    .status
                    .expect("a status"),
                other => panic!("expected a response, got {other:?}"),
            },
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Releases the association (without caring for the answer).
    pub fn release(mut self) {
        let _ = self.send_pdu(&Pdu::ReleaseRQ);
        let _ = self.hear(Duration::from_secs(5));
    }
}

/// An A-ASSOCIATE-RQ from `calling` to the test node for `contexts` (abstract syntax, one
/// transfer syntax each, ids 1, 3, ...), announcing `max_pdu`.
pub fn association_request(calling: &str, contexts: &[(&str, &str)], max_pdu: u32) -> Pdu {
    Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.into(),
        called_ae_title: TEST_NODE_AE.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts
            .iter()
            .enumerate()
            .map(|(i, (abstract_syntax, ts))| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: abstract_syntax.to_string(),
                transfer_syntaxes: vec![ts.to_string()],
            })
            .collect(),
        user_variables: vec![
            UserVariableItem::MaxLength(max_pdu),
            UserVariableItem::ImplementationClassUID("1.2.3.4".into()),
        ],
    })
}

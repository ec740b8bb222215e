//! Hostile and broken peers against a node on loopback: random bytes, lying lengths in
//! every PDU, item and element, protocol violations, deep nesting, slow senders, a flood
//! of idle connections, text that would forge log lines. After each, the node must be
//! alive, answer C-ECHO and store an instance, without a panic in its log, and its memory
//! must stay bounded.

use dicomnode_server::dicom_dictionary_std::uids;
use dicomnode_server::dicom_ul::pdu::{
    AssociationRQ, PDataValue, PDataValueType, PresentationContextProposed, UserVariableItem,
};
use dicomnode_server::dicom_ul::{write_pdu, Pdu};
use dicomnode_server::dimse::{self, status};
use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::raw::{association_request as rq, Heard, Raw};
use dicomnode_tests::NodeProcess;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const AE: &str = "TEST_NODE";

/// A node with short deadlines, so that slow peers are cut within the test's patience.
fn node(out: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--port",
        "0",
        "--ae-title",
        AE,
        "--out",
        out.to_str().expect("utf-8 path"),
        "--acse-timeout",
        "2",
        "--pdu-timeout",
        "2",
        "--idle-timeout",
        "4",
        "--max-instance-mb",
        "64",
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// A CT data set of patient `id`, in explicit VR little endian, and its SOP Instance UID.
fn ct(id: &str) -> (Vec<u8>, String) {
    let instance = &SyntheticSeries::ct(id, 1)
        .size(8, 8)
        .build()
        .expect("a synthetic CT")[0];
    let mut bytes = Vec::new();
    instance.write_dataset(&mut bytes).expect("encodes");
    let uid = dicomnode_server::uid::trim_uid(instance.meta().media_storage_sop_instance_uid());
    (bytes, uid.to_string())
}

/// The node answers C-ECHO and stores an instance, and has not panicked.
fn assert_alive(node: &NodeProcess, case: &str) {
    let mut echo = Raw::associate(node.port, "ALIVE", &[(uids::VERIFICATION, IMPLICIT_LE)], 0);
    assert_eq!(
        echo.request(dimse::echo_request(1), None),
        status::SUCCESS,
        "{case}: C-ECHO"
    );
    echo.release();
    let mut store = Raw::associate(node.port, "ALIVE", &[(CT, EXPLICIT_LE)], 0);
    let (data, uid) = ct("ALIVE");
    assert_eq!(
        store.request(dimse::store_request(1, CT, &uid), Some(data)),
        status::SUCCESS,
        "{case}: C-STORE"
    );
    store.release();
    let log = node.log();
    assert!(
        !log.contains("panicked"),
        "{case}: a panic in the log:\n{log}"
    );
}

/// A small deterministic generator (xorshift), so that failures can be replayed.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Something a peer does inside an association.
type Attack = Box<dyn Fn(&mut Raw)>;

fn pdata(pc: u8, value_type: PDataValueType, is_last: bool, data: Vec<u8>) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type,
            is_last,
            data,
        }],
    }
}

/// Peak resident memory (VmHWM) and threads of a process, from /proc.
fn peak_rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let value = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (value("VmHWM:") * 1024, value("Threads:"))
}

/// Sequences nested `depth` deep, in explicit VR LE, inside a CT data set.
fn deeply_nested(depth: usize) -> Vec<u8> {
    let (mut bytes, _) = ct("DEEP");
    // Elements must be in order: (0040,A730) sits before the pixel data's group.
    let mut nested = Vec::new();
    for _ in 0..depth {
        nested.extend_from_slice(&[
            0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..depth {
        nested.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    // Before Pixel Data (7FE0,0010): find its tag in the encoding.
    let at = bytes
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap_or(bytes.len());
    bytes.splice(at..at, nested);
    bytes
}

#[test]
fn hostile_peers_leave_the_node_serving() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let node = node(out.path(), &[]);
    let port = node.port;
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut cases = 0;
    let end = Duration::from_secs(6);

    // Random bytes instead of an association request.
    for size in [1, 6, 7, 64, 200, 1000, 5000] {
        let mut raw = Raw::connect(port);
        let mut bytes = noise.bytes(size);
        bytes[0] = 0x01;
        let _ = raw.send(&bytes);
        let _ = raw.send(&noise.bytes(16));
        raw.expect_end(end, "random bytes");
        cases += 1;
    }
    assert_alive(&node, "random bytes");

    // An association request declaring 4 GiB, or lying in its items.
    let mut raw = Raw::connect(port);
    let _ = raw.send(&[0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xF0]);
    let _ = raw.send(&noise.bytes(100));
    raw.expect_end(end, "4 GiB request");
    let mut good = Vec::new();
    write_pdu(&mut good, &rq("LIAR", &[(CT, EXPLICIT_LE)], 0)).expect("encodes");
    for round in 0..40 {
        let mut bytes = good.clone();
        // A length field of an item (or the PDU) made to lie.
        let at = 2 + (noise.next() as usize % (bytes.len() - 4));
        let lie = [0xFF, 0xFF, (round * 7) as u8, 0xF0];
        for (i, b) in lie.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(at + i) {
                *slot = *b;
            }
        }
        let mut raw = Raw::connect(port);
        let _ = raw.send(&bytes);
        // Either the node makes sense of it or it ends the connection; it never hangs
        // past the ACSE deadline.
        match raw.hear(end) {
            Heard::Pdu(pdu) if matches!(*pdu, Pdu::AssociationAC(_)) => raw.release(),
            Heard::Nothing => panic!("lying request {round}: no answer"),
            _ => {}
        }
        cases += 1;
    }
    assert_alive(&node, "lying association requests");

    // Presentation contexts by the hundred, with many transfer syntaxes each.
    let mut many = Raw::connect(port);
    let contexts: Vec<PresentationContextProposed> = (0..128u8)
        .map(|i| PresentationContextProposed {
            id: 2 * i + 1,
            abstract_syntax: if i % 2 == 0 {
                CT.into()
            } else {
                format!("1.2.3.{i}")
            },
            transfer_syntaxes: (0..40)
                .map(|t| format!("1.2.840.10008.1.2.4.{t}"))
                .collect(),
        })
        .collect();
    many.send_pdu(&Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "MANY".into(),
        called_ae_title: AE.into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: contexts,
        user_variables: vec![UserVariableItem::MaxLength(0)],
    }))
    .expect("sends");
    match many.hear(end) {
        Heard::Pdu(_) | Heard::Closed => {}
        Heard::Nothing => panic!("128 presentation contexts: no answer"),
    }
    cases += 1;
    assert_alive(&node, "presentation contexts by the hundred");

    // Inside an association: PDUs and PDVs that lie.
    let inside: Vec<(&str, Attack)> = vec![
        (
            "a P-DATA declaring 2 GiB",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send(&[0x04, 0x00, 0x7F, 0xFF, 0xFF, 0xF0, 0, 0, 0, 10]);
            }),
        ),
        (
            "a PDV longer than its PDU",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send(&[
                    0x04, 0x00, 0, 0, 0, 10, 0xFF, 0xFF, 0xFF, 0xF0, 1, 3, 0, 0, 0, 0,
                ]);
            }),
        ),
        (
            "a PDV of length 0",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send(&[0x04, 0x00, 0, 0, 0, 4, 0, 0, 0, 0]);
            }),
        ),
        (
            "an empty last command fragment",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send_pdu(&pdata(1, PDataValueType::Command, true, Vec::new()));
            }),
        ),
        (
            "a data set before any command",
            Box::new(|raw: &mut Raw| {
                let (data, _) = ct("EARLY");
                let _ = raw.send_pdu(&pdata(1, PDataValueType::Data, true, data));
            }),
        ),
        (
            "an unknown presentation context",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send_pdu(&pdata(
                    77,
                    PDataValueType::Command,
                    true,
                    dimse::echo_request(1),
                ));
            }),
        ),
        (
            "200 random bytes as a command",
            Box::new(|raw: &mut Raw| {
                let mut noise = Noise(42);
                let _ = raw.send_pdu(&pdata(1, PDataValueType::Command, true, noise.bytes(200)));
            }),
        ),
        (
            "a command element declaring 4 GiB",
            Box::new(|raw: &mut Raw| {
                let mut command = vec![0x00, 0x00, 0x00, 0x01];
                command.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                command.extend_from_slice(&[0x30, 0]);
                let _ = raw.send_pdu(&pdata(1, PDataValueType::Command, true, command));
            }),
        ),
        (
            "32 MiB of command fragments without a last one",
            Box::new(|raw: &mut Raw| {
                for _ in 0..32 * 4 {
                    let fragments = (0..4)
                        .map(|_| PDataValue {
                            presentation_context_id: 1,
                            value_type: PDataValueType::Command,
                            is_last: false,
                            data: vec![0u8; 60 * 1024],
                        })
                        .collect();
                    if raw.send_pdu(&Pdu::PData { data: fragments }).is_err() {
                        return;
                    }
                }
            }),
        ),
        (
            "an unexpected association request",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send_pdu(&rq("AGAIN", &[(CT, EXPLICIT_LE)], 0));
            }),
        ),
        (
            "an unknown PDU type",
            Box::new(|raw: &mut Raw| {
                let _ = raw.send(&[0x09, 0x00, 0, 0, 0, 4, 1, 2, 3, 4]);
            }),
        ),
    ];
    for (case, attack) in &inside {
        let mut raw = Raw::associate(port, "INSIDE", &[(CT, EXPLICIT_LE)], 0);
        attack(&mut raw);
        let how = raw.expect_end(end, case);
        assert_ne!(how, "rejected", "{case}");
        cases += 1;
        assert_alive(&node, case);
    }

    // Requests that get a failure status, the association going on.
    let mut raw = Raw::associate(port, "REQUESTS", &[(CT, EXPLICIT_LE)], 0);
    let (data, uid) = ct("NO-UID");
    assert_eq!(
        raw.request(dimse::store_request(1, CT, ""), Some(data.clone())),
        status::CANNOT_UNDERSTAND,
        "a C-STORE without an Affected SOP Instance UID"
    );
    assert_eq!(
        raw.request(dimse::store_request(2, MR, &uid), Some(data)),
        status::SOP_CLASS_NOT_SUPPORTED,
        "a C-STORE whose SOP class is not its context's"
    );
    let mut lying = vec![0x10, 0x00, 0x20, 0x00, b'U', b'T', 0, 0];
    lying.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    lying.extend_from_slice(&[b'X'; 48]);
    assert_eq!(
        raw.request(dimse::store_request(3, CT, "1.2.3.4.5"), Some(lying)),
        status::CANNOT_UNDERSTAND,
        "a data set element declaring 4 GiB"
    );
    assert_eq!(
        raw.request(
            dimse::store_request(4, CT, "1.2.3.4.6"),
            Some(deeply_nested(1500))
        ),
        status::CANNOT_UNDERSTAND,
        "sequences nested 1,500 deep"
    );
    let mut part10 = vec![0u8; 128];
    part10.extend_from_slice(b"DICM");
    part10.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 200, 0, 0, 0]);
    part10.extend(ct("PART10").0);
    assert_eq!(
        raw.request(dimse::store_request(5, CT, "1.2.3.4.7"), Some(part10)),
        status::CANNOT_UNDERSTAND,
        "a Part-10 file sent as a data set"
    );
    let (deep_ok, deep_uid) = (deeply_nested(20), "1.2.3.4.8");
    assert_eq!(
        raw.request(dimse::store_request(6, CT, deep_uid), Some(deep_ok)),
        status::SUCCESS,
        "sequences nested 20 deep are real data"
    );
    // A C-ECHO whose Command Group Length lies: the elements that follow are read as they
    // are, and answered.
    let mut echo = Raw::associate(port, "GROUPLEN", &[(uids::VERIFICATION, IMPLICIT_LE)], 0);
    let mut command = dimse::echo_request(7);
    command[8..12].copy_from_slice(&99_999u32.to_le_bytes());
    assert_eq!(
        echo.request(command, None),
        status::SUCCESS,
        "a lying group length"
    );
    echo.release();
    raw.release();
    cases += 7;
    assert!(node.log().contains("sequences nest deeper than 64 levels"));

    // A peer announcing a maximum PDU length of 1: aborted at once, not left hanging.
    let mut tiny = Raw::associate(port, "TINY", &[(uids::VERIFICATION, IMPLICIT_LE)], 1);
    let _ = tiny.send_pdu(&pdata(
        1,
        PDataValueType::Command,
        true,
        dimse::echo_request(1),
    ));
    assert_eq!(tiny.expect_end(end, "max PDU 1"), "aborted");
    cases += 1;
    assert_alive(&node, "max PDU 1");

    let (peak, threads) = peak_rss_and_threads(node.pid());
    eprintln!(
        "{cases} hostile cases; node alive after each; peak RSS {} MiB; {threads} threads",
        peak >> 20
    );
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn slow_peers_are_cut_at_their_deadlines() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let node = node(out.path(), &[]);
    let mut request = Vec::new();
    write_pdu(&mut request, &rq("SLOW", &[(CT, EXPLICIT_LE)], 0)).expect("encodes");

    // One byte of the association request every 300 ms: cut at the ACSE deadline (2 s).
    let mut raw = Raw::connect(node.port);
    let started = Instant::now();
    let mut cut = None;
    for byte in &request {
        if raw.send(&[*byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if let Heard::Closed = raw.hear(Duration::from_millis(300)) {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("the slow request was never cut");
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(5),
        "{cut:?}"
    );

    // One byte of a P-DATA every 300 ms: aborted at the PDU deadline (2 s).
    let mut raw = Raw::associate(node.port, "SLOW", &[(CT, EXPLICIT_LE)], 0);
    let mut pdu = Vec::new();
    write_pdu(
        &mut pdu,
        &pdata(1, PDataValueType::Command, true, dimse::echo_request(1)),
    )
    .expect("encodes");
    let started = Instant::now();
    let mut ended = None;
    for byte in &pdu {
        let _ = raw.send(&[*byte]);
        match raw.hear(Duration::from_millis(300)) {
            Heard::Nothing => {}
            other => {
                ended = Some((started.elapsed(), format!("{other:?}")));
                break;
            }
        }
    }
    let (cut, how) = ended.expect("the slow PDU was never cut");
    assert!(how.contains("AbortRQ"), "{how}");
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(5),
        "{cut:?}"
    );

    // Silent after associating: aborted at the idle deadline (4 s).
    let mut raw = Raw::associate(node.port, "IDLE", &[(CT, EXPLICIT_LE)], 0);
    let started = Instant::now();
    assert_eq!(raw.expect_end(Duration::from_secs(8), "idle"), "aborted");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(3500) && idle < Duration::from_secs(7),
        "{idle:?}"
    );
    assert_alive(&node, "slow peers");
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_out_senders() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let exe = env!("CARGO_BIN_EXE_test_node");
    // The usual open-files limit of 1,024, soft and hard.
    let node = NodeProcess::start(
        Path::new("/usr/bin/prlimit"),
        &[
            "--nofile=1024:1024",
            "--",
            exe,
            "--port",
            "0",
            "--ae-title",
            AE,
            "--out",
            out.path().to_str().expect("utf-8 path"),
        ],
    );
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).unwrap_or_default();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );
    // 1,500 connections at once, none of which ever sends a byte.
    let idle: Vec<TcpStream> = (0..1500)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", node.port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A real sender gets through while they are all open.
    let started = Instant::now();
    assert_alive(&node, "1,500 idle connections");
    let through = started.elapsed();
    let (peak, threads) = peak_rss_and_threads(node.pid());
    eprintln!(
        "1,500 idle connections ({} connected): a sender got through in {through:?}; node peak RSS {} MiB, {threads} threads",
        idle.len(),
        peak >> 20
    );
    assert!(through < Duration::from_secs(10), "{through:?}");
    assert!(threads < 120, "{threads} threads");
    assert!(
        !node.log().contains("Too many open files"),
        "{}",
        node.log()
    );
    drop(idle);
}

#[test]
fn peer_text_cannot_forge_log_lines() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let node = node(out.path(), &[]);
    let calling = "EV\r\nERROR X\x1b[2J";
    let mut raw = Raw::associate(node.port, calling, &[(CT, EXPLICIT_LE)], 0);
    let forged = "P1\r\n2026-11-28T00:00:00Z ERROR fake: thread panicked\x1b[31m\0";
    let (data, uid) = ct(forged);
    assert_eq!(
        raw.request(dimse::store_request(1, CT, &uid), Some(data)),
        status::SUCCESS
    );
    raw.release();
    let mut node = node;
    node.wait_for_log("processing finished", Duration::from_secs(30));
    let log = node.log();
    assert!(!log.contains('\x1b'), "a raw ESC in the log");
    assert!(!log.contains('\0'), "a raw NUL in the log");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-11-28T00:00:00Z") || l.starts_with("ERROR X")),
        "a forged line:\n{log}"
    );
    assert!(
        log.contains("P1\\r\\n2026-11-28T00:00:00Z ERROR fake"),
        "{log}"
    );
    assert!(log.contains("EV\\r\\nERROR X"), "{log}");
}

/// The node's CPU time (user and system), in seconds, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A self-signed certificate for localhost and its key, as PEM files in a directory that
/// lives as long as the returned guard.
fn self_signed() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("written");
    std::fs::write(&key_path, key.serialize_pem()).expect("written");
    (dir, cert_path, key_path)
}

#[test]
fn connections_that_end_early_leave_no_thread_behind() {
    // With TLS too: a TLS probe that meets the end of the stream must not spin.
    let out = tempfile::tempdir().expect("a temporary directory");
    let (_dir, cert_path, key_path) = self_signed();
    let plain = node(out.path(), &[]);
    let out_tls = tempfile::tempdir().expect("a temporary directory");
    let tls = node(
        out_tls.path(),
        &[
            "--tls-cert",
            cert_path.to_str().expect("utf-8"),
            "--tls-key",
            key_path.to_str().expect("utf-8"),
        ],
    );
    for node in [&plain, &tls] {
        let (_, threads_before) = peak_rss_and_threads(node.pid());
        for round in 0..30 {
            let mut raw = Raw::connect(node.port);
            // Nothing, a byte of a request, or the start of a TLS record: then gone.
            match round % 3 {
                0 => {}
                1 => {
                    let _ = raw.send(&[0x01]);
                }
                _ => {
                    let _ = raw.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
                }
            }
            drop(raw);
        }
        std::thread::sleep(Duration::from_millis(500));
        let cpu = cpu_seconds(node.pid());
        std::thread::sleep(Duration::from_secs(2));
        let busy = cpu_seconds(node.pid()) - cpu;
        let (_, threads_after) = peak_rss_and_threads(node.pid());
        assert!(
            busy < 0.5,
            "the node used {busy:.2} s of CPU in 2 s of quiet"
        );
        assert!(
            threads_after <= threads_before + 2,
            "{threads_before} threads before, {threads_after} after"
        );
    }
    assert_alive(&plain, "connections that ended early");
}

/// Trusts any server certificate: the test checks the node's deadlines, not its identity.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn a_tls_record_sent_a_byte_at_a_time_is_cut_at_a_deadline() {
    use std::io::{Read, Write};
    let out = tempfile::tempdir().expect("a temporary directory");
    let (_dir, cert_path, key_path) = self_signed();
    let node = node(
        out.path(),
        &[
            "--tls-cert",
            cert_path.to_str().expect("utf-8"),
            "--tls-key",
            key_path.to_str().expect("utf-8"),
        ],
    );
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("TLS");
    let mut tcp = TcpStream::connect(("127.0.0.1", node.port)).expect("connects");
    tcp.set_nodelay(true).expect("nodelay");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).expect("handshake");
    }
    // Associate, properly.
    let mut request = Vec::new();
    write_pdu(&mut request, &rq("TLSSLOW", &[(CT, EXPLICIT_LE)], 0)).expect("encodes");
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream.write_all(&request).expect("sends");
    let mut answer = [0u8; 6];
    stream.read_exact(&mut answer).expect("an answer");
    assert_eq!(answer[0], 0x02, "A-ASSOCIATE-AC");
    let mut rest =
        vec![0u8; u32::from_be_bytes([answer[2], answer[3], answer[4], answer[5]]) as usize];
    stream.read_exact(&mut rest).expect("the rest of it");
    // One TLS record holding a P-DATA, sent a byte every 300 ms.
    let mut pdu = Vec::new();
    write_pdu(
        &mut pdu,
        &pdata(1, PDataValueType::Command, true, dimse::echo_request(1)),
    )
    .expect("encodes");
    tls.writer().write_all(&pdu).expect("buffers");
    let mut record = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut record).expect("a record");
    }
    let started = Instant::now();
    let mut cut = None;
    for byte in &record {
        if tcp.write_all(&[*byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a time-out");
        let mut buf = [0u8; 256];
        match tcp.read(&mut buf) {
            Ok(_) => {
                // An abort (or the close that follows it).
                cut = Some(started.elapsed());
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut = Some(started.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("the trickled record was never cut");
    // No byte of the PDU gets through TLS until the record is whole, so this is the wait
    // for a PDU's first byte (--idle-timeout 4): each of the socket's reads is held to it.
    assert!(
        cut >= Duration::from_millis(3500) && cut < Duration::from_secs(6),
        "{cut:?}"
    );
    let mut node = node;
    let line = node.wait_for_log("association ended", Duration::from_secs(10));
    assert!(line.contains("aborted by the node: idle for 4s"), "{line}");
    assert!(!node.log().contains("panicked"));
}

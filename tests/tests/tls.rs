//! TLS against DCMTK: `echoscu`/`storescu +tls` to a node listening with TLS (a trusted
//! client, an untrusted one, a plain-TCP client on the TLS port, an expired server
//! certificate), and the node's own SCU (`dicomnode echo/store --tls`) to a node and to
//! `storescp +tls`. Certificates are made by the test.

use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::pki::Pki;
use dicomnode_tests::{cli_exe, dcmtk, free_port, isolated_network, run, NodeProcess, PeerProcess};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tls_node(out: &Path, cert: &Path, key: &Path, extra: &[&str]) -> NodeProcess {
    let mut args = vec![
        "--port",
        "0",
        "--out",
        s(out),
        "--tls-cert",
        s(cert),
        "--tls-key",
        s(key),
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(Path::new(env!("CARGO_BIN_EXE_test_node")), &args)
}

/// DCMTK's echoscu over TLS with `client` (certificate, key), trusting `ca`.
fn echoscu_tls(port: u16, client: Option<&(PathBuf, PathBuf)>, ca: &Path) -> bool {
    let mut command = dcmtk("echoscu");
    match client {
        Some((cert, key)) => command.args(["+tls", s(key), s(cert)]),
        None => command.arg("+tla"),
    };
    command.args([
        "+cf",
        s(ca),
        "-aec",
        "TEST_NODE",
        "127.0.0.1",
        &port.to_string(),
    ]);
    run(command).0.status.success()
}

#[test]
fn dcmtk_over_tls_trusted_untrusted_plain_and_expired() {
    let pki = Pki::new("node");
    let (server_cert, server_key) = pki.issue("server", false);
    let good = pki.issue("good-client", false);
    let other = Pki::new("other");
    let untrusted = other.issue("untrusted-client", false);
    let out = tempfile::tempdir().unwrap();
    let mut node = tls_node(
        out.path(),
        &server_cert,
        &server_key,
        &["--tls-ca", s(&pki.ca()), "--tls-require-client-cert"],
    );
    // A trusted client.
    assert!(
        echoscu_tls(node.port, Some(&good), &pki.ca()),
        "{}",
        node.log()
    );
    // A client whose certificate another CA signed, and one without a certificate.
    assert!(!echoscu_tls(node.port, Some(&untrusted), &pki.ca()));
    assert!(!echoscu_tls(node.port, None, &pki.ca()));
    // Plain TCP on the TLS port.
    let (plain, _) = run({
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "TEST_NODE", "127.0.0.1", &node.port.to_string()]);
        c
    });
    assert!(!plain.status.success());
    node.wait_for_count("association not established", 3, WAIT);
    // Still serving: storescu over TLS stores an instance, which is processed.
    let files = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("TLS-1", 1)
        .size(16, 16)
        .write_to(files.path())
        .unwrap();
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["+tls", s(&good.1), s(&good.0), "+cf", s(&pki.ca())])
        .args(["-aec", "TEST_NODE", "127.0.0.1", &node.port.to_string()])
        .arg(&paths[0]);
    let (status, text) = run(storescu);
    assert!(status.status.success(), "{text}");
    let line = node.wait_for_log("processing finished", WAIT);
    assert!(line.contains("key=TLS-1"), "{line}");

    // A node whose certificate expired: DCMTK refuses it.
    let (old_cert, old_key) = pki.issue("expired-server", true);
    let out = tempfile::tempdir().unwrap();
    let expired = tls_node(out.path(), &old_cert, &old_key, &[]);
    assert!(!echoscu_tls(expired.port, None, &pki.ca()));
    assert!(!expired.log().contains("panicked"));
}

#[test]
fn the_nodes_scu_speaks_tls_to_a_node_and_to_storescp() {
    isolated_network();
    let pki = Pki::new("scu");
    let (server_cert, server_key) = pki.issue("server", false);
    let (client_cert, client_key) = pki.issue("client", false);
    let out = tempfile::tempdir().unwrap();
    let mut node = tls_node(
        out.path(),
        &server_cert,
        &server_key,
        &["--tls-ca", s(&pki.ca()), "--tls-require-client-cert"],
    );
    let tls_args = |command: &mut Command| {
        command.args([
            "--tls",
            "--tls-ca",
            s(&pki.ca()),
            "--tls-cert",
            s(&client_cert),
            "--tls-key",
            s(&client_key),
        ]);
    };
    let mut echo = Command::new(cli_exe());
    echo.args(["echo", &format!("TEST_NODE@127.0.0.1:{}", node.port)]);
    tls_args(&mut echo);
    let (status, text) = run(echo);
    assert!(status.status.success(), "{text}");
    // Without TLS the same node does not answer.
    let mut plain = Command::new(cli_exe());
    plain.args(["echo", &format!("TEST_NODE@127.0.0.1:{}", node.port)]);
    assert!(!run(plain).0.status.success());

    // storescp +tls as the destination.
    let received = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut storescp = dcmtk("storescp");
    storescp
        .args(["+tls", s(&server_key), s(&server_cert), "+cf", s(&pki.ca())])
        .args([
            "-aet",
            "STORESCP",
            "-od",
            s(received.path()),
            &port.to_string(),
        ]);
    let _scp = PeerProcess::start(storescp, port);
    let files = tempfile::tempdir().unwrap();
    let paths = SyntheticSeries::ct("TLS-OUT", 3)
        .size(32, 32)
        .write_to(files.path())
        .unwrap();
    let mut store = Command::new(cli_exe());
    store.args(["store", "--quiet", &format!("STORESCP@127.0.0.1:{port}")]);
    tls_args(&mut store);
    store.arg(files.path());
    let (status, text) = run(store);
    assert!(status.status.success(), "{text}");
    let arrived = dicomnode_tests::files_under(received.path());
    assert_eq!(arrived.len(), paths.len(), "{arrived:?}");
    node.wait_for_log("association established", WAIT);
}

#[test]
fn tls_and_plain_tcp_on_ports_of_their_own() {
    let pki = Pki::new("both");
    let (server_cert, server_key) = pki.issue("server", false);
    let out = tempfile::tempdir().unwrap();
    let mut node = tls_node(out.path(), &server_cert, &server_key, &["--tls-port", "0"]);
    let line = node.wait_for_log("with TLS on 127.0.0.1:", WAIT);
    let tls_port: u16 = line
        .rsplit("with TLS on 127.0.0.1:")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no TLS port in {line:?}"));
    assert_ne!(tls_port, node.port);
    let plain_echo = |port: u16| {
        let mut c = dcmtk("echoscu");
        c.args(["-aec", "TEST_NODE", "127.0.0.1", &port.to_string()]);
        run(c).0.status.success()
    };
    assert!(plain_echo(node.port), "plain TCP on --port");
    assert!(echoscu_tls(tls_port, None, &pki.ca()), "TLS on --tls-port");
    assert!(!plain_echo(tls_port), "plain TCP on the TLS port");
    assert!(
        !echoscu_tls(node.port, None, &pki.ca()),
        "TLS on the plain port"
    );
}

//! `--config node.toml` as people run it: a real node reads its settings, its address book
//! and its pipeline's settings from a file; flags and DICOMNODE_* variables win; errors
//! name the file, the line and the key.

use dicomnode_server::synthetic::SyntheticSeries;
use dicomnode_tests::{dcmtk, example_exe, run, NodeProcess};
use std::process::Command;
use std::time::Duration;

fn echo(port: u16, called: &str) -> bool {
    let mut command = dcmtk("echoscu");
    command.args(["-aec", called, "127.0.0.1", &port.to_string()]);
    run(command).0.status.success()
}

#[test]
fn a_node_takes_its_settings_destinations_and_pipeline_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received");
    let store = NodeProcess::start(
        &example_exe("store_node"),
        &["--port", "0", "--out", received.to_str().unwrap()],
    );
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "# plus_one, configured\nport = 0\nae_title = \"FROM_FILE\"\nmax_associations = 4\n\n[destinations]\nstore = \"STORE_NODE@127.0.0.1:{}\"\n",
            store.port
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();

    // The file alone: its AE title, its address book.
    let mut node = NodeProcess::start(
        &example_exe("plus_one"),
        &["--config", config_arg, "--dest", "store"],
    );
    assert!(echo(node.port, "FROM_FILE"));
    assert!(
        !echo(node.port, "PLUS_ONE"),
        "the file's AE title, not the default"
    );
    let input = dir.path().join("in");
    let paths = SyntheticSeries::ct("CONF-1", 2)
        .size(8, 8)
        .write_to(&input)
        .unwrap();
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "FROM_FILE", "127.0.0.1", &node.port.to_string()])
        .args(&paths);
    let (status, text) = run(storescu);
    assert!(status.status.success(), "{text}");
    let line = node.wait_for_log("processing finished", Duration::from_secs(60));
    assert!(
        line.contains(&format!(
            "sent 2 instances to STORE_NODE@127.0.0.1:{}",
            store.port
        )),
        "{line}"
    );
    drop(node);

    // A flag wins over the file, and so does an environment variable.
    let node = NodeProcess::start(
        &example_exe("plus_one"),
        &[
            "--config",
            config_arg,
            "--dest",
            "store",
            "--ae-title",
            "FROM_FLAG",
        ],
    );
    assert!(echo(node.port, "FROM_FLAG"));
    assert!(!echo(node.port, "FROM_FILE"));
    drop(node);
    let node = NodeProcess::start_with_env(
        &example_exe("plus_one"),
        &["--config", config_arg, "--dest", "store"],
        &[("DICOMNODE_AE_TITLE", "FROM_ENV")],
    );
    assert!(echo(node.port, "FROM_ENV"));
    drop(node);

    // --print-config: the merged settings and the file's tables.
    let mut print = Command::new(example_exe("plus_one"));
    print
        .args([
            "--config",
            config_arg,
            "--dest",
            "store",
            "--max-children",
            "3",
            "--print-config",
        ])
        .env_remove("DICOMNODE_CHILD");
    let (status, text) = run(print);
    assert!(status.status.success(), "{text}");
    for want in [
        "ae_title = \"FROM_FILE\"",
        "max_children = 3",
        "max_associations = 4",
        "[destinations]",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}

#[test]
fn the_pipeline_table_is_the_pipelines_own_struct() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("from-file");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "port = 0\n\n[pipeline]\nout = {:?}\n",
            out.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut node = NodeProcess::start(
        &example_exe("volume_stats"),
        &["--config", config.to_str().unwrap()],
    );
    let paths = SyntheticSeries::ct("CONF-2", 2)
        .size(8, 8)
        .write_to(&dir.path().join("in"))
        .unwrap();
    let mut storescu = dcmtk("storescu");
    storescu
        .args(["-aec", "VOLUME_STATS", "127.0.0.1", &node.port.to_string()])
        .args(&paths);
    assert!(run(storescu).0.status.success());
    node.wait_for_log("wrote ", Duration::from_secs(60));
    assert!(out.join("CONF-2.json").exists());
}

#[test]
fn a_bad_file_stops_the_node_with_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, wants) in [
        (
            "ae_title = \"X\"\nport = \"eleven\"\n",
            vec!["node.toml, line 2: port:", "eleven"],
        ),
        (
            "port = 0\nmax_asociations = 3\n",
            vec![
                "line 2: unknown key \"max_asociations\"",
                "max_associations",
            ],
        ),
        ("port = 0\n[destinations\n", vec!["node.toml", "line 2"]),
        (
            "port = 0\n[pipeline]\nout = 3\n",
            vec!["[pipeline]", "line 3"],
        ),
    ] {
        let config = dir.path().join("node.toml");
        std::fs::write(&config, text).unwrap();
        let mut command = Command::new(example_exe("volume_stats"));
        command
            .args(["--config", config.to_str().unwrap()])
            .env_remove("DICOMNODE_CHILD");
        let (output, printed) = run(command);
        assert_eq!(output.status.code(), Some(2), "{text}: {printed}");
        for want in wants {
            assert!(printed.contains(want), "{want:?} in {printed}");
        }
    }
}

//! The opt-in status listener (`--http 127.0.0.1:PORT`): `/metrics` in the Prometheus text
//! format and `/status` as JSON. A small HTTP/1.1 server of its own: one short request at
//! a time, with deadlines, answered and closed. It only reads the node's state.

use crate::runner::ChildRunner;
use crate::storage::Storage;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The most a request's head may hold.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request or read the answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// Binds `addr` and serves on a thread of its own; returns the bound address.
pub(crate) fn start(
    addr: SocketAddr,
    storage: Arc<Storage>,
    runner: Arc<ChildRunner>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(error) = answer(stream, &storage, &runner) {
                            tracing::debug!(%error, "status request not answered");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "status connection not accepted"),
                }
            }
        })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, storage: &Storage, runner: &ChildRunner) -> std::io::Result<()> {
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        );
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let body = crate::metrics::global().render(&storage.gauges());
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        "/status" => {
            let body = status_json(storage, runner);
            respond(&mut stream, "200 OK", "application/json", &body)
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "try /metrics or /status\n",
        ),
    }
}

/// The node's state as JSON: patients waiting (each input's state and why they wait),
/// children running (their patient and for how long), quarantined batches.
pub(crate) fn status_json(storage: &Storage, runner: &ChildRunner) -> String {
    let gauges = storage.gauges();
    let metrics = crate::metrics::global();
    let running: Vec<serde_json::Value> = runner
        .running()
        .into_iter()
        .map(|(patient, seconds)| serde_json::json!({ "patient": patient, "seconds": seconds }))
        .collect();
    serde_json::json!({
        "patients_waiting": storage.waiting(),
        "children_running": running,
        "associations_open": metrics.associations_open(),
        "quarantined": storage.quarantined_batches(),
        "data_dir_free_bytes": gauges.data_dir_free_bytes,
    })
    .to_string()
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

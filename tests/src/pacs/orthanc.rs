//! Orthanc as a PACS for the tests, with its REST API.

use dicomnode_server::Address;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{log_file, read_log, wait_until_listening, HTTP_TIMEOUT};

/// What [`Orthanc::start`] configures beyond its fixed settings.
#[derive(Debug, Clone)]
pub struct OrthancOptions {
    /// `DicomModalities`: (symbolic name, AE title, host, port) of each peer Orthanc
    /// knows. C-MOVE destinations must be among them; the REST API's
    /// `/modalities/{name}/...` routes use the symbolic name.
    pub modalities: Vec<(String, String, String, u16)>,
    /// `DicomAlwaysAllowFind`, `DicomAlwaysAllowGet` and `DicomAlwaysAllowMove`: whether
    /// AE titles that are not modalities may query and retrieve. With `false`, their C-FIND
    /// fails and their C-MOVE and C-GET associations are aborted.
    pub allow_unknown_callers: bool,
    /// Further configuration settings (key, JSON value), applied last: they override the
    /// harness's own, e.g. `("LimitFindResults", json!(1))`.
    pub settings: Vec<(String, serde_json::Value)>,
}

impl Default for OrthancOptions {
    fn default() -> Self {
        OrthancOptions::new()
    }
}

impl OrthancOptions {
    /// No modalities, unknown callers allowed, no further settings.
    pub fn new() -> Self {
        OrthancOptions {
            modalities: Vec::new(),
            allow_unknown_callers: true,
            settings: Vec::new(),
        }
    }

    /// Adds a modality (symbolic name, AE title, host, port), e.g. the node under test as
    /// a C-MOVE destination: `.modality("node", "NODE", "127.0.0.1", node_port)`.
    pub fn modality(mut self, name: &str, ae_title: &str, host: &str, port: u16) -> Self {
        self.modalities
            .push((name.into(), ae_title.into(), host.into(), port));
        self
    }

    /// Sets `DicomAlwaysAllowFind`/`-Get`/`-Move`: whether AE titles that are not
    /// modalities may query and retrieve (see the field of the same name).
    pub fn allow_unknown_callers(mut self, allow: bool) -> Self {
        self.allow_unknown_callers = allow;
        self
    }

    /// Sets a further configuration setting, overriding the harness's.
    pub fn setting(mut self, key: &str, value: serde_json::Value) -> Self {
        self.settings.push((key.into(), value));
        self
    }
}

/// An HTTP response from Orthanc's REST API.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics if the status is not 200 or the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "Orthanc answered {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("Orthanc's answer is not JSON ({e}): {}", self.text()))
    }
}

/// Orthanc, from Debian's package, with its own configuration, storage and index in a
/// temporary directory, on free ports; killed by its PID (SIGKILL) when dropped.
///
/// Call [`crate::isolated_network`] before starting it (it listens on all interfaces).
pub struct Orthanc {
    child: Child,
    dicom_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Orthanc {
    /// Its AE title (`DicomAet`).
    pub const AE_TITLE: &'static str = "ORTHANC";

    /// Starts Orthanc with `options` and waits until both its DICOM and its HTTP port
    /// accept connections (panics with its log if it exits or does not listen in 30 s).
    ///
    /// Fixed settings: AE title [`Orthanc::AE_TITLE`], called AE title not checked, no
    /// authentication, no remote access (loopback only, for the REST API), no plugins,
    /// no saved jobs, log at its default level (warnings) to a file (see [`Orthanc::log`]).
    pub fn start(options: OrthancOptions) -> Orthanc {
        let dir = tempfile::tempdir().expect("a temporary directory for Orthanc");
        let (dicom_port, http_port) = (crate::free_port(), crate::free_port());
        let db = dir.path().join("db");
        let modalities: serde_json::Map<String, serde_json::Value> = options
            .modalities
            .iter()
            .map(|(name, ae_title, host, port)| {
                (name.clone(), serde_json::json!([ae_title, host, port]))
            })
            .collect();
        let allow = options.allow_unknown_callers;
        let mut config = serde_json::json!({
            "Name": "dicomnode-test",
            "StorageDirectory": db,
            "IndexDirectory": db,
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": Self::AE_TITLE,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowFind": allow,
            "DicomAlwaysAllowGet": allow,
            "DicomAlwaysAllowMove": allow,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "WebDavEnabled": false,
            "SaveJobs": false,
            "Plugins": [],
            "DicomModalities": modalities,
        });
        let object = config
            .as_object_mut()
            .expect("the configuration is a JSON object");
        for (key, value) in options.settings {
            object.insert(key, value);
        }
        let path = dir.path().join("orthanc.json");
        std::fs::write(&path, config.to_string()).expect("Orthanc's configuration is written");

        let log = dir.path().join("orthanc.log");
        let (stdout, stderr) = log_file(&dir.path().join("orthanc.out"));
        let mut child = Command::new("/usr/sbin/Orthanc")
            .arg(format!("--logfile={}", log.display()))
            .arg(&path)
            // Orthanc's DICOM side is DCMTK: the same Nagle delay as in [`crate::dcmtk`].
            .env("TCP_NODELAY", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("/usr/sbin/Orthanc starts (Debian package orthanc)");
        wait_until_listening(&mut child, "Orthanc", &[dicom_port, http_port], &log);
        Orthanc {
            child,
            dicom_port,
            http_port,
            dir,
        }
    }

    /// Its DICOM port.
    pub fn dicom_port(&self) -> u16 {
        self.dicom_port
    }

    /// Its HTTP (REST API) port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `ORTHANC@127.0.0.1:<DICOM port>`, plain TCP.
    pub fn address(&self) -> Address {
        Address {
            tls: None,
            ae_title: Self::AE_TITLE.into(),
            host: "127.0.0.1".into(),
            port: self.dicom_port,
        }
    }

    /// Its PID, e.g. to SIGSTOP or SIGKILL it (Orthanc is one process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything Orthanc logged so far (its log file, then its standard output and
    /// error), for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("orthanc.log"))
            + &read_log(&self.dir.path().join("orthanc.out"))
    }

    /// `GET path` (e.g. `/studies`) on its REST API.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[])
    }

    /// `POST path` with `body` (sent as `application/dicom`) on its REST API.
    pub fn post(&self, path: &str, body: &[u8]) -> HttpResponse {
        self.request("POST", path, body)
    }

    /// `GET path`; asserts status 200 and returns the JSON answer.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).json()
    }

    /// `POST path` with `body`; asserts status 200 and returns the JSON answer.
    pub fn post_json(&self, path: &str, body: &[u8]) -> serde_json::Value {
        self.post(path, body).json()
    }

    /// Stores Part-10 files through the REST API (`POST /instances`), one request each;
    /// asserts status 200 for each and returns Orthanc's answers (with `ID`, `ParentStudy`,
    /// `ParentSeries`, `Status`...), in order.
    pub fn upload<P: AsRef<Path>>(&self, files: &[P]) -> Vec<serde_json::Value> {
        files
            .iter()
            .map(|file| {
                let file = file.as_ref();
                let bytes = std::fs::read(file)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
                let response = self.post("/instances", &bytes);
                assert_eq!(
                    response.status,
                    200,
                    "Orthanc refused {}: {}",
                    file.display(),
                    response.text()
                );
                response.json()
            })
            .collect()
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        http_request(self.http_port, method, path, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} on Orthanc failed: {e}; Orthanc's log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a connection of its own (`Connection:
/// close`); reads the response to the end of the connection.
fn http_request(port: u16, method: &str, path: &str, body: &[u8]) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/dicom\r\nContent-Length: {}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response: {e}"))?;
    parse_http_response(&raw)
}

/// Status and body of a complete HTTP/1.1 response (`Content-Length`, chunked, or until
/// the end of the connection).
fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or_else(|| format!("body shorter than its Content-Length {length}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(HttpResponse { status, body })
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size without its line end")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("a chunk without its line end")?;
    }
}

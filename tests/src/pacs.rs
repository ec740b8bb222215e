//! Real query/retrieve peers for end-to-end tests of a C-FIND/C-MOVE/C-GET SCU: Orthanc
//! (Debian's package, `/usr/sbin/Orthanc`) and DCMTK's `dcmqrscp`, each with its own
//! storage in a temporary directory and on free ports; and DCMTK's `findscu` as the
//! reference for what a query should find.
//!
//! Both peers listen on all interfaces. A test must therefore call
//! [`crate::isolated_network`] first, before it takes any port with [`crate::free_port`]:
//! then "all interfaces" is the loopback interface of the test thread's own network
//! namespace, which every process the thread starts (the peer, DCMTK's tools, the node)
//! shares.
//!
//! What the configurations settle (checked by hand against Orthanc 1.10.1 and DCMTK 3.6.7):
//!
//! - Orthanc only moves to the AE titles of `DicomModalities` (another destination: the
//!   C-MOVE fails, status "Failed: UnableToProcess"). C-FIND, C-MOVE and C-GET from an AE
//!   title that is not a modality are refused (C-FIND fails; C-MOVE and C-GET abort the
//!   association) unless `DicomAlwaysAllowFind`, `DicomAlwaysAllowMove` and
//!   `DicomAlwaysAllowGet` are true, which [`OrthancOptions::new`] sets so that `findscu`
//!   and `getscu` with their default titles work. A modality given as a plain list
//!   (`[aet, host, port]`) may do everything, C-GET included. The called AE title is not
//!   checked (`DicomCheckCalledAet` false). Its C-STORE sub-operations carry the Move
//!   Originator AE Title and Message ID.
//! - dcmqrscp moves only to the AE titles of its `HostTable` (another destination:
//!   "Refused: MoveDestinationUnknown"); with `ANY` as the storage area's peers, any calling
//!   AE title may query and retrieve, C-GET included (DCMTK ≥ 3.6 serves C-GET unless
//!   `--disable-get`). Its C-STORE sub-operations carry the Move Originator AE Title and
//!   Message ID. It must run in its default fork-per-association mode: in single-process
//!   mode (`-s`) DCMTK 3.6.7 crashes (SIGSEGV in `DUL_DropAssociation`) after the first
//!   association.

use dicomnode_server::input::value_of;
use dicomnode_server::{dicom_dictionary_std::tags, dicom_object, Address, DicomInstance};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a peer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one REST request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The text of a log file, empty if it cannot be read.
fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Waits until 127.0.0.1 accepts connections on every one of `ports`; panics with the
/// peer's log if it exits first or after [`START_TIMEOUT`].
fn wait_until_listening(child: &mut Child, name: &str, ports: &[u16], log: &Path) {
    let start = Instant::now();
    for &port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited ({status}) before listening on port {port}; log:\n{}",
                    read_log(log)
                );
            }
            if start.elapsed() > START_TIMEOUT {
                panic!(
                    "{name} does not listen on port {port} after {START_TIMEOUT:?}; log:\n{}",
                    read_log(log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A file for a peer's standard output and error.
fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path).expect("a log file for the peer");
    let second = file.try_clone().expect("a second handle on the log file");
    (Stdio::from(file), Stdio::from(second))
}

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

/// What [`Dcmqrscp::start`] configures.
#[derive(Debug, Clone)]
pub struct DcmqrscpOptions {
    /// The AE title of its one storage area (default `PACS`); the called AE title must be
    /// this one.
    pub ae_title: String,
    /// The `HostTable`: (AE title, host, port) of each C-MOVE destination, e.g. the node
    /// under test.
    pub hosts: Vec<(String, String, u16)>,
    /// `MaxPDUSize`, the largest PDU it receives (default 16384).
    pub max_pdu: u32,
    /// `MaxAssociations`, how many associations it serves at once (default 16).
    pub max_associations: u32,
    /// Further command-line options, e.g. `--disable-get`, `-XF` (check C-FIND
    /// identifiers), `-ZA` (move only to the requesting AE title).
    pub args: Vec<String>,
}

impl Default for DcmqrscpOptions {
    fn default() -> Self {
        DcmqrscpOptions::new()
    }
}

impl DcmqrscpOptions {
    /// AE title `PACS`, no C-MOVE destinations, PDUs of 16 KiB, 16 associations.
    pub fn new() -> Self {
        DcmqrscpOptions {
            ae_title: "PACS".into(),
            hosts: Vec::new(),
            max_pdu: 16384,
            max_associations: 16,
            args: Vec::new(),
        }
    }

    /// Adds a C-MOVE destination (AE title, host, port) to the `HostTable`.
    pub fn host(mut self, ae_title: &str, host: &str, port: u16) -> Self {
        self.hosts.push((ae_title.into(), host.into(), port));
        self
    }

    /// Adds a command-line option.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// DCMTK's dcmqrscp with one storage area in a temporary directory, on a free port.
///
/// It forks a child per association (its single-process mode crashes, see the module's
/// documentation), all in a process group of their own whose ID is [`Dcmqrscp::pid`]:
/// stopping or killing only that PID stops accepting new associations but not the ones
/// being served; [`Dcmqrscp::signal_all`] signals them all. Dropped, the whole group is
/// killed (SIGKILL).
///
/// Call [`crate::isolated_network`] before starting it (it listens on all interfaces).
pub struct Dcmqrscp {
    child: Child,
    port: u16,
    ae_title: String,
    loaded: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Dcmqrscp {
    /// Writes its configuration, starts it and waits until its port accepts connections
    /// (panics with its log if it exits or does not listen in 30 s).
    pub fn start(options: DcmqrscpOptions) -> Dcmqrscp {
        let dir = tempfile::tempdir().expect("a temporary directory for dcmqrscp");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("dcmqrscp's storage area is created");
        let storage_text = storage.to_str().expect("a UTF-8 temporary path");
        // The configuration file's syntax has no quoting.
        assert!(
            !storage_text.contains(char::is_whitespace),
            "no white space in {storage_text}"
        );
        let port = crate::free_port();
        let mut hosts = String::new();
        for (i, (ae_title, host, port)) in options.hosts.iter().enumerate() {
            hosts.push_str(&format!("peer{i} = ({ae_title}, {host}, {port})\n"));
        }
        let config = format!(
            "NetworkTCPPort  = {port}\n\
             MaxPDUSize      = {max_pdu}\n\
             MaxAssociations = {max_associations}\n\
             \n\
             HostTable BEGIN\n\
             {hosts}\
             HostTable END\n\
             \n\
             VendorTable BEGIN\n\
             VendorTable END\n\
             \n\
             AETable BEGIN\n\
             {ae_title} {storage_text} RW (200, 1024mb) ANY\n\
             AETable END\n",
            max_pdu = options.max_pdu,
            max_associations = options.max_associations,
            ae_title = options.ae_title,
        );
        let path = dir.path().join("dcmqrscp.cfg");
        std::fs::write(&path, config).expect("dcmqrscp's configuration is written");

        let log = dir.path().join("dcmqrscp.log");
        let (stdout, stderr) = log_file(&log);
        let mut command = crate::dcmtk("dcmqrscp");
        command
            .arg("-c")
            .arg(&path)
            .args(&options.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut child = command
            .spawn()
            .expect("/usr/bin/dcmqrscp starts (Debian package dcmtk)");
        wait_until_listening(&mut child, "dcmqrscp", &[port], &log);
        Dcmqrscp {
            child,
            port,
            ae_title: options.ae_title,
            loaded: AtomicUsize::new(0),
            dir,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its AE title.
    pub fn ae_title(&self) -> &str {
        &self.ae_title
    }

    /// `<AE title>@127.0.0.1:<port>`, plain TCP.
    pub fn address(&self) -> Address {
        Address {
            tls: None,
            ae_title: self.ae_title.clone(),
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// The PID of the process that accepts associations, also the ID of the process
    /// group of it and the children that serve them.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the whole process group: the listener and every child serving an
    /// association (e.g. SIGSTOP to make a hanging peer of it, SIGCONT to resume it).
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("a PID fits in i32");
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal:?} to dcmqrscp's group: {e}"));
    }

    /// The directory of its storage area (with `index.dat`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Everything it logged so far (warnings and errors; every connection that closes
    /// without an association, such as the harness's wait for the port, logs
    /// "Association Reject Failed").
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("dcmqrscp.log"))
    }

    /// Puts Part-10 files into its storage area: copies them there and registers them in
    /// its index with DCMTK's `dcmqridx` (no association; works even while it is stopped).
    /// Its next association sees them.
    pub fn load<P: AsRef<Path>>(&self, files: &[P]) {
        let storage = self.storage_dir();
        let mut command = crate::dcmtk("dcmqridx");
        command.arg(&storage);
        for file in files {
            let file = file.as_ref();
            let n = self.loaded.fetch_add(1, Ordering::Relaxed);
            let copy = storage.join(format!("loaded{n:06}.dcm"));
            std::fs::copy(file, &copy)
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", file.display()));
            command.arg(copy);
        }
        let (output, text) = crate::run(command);
        assert!(output.status.success(), "dcmqridx failed: {text}");
    }
}

impl Drop for Dcmqrscp {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference C-FIND: DCMTK's `findscu` in the Study Root model (calling AE title
/// `FINDSCU`) to 127.0.0.1:`port`, at `level` (`PATIENT`, `STUDY`, `SERIES`, `IMAGE`), with
/// `keys` as findscu's `-k` takes them (`PatientID=PID-1` to match, `StudyDate` to ask
/// for a value). Returns every response's identifier, in the order received.
///
/// Panics, with findscu's output, unless the final response has status Success.
pub fn findscu(port: u16, called_ae: &str, level: &str, keys: &[&str]) -> Vec<DicomInstance> {
    let out = tempfile::tempdir().expect("a temporary directory for findscu's responses");
    let mut command = crate::dcmtk("findscu");
    command
        .args(["-v", "-S", "-X", "-od"])
        .arg(out.path())
        .args(["-aec", called_ae, "-k"])
        .arg(format!("QueryRetrieveLevel={level}"));
    for key in keys {
        command.args(["-k", key]);
    }
    command.args(["127.0.0.1", &port.to_string()]);
    let (output, text) = crate::run(command);
    assert!(
        output.status.success() && text.contains("Received Final Find Response (Success)"),
        "findscu to {called_ae} on port {port} failed: {text}"
    );
    // rsp0001.dcm, rsp0002.dcm...: the names sort in the order received.
    let mut files = crate::files_under(out.path());
    files.sort();
    files
        .iter()
        .map(|file| {
            dicom_object::open_file(file).unwrap_or_else(|e| {
                panic!("findscu's response {} does not parse: {e}", file.display())
            })
        })
        .collect()
}

/// A study as the reference C-FIND found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FoundStudy {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Study Date (YYYYMMDD), if the peer has one.
    pub study_date: Option<String>,
}

/// The studies of a patient according to the reference C-FIND ([`findscu`]) at STUDY
/// level, with `PatientID=patient_id`; sorted by Study Instance UID.
pub fn findscu_studies(port: u16, called_ae: &str, patient_id: &str) -> Vec<FoundStudy> {
    let patient = format!("PatientID={patient_id}");
    let keys = [patient.as_str(), "StudyInstanceUID", "StudyDate"];
    let mut studies: Vec<FoundStudy> = findscu(port, called_ae, "STUDY", &keys)
        .iter()
        .map(|response| FoundStudy {
            study_instance_uid: value_of(response, tags::STUDY_INSTANCE_UID)
                .expect("a C-FIND response at STUDY level has a Study Instance UID"),
            study_date: value_of(response, tags::STUDY_DATE),
        })
        .collect();
    studies.sort();
    studies
}

//! DCMTK's dcmqrscp as a second PACS for the tests.

use dicomnode_server::Address;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{log_file, read_log, wait_until_listening};

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

//! The DICOM SCP: accepts associations, answers C-ECHO, and takes each C-STORE to storage.
//!
//! One thread per connection, at most `max_associations` at once: a connection beyond is
//! answered with a transient rejection by a small, bounded set of refusing threads (or
//! closed, when even those are busy), so that a flood of idle connections can neither
//! exhaust the file descriptors nor lock out a real sender for long. Every peer is held to
//! deadlines: the association request within the ACSE time-out, each PDU within the PDU
//! time-out, and no more than the idle time-out between PDUs ([`session`]).

mod messages;
mod negotiating;
mod negotiation;
mod pdu_reader;
mod session;
mod transport;

use crate::runner::ChildRunner;
use crate::storage::Storage;
use crate::storage_classes::STORAGE_SOP_CLASSES;
use crate::NodeConfig;
use dicom_dictionary_std::uids;
use dicom_ul::pdu::{
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
};
use dicom_ul::Pdu;
use dicomnode_core::sanitize::escape_control;
use negotiating::Negotiating;
use negotiation::Acceptor;
use session::{AssociationSession, Peer};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Refusing threads alive at once; connections beyond are closed without an answer.
const MAX_REFUSING: usize = 16;
/// How long a refusing thread waits for the association request it answers.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);
/// Stack of an association thread: the parsers it runs are bounded in depth
/// ([`dicomnode_core::structure::MAX_SEQUENCE_DEPTH`]); this leaves a wide margin.
const ASSOCIATION_STACK: usize = 4 << 20;

/// Checks the called AE title (when asked to) and the calling AE title against an allow
/// list (when one is given), and logs who is refused.
#[derive(Debug, Clone)]
pub(crate) struct CalledAeTitle {
    /// Whether to check the called AE title.
    pub(crate) check: bool,
    /// Calling AE titles allowed to associate; empty: any.
    pub(crate) allowed_calling: Vec<String>,
}

impl CalledAeTitle {
    /// Whether a peer calling `called_ae_title` as `calling_ae_title` may associate with
    /// the node whose title is `this_ae_title`; if not, the reason to reject it with.
    pub(crate) fn check(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.check && called_ae_title.trim() != this_ae_title.trim() {
            tracing::warn!(
                calling = %escape_control(calling_ae_title),
                called = %escape_control(called_ae_title),
                ours = this_ae_title,
                "association rejected: called AE title is not ours"
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed_calling.is_empty()
            && !self
                .allowed_calling
                .iter()
                .any(|allowed| allowed.trim() == calling_ae_title.trim())
        {
            tracing::warn!(
                calling = %escape_control(calling_ae_title),
                "association rejected: calling AE title is not on the allow list"
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Connections being served, counted from accept to close (a guard decrements the count
/// however the thread ends, a panic included).
#[derive(Default)]
pub(crate) struct Connections {
    live: AtomicUsize,
}

/// One counted connection.
pub(crate) struct Slot(Arc<Connections>);

impl Connections {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The listening SCP.
pub struct Scp {
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    /// TLS on this port, with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    storage: Arc<Storage>,
    runner: Arc<ChildRunner>,
    config: Arc<NodeConfig>,
    connections: Arc<Connections>,
    negotiating: Arc<Negotiating>,
    refusing: Arc<AtomicUsize>,
    refusals: RefusalLog,
    stopping: Arc<AtomicBool>,
}

/// Stops an SCP from another thread (a signal handler's).
#[derive(Clone)]
pub struct StopHandle {
    stopping: Arc<AtomicBool>,
    addr: SocketAddr,
    connections: Arc<Connections>,
}

impl StopHandle {
    /// Stops accepting associations (the accept loop is woken by a connection to itself).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    /// Connections still being served.
    pub fn live(&self) -> usize {
        self.connections.live()
    }
}

impl Scp {
    /// Binds the listening socket.
    pub fn bind(
        config: &NodeConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        storage: Arc<Storage>,
        runner: Arc<ChildRunner>,
    ) -> std::io::Result<Self> {
        raise_open_files_limit();
        let listener = TcpListener::bind(config.bind)?;
        let acceptor = Acceptor {
            ae_title: config.ae_title.clone(),
            access: CalledAeTitle {
                check: config.check_called_ae_title,
                allowed_calling: config.allowed_calling_ae_titles.clone(),
            },
            abstract_syntaxes: std::iter::once(uids::VERIFICATION)
                .chain(STORAGE_SOP_CLASSES.iter().copied())
                .map(str::to_string)
                .collect(),
            max_pdu_length: config.max_pdu_length,
        };
        Ok(Scp {
            listener,
            acceptor: Arc::new(acceptor),
            tls,
            storage,
            runner,
            config: Arc::new(config.clone()),
            connections: Arc::new(Connections::default()),
            negotiating: Negotiating::start(),
            refusing: Arc::new(AtomicUsize::new(0)),
            refusals: RefusalLog::default(),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address the SCP listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops the accept loop.
    pub fn stop_handle(&self) -> std::io::Result<StopHandle> {
        let mut addr = self.listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(StopHandle {
            stopping: Arc::clone(&self.stopping),
            addr,
            connections: Arc::clone(&self.connections),
        })
    }

    /// Accepts associations, one thread each, until stopped.
    pub fn serve(&self) -> std::io::Result<()> {
        for stream in self.listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                tracing::info!("no longer accepting associations");
                return Ok(());
            }
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    // E.g. out of file descriptors: do not spin.
                    tracing::warn!(%error, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if let Some(used) = self.disk_over_watermark() {
                let why = format!(
                    "the data directory's disk is {:.1}% used, above the watermark of {:.1}%",
                    used * 100.0,
                    self.config.disk_watermark * 100.0
                );
                self.refuse(
                    stream,
                    AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                    why,
                );
                continue;
            }
            let max = self.config.max_associations;
            let slot = self
                .connections
                .try_take(max)
                .or_else(|| self.make_room(&stream));
            let Some(slot) = slot else {
                let why = format!(
                    "{} connections are being served, the most this node takes at once (--max-associations)",
                    self.config.max_associations
                );
                self.refuse(
                    stream,
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    why,
                );
                continue;
            };
            let session = AssociationSession {
                acceptor: Arc::clone(&self.acceptor),
                tls: self.tls.clone(),
                storage: Arc::clone(&self.storage),
                runner: Arc::clone(&self.runner),
                config: Arc::clone(&self.config),
                connections: Arc::clone(&self.connections),
                negotiating: Arc::clone(&self.negotiating),
            };
            // Watched from now on, before its thread runs: it can be evicted at once.
            let watch = self
                .negotiating
                .watch(&stream, Instant::now() + self.config.acse_timeout);
            let spawned = std::thread::Builder::new()
                .name("association".into())
                .stack_size(ASSOCIATION_STACK)
                .spawn(move || session.run(Peer::new(stream), slot, watch));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start an association thread");
            }
        }
        Ok(())
    }

    /// The data directory's file system use, when it is above the watermark.
    fn disk_over_watermark(&self) -> Option<f64> {
        let dir = self.storage.data_dir()?;
        let stat = nix::sys::statvfs::statvfs(dir).ok()?;
        let total = stat.blocks() as f64;
        if total <= 0.0 {
            return None;
        }
        let used = 1.0 - stat.blocks_available() as f64 / total;
        (used > self.config.disk_watermark).then_some(used)
    }

    /// Every slot is taken: the connection negotiating longest (an idle or crawling peer,
    /// as a real one sends its request at once) is shut down to make room for this one.
    fn make_room(&self, stream: &TcpStream) -> Option<Slot> {
        let negotiating_for = self.negotiating.evict_oldest()?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        self.refusals.note(
            &peer,
            &format!(
                "every connection slot is taken: the connection negotiating longest ({negotiating_for:.1?}) closed to make room for this one"
            ),
        );
        // The evicted connection's thread ends as soon as it runs again; its slot is lent to
        // this one meanwhile (never more than as many again as the cap).
        self.connections
            .try_take(self.config.max_associations.saturating_mul(2))
    }

    /// Refuses a connection transiently (the peer may try later), on a refusing thread if
    /// one is free, else by closing it at once.
    fn refuse(
        &self,
        stream: TcpStream,
        reason: AssociationRJServiceProviderPresentationReason,
        why: String,
    ) {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        self.refusals
            .note(&peer, &format!("association refused (transient): {why}"));
        let taken = self
            .refusing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_REFUSING).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            // Dropping closes it: the peer sees the connection end and may retry.
            return;
        }
        let refusing = Arc::clone(&self.refusing);
        let spawned = std::thread::Builder::new()
            .name("refusal".into())
            .spawn(move || {
                refuse_transiently(stream, reason);
                refusing.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Logs refused and evicted connections without letting a flood of them flood the log:
/// the first of each second in full, the others counted in the next line.
#[derive(Default)]
struct RefusalLog {
    /// Seconds since the Unix epoch of the last line.
    last: AtomicU64,
    silenced: AtomicU64,
}

impl RefusalLog {
    fn note(&self, peer: &str, what: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last.swap(now, Ordering::SeqCst) == now {
            self.silenced.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let silenced = self.silenced.swap(0, Ordering::SeqCst);
        tracing::warn!(
            %peer,
            like_it_since_last_line = silenced,
            "{what}"
        );
    }
}

/// Answers an association request with a transient rejection. The request is read first
/// (for at most [`REFUSAL_WAIT`] in all), so that the rejection is not lost in a reset.
fn refuse_transiently(
    mut stream: TcpStream,
    reason: AssociationRJServiceProviderPresentationReason,
) {
    use dicom_ul::pdu::{AssociationRJ, AssociationRJResult, AssociationRJSource};
    use std::io::{Read, Write};
    let deadline = Instant::now() + REFUSAL_WAIT;
    let mut header = Vec::with_capacity(6);
    let mut received = 0usize;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let wanted = 6 - header.len().min(6);
                header.extend_from_slice(&chunk[..n.min(wanted)]);
                received += n;
            }
        }
        // Enough once the whole request is in (its header says how long it is).
        if let Ok(h) = <[u8; 6]>::try_from(header.as_slice()) {
            let length = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
            if received >= 6 + length.min(256 * 1024) {
                break;
            }
        }
    }
    let rejection = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(reason),
    });
    let mut bytes = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut bytes, &rejection).is_ok() {
        let _ = stream.set_write_timeout(Some(REFUSAL_WAIT));
        let _ = stream.write_all(&bytes);
        let _ = stream.flush();
    }
}

/// Raises the soft limit of open files to the hard limit: each connection takes one,
/// and the usual soft limit of 1,024 is low for a node that also runs children.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(%error, soft, hard, "cannot raise the open files limit");
            }
        }
    }
}

//! The DICOM SCP: accepts associations, answers C-ECHO, and takes each C-STORE to storage.
//!
//! One thread per association. Commands and data sets are gathered from as many PDVs and
//! PDUs as the peer splits them into; each data set is read in the transfer syntax of its
//! own presentation context and kept as received.

use crate::config::NodeConfig;
use crate::dimse::{self, status, Command};
use crate::runner::ChildRunner;
use crate::storage::{Incoming, Offer, ReceiveError, Storage};
use crate::storage_classes::STORAGE_SOP_CLASSES;
use crate::trigger::PatientsTouched;
use dicom_core::Tag;
use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::{AccessControl, DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::association::Association;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJServiceUserReason, PDataValue,
    PDataValueType, PresentationContextResultReason, UserIdentity,
};
use dicom_ul::Pdu;
use dicomnode_core::input::{tag_name, value_of};
use dicomnode_core::Sender;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Checks the called AE title (when asked to) and the calling AE title against an allow
/// list (when one is given), and logs who is refused.
#[derive(Debug, Clone)]
pub struct CalledAeTitle {
    /// Whether to check the called AE title.
    pub check: bool,
    /// Calling AE titles allowed to associate; empty: any.
    pub allowed_calling: Vec<String>,
}

impl AccessControl for CalledAeTitle {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.check && called_ae_title.trim() != this_ae_title.trim() {
            tracing::warn!(
                calling = calling_ae_title,
                called = called_ae_title,
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
                calling = calling_ae_title,
                "association rejected: calling AE title is not on the allow list"
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// The listening SCP.
pub struct Scp {
    listener: TcpListener,
    options: Arc<ServerAssociationOptions<'static, CalledAeTitle, DefaultNegotiation>>,
    storage: Arc<Storage>,
    runner: Arc<ChildRunner>,
    patient_key: Tag,
    live: Arc<AtomicUsize>,
    disk_watermark: f64,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Stops an SCP from another thread (a signal handler's).
#[derive(Clone)]
pub struct StopHandle {
    stopping: Arc<std::sync::atomic::AtomicBool>,
    addr: SocketAddr,
    live: Arc<AtomicUsize>,
}

impl StopHandle {
    /// Stops accepting associations (the accept loop is woken by a connection to itself).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    /// Associations still running.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Scp {
    /// Binds the listening socket.
    pub fn bind(
        config: &NodeConfig,
        storage: Arc<Storage>,
        runner: Arc<ChildRunner>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind)?;
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(CalledAeTitle {
                check: config.check_called_ae_title,
                allowed_calling: config.allowed_calling_ae_titles.clone(),
            })
            .ae_title(config.ae_title.clone())
            .max_pdu_length(config.max_pdu_length)
            .read_timeout(config.association_timeout)
            .write_timeout(config.association_timeout)
            .with_abstract_syntax(uids::VERIFICATION);
        for sop_class in STORAGE_SOP_CLASSES {
            options = options.with_abstract_syntax(*sop_class);
        }
        Ok(Scp {
            listener,
            options: Arc::new(options),
            storage,
            runner,
            patient_key: config.patient_key,
            live: Arc::new(AtomicUsize::new(0)),
            disk_watermark: config.disk_watermark,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
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
            live: Arc::clone(&self.live),
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
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if let Some(used) = self.disk_over_watermark() {
                let watermark = self.disk_watermark;
                std::thread::spawn(move || refuse_transiently(stream, used, watermark));
                continue;
            }
            let session = AssociationSession {
                options: Arc::clone(&self.options),
                storage: Arc::clone(&self.storage),
                runner: Arc::clone(&self.runner),
                patient_key: self.patient_key,
                live: Arc::clone(&self.live),
            };
            let spawned = std::thread::Builder::new()
                .name("association".into())
                .spawn(move || session.run(stream));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start an association thread");
            }
        }
        Ok(())
    }
}

impl Scp {
    /// The data directory's file system use, when it is above the watermark.
    fn disk_over_watermark(&self) -> Option<f64> {
        let dir = self.storage.data_dir()?;
        let stat = nix::sys::statvfs::statvfs(dir).ok()?;
        let total = stat.blocks() as f64;
        if total <= 0.0 {
            return None;
        }
        let used = 1.0 - stat.blocks_available() as f64 / total;
        (used > self.disk_watermark).then_some(used)
    }
}

/// Answers an association request with a transient rejection (the peer may try later):
/// the data directory is too full to promise that what it sends will be kept.
fn refuse_transiently(mut stream: TcpStream, used: f64, watermark: f64) {
    use dicom_ul::pdu::{
        AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
        AssociationRJSource,
    };
    use std::io::{Read, Write};
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    tracing::warn!(
        %peer,
        used = format!("{:.1}%", used * 100.0),
        watermark = format!("{:.1}%", watermark * 100.0),
        "association refused (transient): the data directory's disk is above the watermark"
    );
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    // Read the A-ASSOCIATE-RQ first, so that the rejection is not lost in a reset.
    let mut header = [0u8; 6];
    if stream.read_exact(&mut header).is_ok() {
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let _ = std::io::copy(
            &mut (&mut stream).take(u64::from(length)),
            &mut std::io::sink(),
        );
    }
    let rejection = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
        ),
    });
    let mut bytes = Vec::new();
    if dicom_ul::pdu::write_pdu(&mut bytes, &rejection).is_ok() {
        let _ = stream.write_all(&bytes);
        let _ = stream.flush();
    }
}

/// What one association's thread needs.
struct AssociationSession {
    options: Arc<ServerAssociationOptions<'static, CalledAeTitle, DefaultNegotiation>>,
    storage: Arc<Storage>,
    runner: Arc<ChildRunner>,
    patient_key: Tag,
    live: Arc<AtomicUsize>,
}

/// A DIMSE message being gathered from P-DATA fragments.
#[derive(Default)]
struct Gathering {
    command: Vec<u8>,
    /// A command that announced a data set, and its presentation context.
    pending: Option<(Command, u8)>,
    /// The data set, written where it will be stored as it arrives.
    data: Option<Incoming>,
    /// Set when the association must be aborted (and why).
    abort: Option<String>,
}

/// Sends an A-ABORT; the connection closes when the association is dropped.
fn abort(
    association: &mut dicom_ul::association::ServerAssociation<TcpStream>,
    reason: AbortRQServiceProviderReason,
) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(reason),
    };
    if let Err(error) = association.send(&pdu) {
        tracing::warn!(%error, "cannot send the abort");
    }
}

impl AssociationSession {
    fn run(self, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
        // Without it every C-STORE waits on Nagle and delayed ACK (45-90 ms here).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let mut association = match self.options.establish(stream) {
            Ok(association) => association,
            Err(error) => {
                tracing::warn!(%peer, %error, "association not established");
                return;
            }
        };
        let sender = Sender {
            ae_title: association.peer_ae_title().trim().to_string(),
            address: peer.clone(),
        };
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        let span = tracing::info_span!("association", peer = %peer, calling = %sender.ae_title);
        let _entered = span.enter();
        tracing::info!(live, "association established");

        let contexts: HashMap<u8, (String, String)> = association
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.id,
                    (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()),
                )
            })
            .collect();

        let mut touched = PatientsTouched::default();
        let mut counts = (0usize, 0usize);
        // Whatever happens in the conversation (even a panic in a user's rule), the
        // association's end is counted and its patients are checked.
        let ending = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.converse(&mut association, &contexts, &mut touched, &mut counts)
        }))
        .unwrap_or_else(|_| "ended by a panic in the node (see the log above)".to_string());
        let (stored, refused) = counts;
        let live = self.live.fetch_sub(1, Ordering::SeqCst) - 1;
        tracing::info!(stored, refused, live, "association ended: {ending}");
        touched.association_ended(&self.storage, &self.runner, &sender);
    }

    /// Receives and answers until the association ends; returns how it ended.
    fn converse(
        &self,
        association: &mut dicom_ul::association::ServerAssociation<TcpStream>,
        contexts: &HashMap<u8, (String, String)>,
        touched: &mut PatientsTouched,
        counts: &mut (usize, usize),
    ) -> String {
        let mut gathering = Gathering::default();
        loop {
            let pdu = match association.receive() {
                Ok(pdu) => pdu,
                Err(error) => return format!("connection lost: {error}"),
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        let reply = self.on_fragment(pdv, &mut gathering, contexts, touched);
                        if let Some((response, pc_id, stored_ok)) = reply {
                            match stored_ok {
                                Some(true) => counts.0 += 1,
                                Some(false) => counts.1 += 1,
                                None => {}
                            }
                            let sent = association.send(&Pdu::PData {
                                data: vec![PDataValue {
                                    presentation_context_id: pc_id,
                                    value_type: PDataValueType::Command,
                                    is_last: true,
                                    data: response,
                                }],
                            });
                            if let Err(error) = sent {
                                tracing::warn!(%error, "cannot send a response");
                            }
                        }
                        if let Some(why) = gathering.abort.take() {
                            abort(
                                association,
                                AbortRQServiceProviderReason::InvalidPduParameter,
                            );
                            return format!("aborted by the node: {why}");
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if let Err(error) = association.send(&Pdu::ReleaseRP) {
                        tracing::warn!(%error, "cannot send the release response");
                    }
                    return "released".to_string();
                }
                Pdu::AbortRQ { source } => return format!("aborted by the peer ({source:?})"),
                other => {
                    tracing::warn!(pdu = ?other, "unexpected PDU; aborting the association");
                    abort(association, AbortRQServiceProviderReason::UnexpectedPdu);
                    return "aborted by the node: unexpected PDU".to_string();
                }
            }
        }
    }

    /// Handles one fragment; returns a response to send (bytes, presentation context,
    /// and for a C-STORE whether the instance was stored).
    fn on_fragment(
        &self,
        pdv: PDataValue,
        gathering: &mut Gathering,
        contexts: &HashMap<u8, (String, String)>,
        touched: &mut PatientsTouched,
    ) -> Option<(Vec<u8>, u8, Option<bool>)> {
        let pc_id = pdv.presentation_context_id;
        match pdv.value_type {
            PDataValueType::Command => {
                gathering.command.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return None;
                }
                let bytes = std::mem::take(&mut gathering.command);
                let command = match Command::decode(&bytes) {
                    Ok(command) => command,
                    Err(error) => {
                        // No message ID to answer: the peer would wait for ever.
                        tracing::warn!(%error, "unreadable command");
                        gathering.abort = Some(format!("unreadable command: {error}"));
                        return None;
                    }
                };
                match command.field {
                    dimse::C_ECHO_RQ => {
                        tracing::debug!("C-ECHO");
                        Some((
                            dimse::response(&command, dimse::C_ECHO_RSP, status::SUCCESS, None),
                            pc_id,
                            None,
                        ))
                    }
                    dimse::C_STORE_RQ if command.has_data_set => {
                        gathering.pending = Some((command, pc_id));
                        gathering.data = None;
                        None
                    }
                    field => {
                        tracing::warn!(field = format!("{field:#06x}"), "unsupported command");
                        Some((
                            dimse::response(
                                &command,
                                field | 0x8000,
                                status::UNRECOGNIZED_OPERATION,
                                Some("operation not supported by this node"),
                            ),
                            pc_id,
                            None,
                        ))
                    }
                }
            }
            PDataValueType::Data => {
                let Some((command, _)) = &gathering.pending else {
                    tracing::warn!("data set fragment without a C-STORE command; ignored");
                    return None;
                };
                // The data set's transfer syntax is that of its own presentation context.
                let transfer_syntax = contexts.get(&pc_id).map(|(_, ts)| ts.as_str());
                let incoming = gathering.data.get_or_insert_with(|| {
                    self.storage.incoming(
                        &command.sop_class_uid,
                        &command.sop_instance_uid,
                        transfer_syntax.unwrap_or_default(),
                    )
                });
                incoming.push(pdv.data);
                if !pdv.is_last {
                    return None;
                }
                let incoming = gathering.data.take()?;
                let (command, command_pc) = gathering.pending.take()?;
                let (code, comment) = self.store(&command, transfer_syntax, incoming, touched);
                Some((
                    dimse::response(&command, dimse::C_STORE_RSP, code, comment.as_deref()),
                    command_pc,
                    Some(code == status::SUCCESS),
                ))
            }
        }
    }

    /// Stores one instance; returns the C-STORE status and, on failure, a comment.
    fn store(
        &self,
        command: &Command,
        transfer_syntax: Option<&str>,
        incoming: Incoming,
        touched: &mut PatientsTouched,
    ) -> (u16, Option<String>) {
        let uid = &command.sop_instance_uid;
        let refuse = |code: u16, why: String| {
            tracing::warn!(sop_instance = %uid, status = format!("{code:#06x}"), "C-STORE refused: {why}");
            (code, Some(why))
        };
        let Some(ts_uid) = transfer_syntax.filter(|ts| TransferSyntaxRegistry.get(ts).is_some())
        else {
            return refuse(
                status::CANNOT_UNDERSTAND,
                format!("no known transfer syntax for the data set ({transfer_syntax:?})"),
            );
        };
        let received = self
            .storage
            .receive(incoming, &command.sop_class_uid, uid, ts_uid);
        let (instance, temp) = match received {
            Ok(received) => received,
            Err(error @ ReceiveError::Resources(_)) => {
                return refuse(status::OUT_OF_RESOURCES, error.to_string())
            }
            Err(error @ ReceiveError::Unreadable(_)) => {
                return refuse(status::CANNOT_UNDERSTAND, error.to_string())
            }
        };
        let Some(key) = value_of(&instance.header, self.patient_key) else {
            if let Some(temp) = temp {
                let _ = std::fs::remove_file(temp);
            }
            return refuse(
                status::DATA_SET_DOES_NOT_MATCH,
                format!(
                    "no patient key: {} is missing or empty",
                    tag_name(self.patient_key)
                ),
            );
        };
        touched.touch(&self.storage, &key);
        match self.storage.offer(&key, instance, temp.as_deref()) {
            Offer::Stored(inputs) => {
                tracing::debug!(patient = %key, sop_instance = %uid, ?inputs, "stored");
                (status::SUCCESS, None)
            }
            Offer::Rejected(reasons) => {
                let why = reasons
                    .iter()
                    .map(|(input, reason)| format!("input {input:?}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(patient = %key, sop_instance = %uid, "C-STORE refused: accepted by no input ({why})");
                (
                    status::DATA_SET_DOES_NOT_MATCH,
                    Some("accepted by no input".into()),
                )
            }
            Offer::Failed(why) => refuse(
                status::OUT_OF_RESOURCES,
                format!("cannot store for patient {key}: {why}"),
            ),
        }
    }
}

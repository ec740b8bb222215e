//! Connections still negotiating their association: held to the ACSE deadline, and the
//! first to make room when the node is full.
//!
//! dicom-ul's negotiation reads with a per-read time-out only, so a peer that connects and
//! then sends a byte at a time (or nothing) would hold a thread for as long as it likes.
//! One watcher thread shuts down the socket of every connection whose request is not
//! complete by its deadline. And when every connection slot is taken, the connection that
//! has been negotiating longest is shut down to make room: a real peer sends its request
//! within milliseconds of connecting, so the oldest negotiating connection is the idlest.
//! Established associations are never evicted.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the watcher looks at the deadlines.
const TICK: Duration = Duration::from_millis(100);

/// How a watched negotiation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Before its deadline, by itself.
    InTime,
    /// The deadline passed: its socket was shut down.
    Late,
    /// Shut down to make room for a newer connection.
    Evicted,
}

struct Watched {
    since: Instant,
    deadline: Instant,
    socket: TcpStream,
    ended: Ended,
}

/// The connections still negotiating, of one SCP.
#[derive(Default)]
pub(crate) struct Negotiating {
    watched: Mutex<HashMap<u64, Watched>>,
    next: AtomicU64,
}

/// A connection under watch, until [`Negotiating::finish`].
pub(crate) struct Watch {
    id: u64,
}

impl Negotiating {
    /// A watcher and its thread, which ends when the watcher is dropped.
    pub(crate) fn start() -> Arc<Negotiating> {
        let negotiating = Arc::new(Negotiating::default());
        let weak: Weak<Negotiating> = Arc::downgrade(&negotiating);
        let spawned = std::thread::Builder::new()
            .name("negotiating".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(negotiating) = weak.upgrade() else {
                    return;
                };
                negotiating.shut_late();
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the association request watcher: no ACSE deadline");
        }
        negotiating
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches a connection that starts negotiating; `None` if its socket cannot be
    /// shared with the watcher (then only the per-read time-out holds it).
    pub(crate) fn watch(&self, stream: &TcpStream, deadline: Instant) -> Option<Watch> {
        let socket = stream.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.lock().insert(
            id,
            Watched {
                since: Instant::now(),
                deadline,
                socket,
                ended: Ended::InTime,
            },
        );
        Some(Watch { id })
    }

    /// Ends a watch; says how the negotiation ended.
    pub(crate) fn finish(&self, watch: Watch) -> Ended {
        self.lock()
            .remove(&watch.id)
            .map_or(Ended::InTime, |w| w.ended)
    }

    /// Shuts down the connection negotiating longest, if any is still in time; returns
    /// how long it had been negotiating.
    pub(crate) fn evict_oldest(&self) -> Option<Duration> {
        let mut watched = self.lock();
        let oldest = watched
            .values_mut()
            .filter(|w| w.ended == Ended::InTime)
            .min_by_key(|w| w.since)?;
        oldest.ended = Ended::Evicted;
        let _ = oldest.socket.shutdown(std::net::Shutdown::Both);
        Some(oldest.since.elapsed())
    }

    fn shut_late(&self) {
        let now = Instant::now();
        for watched in self.lock().values_mut() {
            if watched.ended == Ended::InTime && watched.deadline <= now {
                watched.ended = Ended::Late;
                let _ = watched.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

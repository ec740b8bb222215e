//! A stream an association runs on: a TCP socket held to a deadline, or TLS over it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How stale a socket time-out may get before it is set again (it is a system call, and
/// TLS reads come 16 KiB at a time): a read overruns its deadline by at most this.
const RESET: Duration = Duration::from_millis(100);

/// A stream an association runs on, whose reads can be held to a deadline.
pub(crate) trait Transport: Read + Write {
    /// Every read from now on fails with `TimedOut` once `deadline` has passed.
    fn set_deadline(&mut self, deadline: Instant);
}

/// A TCP socket whose every read is bounded by a deadline. Under TLS too: one read of a
/// TLS stream may read the socket many times (a record arriving a byte at a time), and each
/// of those reads is held to the same deadline.
pub(crate) struct Socket {
    tcp: TcpStream,
    deadline: Option<Instant>,
    /// When the socket's time-out was last set.
    set_at: Option<Instant>,
}

impl Socket {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Socket {
            tcp,
            deadline: None,
            set_at: None,
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if self.set_at.is_none_or(|at| now.duration_since(at) > RESET) {
                // Never zero: a zero time-out means "block for ever".
                let left = deadline.duration_since(now).max(Duration::from_millis(1));
                self.tcp.set_read_timeout(Some(left))?;
                self.set_at = Some(now);
            }
        }
        self.tcp.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Transport for Socket {
    fn set_deadline(&mut self, deadline: Instant) {
        if self.deadline != Some(deadline) {
            self.deadline = Some(deadline);
            self.set_at = None;
        }
    }
}

impl Transport for rustls::StreamOwned<rustls::ServerConnection, Socket> {
    fn set_deadline(&mut self, deadline: Instant) {
        self.sock.set_deadline(deadline);
    }
}

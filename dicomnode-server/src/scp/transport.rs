//! A stream an association runs on: plain TCP or TLS over it.

use std::io::{Read, Write};
use std::net::TcpStream;

/// A stream an association runs on, and the TCP socket under it (for time-outs).
pub(crate) trait Transport: Read + Write {
    /// The TCP socket.
    fn socket(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Transport for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

//! DICOM network addresses in the form dicom-rs tools use: `AE@host:port`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A DICOM application entity on the network.
///
/// ```
/// use dicomnode_core::Address;
/// let pacs: Address = "PACS@127.0.0.1:4242".parse().unwrap();
/// assert_eq!(pacs.ae_title, "PACS");
/// assert_eq!(pacs.port, 4242);
/// assert_eq!(pacs.to_string(), "PACS@127.0.0.1:4242");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// The AE title to call (1 to 16 characters).
    pub ae_title: String,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Associate over TLS, with these settings; `None`: plain TCP.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// TLS settings of an outgoing association: the CAs trusted to sign the peer's
/// certificate and, for peers that demand one, the node's own certificate and key (PEM
/// files). The peer's certificate must name the address's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientTls {
    /// The trusted CA certificates.
    pub ca: PathBuf,
    /// The node's certificate chain, when the peer verifies clients.
    pub cert: Option<PathBuf>,
    /// The key of that certificate.
    pub key: Option<PathBuf>,
}

impl Address {
    /// The same address, over TLS with `tls`.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Why a text is not an `AE@host:port` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `@` between AE title and host.
    #[error("{0:?} is not AE@host:port: no '@'")]
    NoAeTitle(String),
    /// The AE title is empty or longer than 16 characters.
    #[error("{0:?}: the AE title must have 1 to 16 characters")]
    BadAeTitle(String),
    /// No `:port`, or a port that is not a number from 1 to 65535.
    #[error("{0:?} is not AE@host:port: bad or missing port")]
    BadPort(String),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (ae_title, rest) = text
            .split_once('@')
            .ok_or_else(|| AddressError::NoAeTitle(text.to_string()))?;
        if ae_title.is_empty() || ae_title.len() > 16 {
            return Err(AddressError::BadAeTitle(text.to_string()));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| AddressError::BadPort(text.to_string()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| AddressError::BadPort(text.to_string()))?;
        if host.is_empty() {
            return Err(AddressError::BadPort(text.to_string()));
        }
        Ok(Address {
            tls: None,
            ae_title: ae_title.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.ae_title, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!("PACS127.0.0.1:4242".parse::<Address>().is_err());
        assert!("@h:1".parse::<Address>().is_err());
        assert!("A@h".parse::<Address>().is_err());
        assert!("A@h:0".parse::<Address>().is_err());
        assert!("A@:5".parse::<Address>().is_err());
        let v6: Address = "A@[::1]:104".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "A@[::1]:104");
    }
}

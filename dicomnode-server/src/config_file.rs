//! `--config node.toml`: a node's settings in a file. Top-level keys are the long flags of
//! [`NodeArgs`](crate::cli::NodeArgs) with underscores (`port = 11112`,
//! `ae_title = "CT_NODE"`); `[destinations]` is an address book (`pacs = "AE@host:port"`);
//! `[pipeline]` is the pipeline's own settings, deserialized into its struct. Flags and
//! `DICOMNODE_*` environment variables win over the file.
//!
//! ```toml
//! port = 11112
//! ae_title = "CT_NODE"
//! data_dir = "/var/lib/ct-node"
//!
//! [destinations]
//! pacs = "PACS@pacs.example.org:104"
//!
//! [pipeline]
//! threshold = 0.5
//! ```

use dicomnode_core::Address;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value that is not what it should be.
    #[error("{path}, line {line}: {key}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key's line (1-based).
        line: usize,
        /// The key.
        key: String,
        /// What was expected.
        message: String,
    },
    /// A key that is no setting.
    #[error("{path}, line {line}: unknown key {key:?}; the settings are: {known}")]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The key's line (1-based).
        line: usize,
        /// The key.
        key: String,
        /// The keys there are.
        known: String,
    },
    /// `[pipeline]` does not fit the pipeline's struct.
    #[error("{path}: [pipeline]: {source}")]
    Pipeline {
        /// The file.
        path: PathBuf,
        /// The deserializer's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A destination is named that the address book does not hold.
    #[error("no destination {name:?}{}: give AE@host:port or a name from [destinations]", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    NoDestination {
        /// The name.
        name: String,
        /// The file, if one was given.
        path: Option<PathBuf>,
    },
}

/// A configuration file, read.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
    table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            text,
            table,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line (1-based) where `key` is set, in the table `section` (`None`: top level).
    pub(crate) fn line_of(&self, section: Option<&str>, key: &str) -> usize {
        let mut in_section = section.is_none();
        for (number, line) in self.text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                let name = trimmed
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("");
                in_section = section == Some(name.trim());
                continue;
            }
            if in_section {
                if let Some(rest) = trimmed.strip_prefix(key) {
                    let rest = rest.trim_start();
                    if rest.starts_with('=') {
                        return number + 1;
                    }
                }
            }
        }
        0
    }

    /// The top-level settings (not tables), with their lines.
    pub(crate) fn settings(&self) -> Vec<(String, &toml::Value, usize)> {
        self.table
            .iter()
            .filter(|(_, v)| !v.is_table())
            .map(|(k, v)| (k.clone(), v, self.line_of(None, k)))
            .collect()
    }

    /// A value error at `key`.
    pub(crate) fn value_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            path: self.path.clone(),
            line: self.line_of(None, key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// An unknown-key error at `key`.
    pub(crate) fn unknown(&self, key: &str, known: &[String]) -> ConfigError {
        ConfigError::Unknown {
            path: self.path.clone(),
            line: self.line_of(None, key),
            key: key.to_string(),
            known: known.join(", "),
        }
    }

    /// `[pipeline]` deserialized into `T`; `None` when the file has no such table. Errors
    /// give the file's own line and column.
    pub fn pipeline<T: DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        if !self.table.contains_key("pipeline") {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct Only<T> {
            pipeline: T,
        }
        toml::from_str::<Only<T>>(&self.text)
            .map(|o| Some(o.pipeline))
            .map_err(|source| ConfigError::Pipeline {
                path: self.path.clone(),
                source,
            })
    }

    /// The address book, `[destinations]`: name to address.
    pub fn destinations(&self) -> Result<BTreeMap<String, Address>, ConfigError> {
        let mut book = BTreeMap::new();
        let Some(table) = self.table.get("destinations") else {
            return Ok(book);
        };
        let Some(table) = table.as_table() else {
            return Err(self.value_error(
                "destinations",
                "expected a table of name = \"AE@host:port\"",
            ));
        };
        for (name, value) in table {
            let error = |message: String| ConfigError::Value {
                path: self.path.clone(),
                line: self.line_of(Some("destinations"), name),
                key: format!("destinations.{name}"),
                message,
            };
            // `name = "AE@host:port"`, or a table with `address` and TLS settings.
            let (text, tls) = match value {
                toml::Value::String(text) => (text.clone(), None),
                toml::Value::Table(entry) => {
                    let field = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_string);
                    let text = field("address").ok_or_else(|| {
                        error("a destination table needs address = \"AE@host:port\"".into())
                    })?;
                    let tls = match field("tls_ca") {
                        Some(ca) => Some(dicomnode_core::ClientTls {
                            ca: ca.into(),
                            cert: field("tls_cert").map(Into::into),
                            key: field("tls_key").map(Into::into),
                        }),
                        None if entry.contains_key("tls_cert") || entry.contains_key("tls_key") => {
                            return Err(error("tls_cert and tls_key need tls_ca".into()));
                        }
                        None => None,
                    };
                    (text, tls)
                }
                other => {
                    return Err(error(format!(
                        "expected \"AE@host:port\" or a table with address and tls_ca, tls_cert, tls_key; found {other}"
                    )))
                }
            };
            let address = text
                .parse::<Address>()
                .map_err(|e| error(format!("expected \"AE@host:port\": {e}")))?;
            book.insert(
                name.clone(),
                match tls {
                    Some(tls) => address.with_tls(tls),
                    None => address,
                },
            );
        }
        Ok(book)
    }

    /// The file's tables other than the settings, as TOML (for `--print-config`).
    pub(crate) fn tables_text(&self) -> String {
        let tables: toml::Table = self
            .table
            .iter()
            .filter(|(_, v)| v.is_table())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        toml::to_string(&tables).unwrap_or_default()
    }
}

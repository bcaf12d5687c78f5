//! Configuration errors. Whenever the problem sits in a document, the error names the file,
//! the line and column, and the field path, in the `file:line:column: field: message` shape
//! editors and terminals turn into links.

use std::fmt;
use std::path::PathBuf;

/// A place in a configuration file: 1-based line and column, and the field path
/// (`spec.mtls.mode`, `spec.ports[1].port`; empty for YAML syntax errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded or planned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A directory without any `*.yaml` / `*.yml` file.
    #[error("{}: no *.yaml or *.yml files", path.display())]
    NoFiles { path: PathBuf },
    /// A document is malformed or contradicts another one.
    #[error("{location} {message}")]
    Invalid { location: Location, message: String },
    /// `--workload` names no Workload of the configuration.
    #[error("unknown workload {name:?} (known: {known})")]
    UnknownWorkload { name: String, known: String },
    /// The workload is declared `sidecar: false`, so no sidecar runs beside it.
    #[error("workload {0:?} is declared `sidecar: false`: it has no sidecar and no plan")]
    NoSidecar(String),
}

impl ConfigError {
    /// The location of the error, if it sits in a document.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }
}

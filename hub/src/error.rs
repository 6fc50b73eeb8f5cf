//! The hub library's typed errors that cross module boundaries.
//!
//! Message-level refusals are [`crate::handler::HandleError`]; operator commands fail with
//! [`AdminError`]. Every `Display` text says what failed and, where there is one, what to do.

use thiserror::Error;

pub use crate::store::StoreError;

/// The configuration file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML for the hub configuration.
    #[error("config is not valid: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("config value is invalid: {0}")]
    Invalid(String),
}

/// An operator command failed.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Input the operator gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The thing named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// Not possible in the current state.
    #[error("{0}")]
    WrongState(String),
}

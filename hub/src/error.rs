//! The hub library's typed errors that cross module boundaries.
//!
//! Message-level refusals are [`crate::handler::HandleError`]; operator commands fail with
//! [`AdminError`]. Every `Display` text says what failed and, where there is one, what to do.

use thiserror::Error;

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

/// The database failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// A row holds a value this version cannot read (hand-edited or corrupted database).
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
    /// A posting would leave a customer account negative: a bug upstream, refused here.
    #[error("posting would overdraw ledger account {0}")]
    Overdraft(String),
    /// A posting whose entries do not sum to zero: a bug, refused here.
    #[error("unbalanced posting {0}")]
    Unbalanced(String),
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

impl From<rusqlite::Error> for AdminError {
    fn from(e: rusqlite::Error) -> Self {
        AdminError::Store(StoreError::Sqlite(e))
    }
}

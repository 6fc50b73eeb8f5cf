//! How the database fails, as every storage function reports it.

use thiserror::Error;

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

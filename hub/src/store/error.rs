//! How the database fails, as every storage function reports it.

use thiserror::Error;

use super::sql::SqlError;

/// The database failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(SqlError),
    /// PostgreSQL: the transaction lost a race with another hub instance's (serialization
    /// failure, deadlock) and was rolled back; running it again from the start is correct.
    #[error("transaction conflict, rolled back: {0}")]
    Conflict(SqlError),
    /// PostgreSQL: the connection to the server is gone (restart, network). A transaction
    /// that failed before its `COMMIT` did not happen.
    #[error("database unavailable: {0}")]
    Unavailable(SqlError),
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

impl StoreError {
    /// Whether running the whole transaction again may succeed: a conflict with another
    /// instance, or a connection lost before the commit.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_))
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        if e.is_conflict() {
            StoreError::Conflict(e)
        } else if e.is_connection() {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(SqlError::Sqlite(e))
    }
}

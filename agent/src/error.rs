//! The agent's typed errors, worded for the operator who reads them in the log.

use std::path::PathBuf;

use qrcash_protocol::{EnvelopeError, KeyError, ReplayError};
use thiserror::Error;

/// A failure of the agent's own database (journal, orders, outbox).
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("agent database: {0}; check the disk and the file's permissions")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("agent database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored value does not parse.
    #[error("agent database holds a damaged {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The outbox has reached its configured bound; only critical messages (dispense
    /// reports and order refusals) are still accepted.
    #[error(
        "outbox full ({messages} messages, {bytes} bytes; limits {max_messages} / {max_bytes}): the hub has not acknowledged for a long time; check the link"
    )]
    OutboxFull {
        /// Messages queued.
        messages: u64,
        /// Bytes queued.
        bytes: u64,
        /// Configured message limit.
        max_messages: u64,
        /// Configured byte limit.
        max_bytes: u64,
    },
    /// The order was already started once; it is never dispensed again.
    #[error("order {0} was already started on this ATM; it is never dispensed twice")]
    OrderAlreadyStarted(String),
}

/// A message from the hub that the agent refused (logged and journalled, never acted on).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InboundError {
    /// Size, JWS, signature, claims or addressing failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Replayed, expired, stale or future-dated.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Arrived on a topic other than this ATM's down-link.
    #[error("message on unexpected topic {0}")]
    WrongTopic(String),
}

impl From<qrcash_protocol::receive::ReceiveError> for InboundError {
    fn from(e: qrcash_protocol::receive::ReceiveError) -> Self {
        match e {
            qrcash_protocol::receive::ReceiveError::Envelope(e) => InboundError::Envelope(e),
            qrcash_protocol::receive::ReceiveError::Replay(e) => InboundError::Replay(e),
        }
    }
}

/// Anything that stops the agent from starting or running.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A public key file that is not a JWK.
    #[error("key file {path}: {detail}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Broker settings.
    #[error(transparent)]
    Link(#[from] qrcash_io::LinkError),
    /// The configuration is unusable.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The dispenser failed at start-up recovery.
    #[error("dispenser: {0}")]
    Dispenser(#[from] qrcash_hardware::dispenser::DispenserError),
    /// A task ended unexpectedly.
    #[error("agent task failed: {0}")]
    Task(String),
}

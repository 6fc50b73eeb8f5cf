//! The phone client's typed errors, each worded for the person running the app or CLI.

use std::path::PathBuf;
use std::time::Duration;

use qrcash_protocol::messages::RejectReason;
use qrcash_protocol::{EnvelopeError, KeyError, ReplayError};
use thiserror::Error;

/// A push from the hub was not accepted (it is dropped and logged, never acted on).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PushError {
    /// Size, JWS, signature, claims or addressing check failed.
    #[error("push refused: {0}")]
    Envelope(#[from] EnvelopeError),
    /// Replayed, expired, stale or future-dated.
    #[error("push refused: {0}")]
    Replay(#[from] ReplayError),
}

impl From<qrcash_protocol::receive::ReceiveError> for PushError {
    fn from(e: qrcash_protocol::receive::ReceiveError) -> Self {
        match e {
            qrcash_protocol::receive::ReceiveError::Envelope(e) => PushError::Envelope(e),
            qrcash_protocol::receive::ReceiveError::Replay(e) => PushError::Replay(e),
        }
    }
}

/// Anything the phone client can fail at.
#[derive(Debug, Error)]
pub enum PhoneError {
    /// The device key or the hub key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A password or PIN could not be sealed to the hub (empty, or longer than 256 bytes).
    #[error("cannot seal the secret: {0}")]
    Seal(#[from] qrcash_protocol::SealError),
    /// A file of the device's state directory could not be read or written.
    #[error("phone state file {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file of the state directory has unexpected contents.
    #[error(
        "phone state file {path} is damaged: {detail}; remove it or re-run `qrcash-phone init`"
    )]
    StoreFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The configuration cannot work.
    #[error("phone configuration: {0}")]
    Config(String),
    /// The broker settings are unusable.
    #[error(transparent)]
    Link(#[from] qrcash_io::LinkError),
    /// The MQTT client refused a request (its event loop is gone).
    #[error("MQTT client: {0}")]
    Mqtt(String),
    /// Nothing arrived in time.
    #[error("no {waiting_for} within {after:?}; check the broker and the hub")]
    Timeout {
        /// What the client was waiting for.
        waiting_for: String,
        /// How long it waited.
        after: Duration,
    },
    /// Nothing usable arrived in time, but messages did arrive and were refused: the cause
    /// is on this side (most often a hub key this phone does not trust).
    #[error(
        "no {waiting_for} within {after:?}: {refused} message(s) arrived and were refused, the last because {last}"
    )]
    Refused {
        /// What the client was waiting for.
        waiting_for: String,
        /// How long it waited.
        after: Duration,
        /// How many were refused while it waited.
        refused: u64,
        /// Why the last one was.
        last: String,
    },
    /// The hub refused the request; nothing changed.
    #[error("the hub refused the request: {message} ({reason:?})")]
    Rejected {
        /// Machine-readable reason.
        reason: RejectReason,
        /// The hub's explanation.
        message: String,
    },
    /// The hub answered with something this request does not expect.
    #[error("unexpected answer from the hub: {0}")]
    Unexpected(String),
    /// The connection task ended (client shut down).
    #[error("the phone client is shut down")]
    Closed,
}

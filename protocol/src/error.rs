//! Typed errors of every layer, each with a message a person understands.
//!
//! Receivers turn these into a [`crate::RejectReason`] for the sender and an audit entry; the
//! `Display` texts are written for an operator reading that audit log.

use thiserror::Error;

/// A JWS compact serialization could not be parsed or verified.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JwsError {
    /// Not three base64url segments separated by dots.
    #[error("not a JWS compact serialization: expected three dot-separated base64url parts")]
    NotCompact,
    /// One segment is not canonical unpadded base64url.
    #[error("the JWS {part} is not valid base64url")]
    Base64 {
        /// Which segment: `header`, `payload` or `signature`.
        part: &'static str,
    },
    /// The protected header is not the JSON object we accept.
    #[error("the JWS protected header is invalid: {0}")]
    Header(String),
    /// Any algorithm but `EdDSA`, including `none`.
    #[error("the JWS algorithm {0:?} is not accepted: only \"EdDSA\" (Ed25519) is")]
    UnsupportedAlgorithm(String),
    /// The signature segment is not 64 bytes.
    #[error("the JWS signature has {0} bytes; an Ed25519 signature has 64")]
    SignatureLength(usize),
    /// Strict Ed25519 verification failed.
    #[error("the JWS signature does not verify with the sender's key")]
    BadSignature,
}

/// A key or key file could not be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private key file that group or others may read.
    #[error(
        "private key file {path} has permissions {mode:04o}; it must be readable by its owner only: run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The JWK is not an OKP/Ed25519 key we can use.
    #[error("invalid Ed25519 JWK: {0}")]
    InvalidJwk(String),
    /// The public key is a small-order point, which strict verification would never accept.
    #[error("weak Ed25519 public key refused")]
    WeakKey,
}

/// A sealed message could not be opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Larger than the receiver's limit; refused before any parsing.
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not UTF-8 text.
    #[error("message is not UTF-8 text")]
    NotText,
    /// The JWS layer failed.
    #[error(transparent)]
    Jws(#[from] JwsError),
    /// The `typ` header is not ours.
    #[error("JWS type {0:?} is not a qrcash message")]
    WrongType(Option<String>),
    /// No `kid` in the header.
    #[error("the JWS header names no key (kid)")]
    MissingKeyId,
    /// No key known under that `kid`.
    #[error("no key is known with id {0}")]
    UnknownKey(String),
    /// The claims are not valid JSON for the expected message set.
    #[error("message claims are invalid: {0}")]
    Claims(String),
    /// `aud` names another receiver.
    #[error("message is addressed to {got:?}, not to {expected:?}")]
    WrongAudience {
        /// Who should have received it.
        expected: String,
        /// Who it was addressed to.
        got: String,
    },
    /// `iss` is not the identity the transport says the sender has.
    #[error("message issuer {got:?} does not match the sender {expected:?}")]
    WrongIssuer {
        /// Identity from the topic (or broker).
        expected: String,
        /// The `iss` claim.
        got: String,
    },
}

/// A message failed the anti-replay rules.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReplayError {
    /// `seq` is 0: sequence numbers start at 1.
    #[error("sequence number 0 is not allowed: sequence numbers start at 1")]
    ZeroSeq,
    /// This `seq` was already accepted from this sender.
    #[error("sequence number {seq} was already accepted from this sender (replay)")]
    Replayed {
        /// The repeated sequence number.
        seq: u64,
    },
    /// `seq` is below the sliding window, so it cannot be told apart from a replay.
    #[error("sequence number {seq} is too old: the sender is at {highest}, window {window}")]
    TooOld {
        /// The message's sequence number.
        seq: u64,
        /// The highest accepted sequence number.
        highest: u64,
        /// The window size.
        window: u64,
    },
    /// `iat` lies further in the future than the allowed clock skew.
    #[error("message is dated {ahead_s} s in the future (allowed skew {skew_s} s)")]
    FutureDated {
        /// Seconds ahead of the receiver's clock.
        ahead_s: u64,
        /// The allowed skew.
        skew_s: u64,
    },
    /// `iat` lies further in the past than the allowed age.
    #[error("message was issued {age_s} s ago; at most {max_age_s} s is accepted")]
    Stale {
        /// Age in seconds.
        age_s: u64,
        /// The limit.
        max_age_s: u64,
    },
    /// `exp` has passed.
    #[error("message expired {ago_s} s ago")]
    Expired {
        /// Seconds since expiry.
        ago_s: u64,
    },
    /// `exp` is not after `iat`.
    #[error("message expiry {exp} is not after its issue time {iat}")]
    BadLifetime {
        /// Issue time.
        iat: u64,
        /// Expiry.
        exp: u64,
    },
}

/// A QR code token could not be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a qrcash token at all (wrong prefix or length): cheap early rejection.
    #[error("not a qrcash code")]
    NotAToken,
    /// A version this implementation does not know.
    #[error("qrcash code version {0} is not supported")]
    UnsupportedVersion(u8),
    /// Not issued by a hub key this verifier knows.
    #[error("qrcash code was issued by an unknown key")]
    UnknownIssuer,
    /// The signature does not verify.
    #[error("qrcash code signature is invalid (forged or damaged code)")]
    BadSignature,
    /// The code has expired.
    #[error("qrcash code expired {ago_s} s ago")]
    Expired {
        /// Seconds since expiry.
        ago_s: u64,
    },
}

//! The qrcash wire contract: signed envelopes, message catalogue, QR code tokens and topics.
//!
//! Everything a hub, an ATM agent, a phone app or a third-party implementation needs to
//! talk to the others lives here, and nothing else does: no I/O, no clock,
//! no async runtime. `docs/protocol.md` is the prose form of this crate; a test parses every
//! example in that document with these types so the two cannot drift apart.
//!
//! The layers, bottom up:
//! - [`jws`]: JWS compact serialization (RFC 7515) restricted to `EdDSA` over Ed25519
//!   (RFC 8037), with strict verification.
//! - [`keys`]: Ed25519 keys as JWKs, `kid` as the RFC 7638 thumbprint.
//! - [`envelope`]: [`Claims`] (`iss`, `aud`, `iat`, `exp`, `jti`, `seq`, `re`, `msg`) sealed
//!   into and opened from a JWS, with the size limit checked before any parsing.
//! - [`replay`]: [`ReplayGuard`], the pure anti-replay logic (sequence window, clock skew,
//!   expiry) whose state the caller persists.
//! - [`messages`]: the typed catalogue, one enum per direction and topic.
//! - [`token`]: the compact hub-signed QR code token an ATM verifies offline.
//! - [`enrol`]: enrolment of an ATM by a one-time code (proofs, code format).
//! - [`keyset`]: the hub's key set, endorsed by the keys devices trust, for key rotation.
//! - [`receive`]: every acceptance check for messages from one trusted sender.
//! - [`topics`]: the MQTT topic tree, in one place.

#![warn(missing_docs)]

pub mod clock;
pub mod enrol;
pub mod envelope;
pub mod error;
pub mod geo;
pub mod ids;
pub mod jws;
pub mod keys;
pub mod keyset;
pub mod messages;
pub mod money;
pub mod receive;
pub mod replay;
pub mod sealed;
pub mod token;
pub mod topics;

pub use clock::{Clock, ManualClock, SystemClock};
pub use envelope::{Claims, Opened, Sealed, Signer};
pub use error::{EnvelopeError, JwsError, KeyError, ReplayError, TokenError};
pub use geo::Position;
pub use ids::{OrderId, TxId};
pub use keys::{KeyId, PrivateKey, PublicJwk, PublicKey};
pub use messages::{AtmDown, AtmUp, PhonePush, PhoneUp, RejectReason};
pub use money::{Amount, Currency};
pub use replay::{ReplayConfig, ReplayGuard, SenderWindow};
pub use sealed::{SealError, SealedSecret, SecretField, SecretSealer};
pub use token::CodeToken;

/// Largest message accepted from a device (phone or ATM up-link), in bytes. Checked before
/// any decoding so an oversized payload costs nothing but the length comparison.
pub const MAX_UPLINK_BYTES: usize = 16 * 1024;

/// Largest message a device accepts from the hub, in bytes. Larger than the up-link limit
/// because `CodeIssued` carries PNG and SVG renderings of the QR code.
pub const MAX_DOWNLINK_BYTES: usize = 64 * 1024;

/// Protocol version carried in topic names and the JWS `typ` header.
pub const PROTOCOL_VERSION: &str = "v1";

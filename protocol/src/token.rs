//! The QR code token: a compact hub-signed proof that a withdrawal was registered.
//!
//! The phone displays it; the ATM reads it through its camera and can verify it offline
//! with the hub's public key, so a forged or expired code is refused at once, before any
//! network round trip. Format (all integers big-endian):
//!
//! ```text
//! "QC1." BASE64URL( version=1 (1 byte) | tx_id (16) | expires_at (8, Unix s)
//!                   | issuer (first 8 bytes of the hub key's RFC 7638 thumbprint)
//!                   | Ed25519 signature (64) )
//! signature over: "qrcash/v1/code" | version | tx_id | expires_at | issuer
//! ```
//!
//! 97 bytes encode to 130 characters, 134 with the prefix: a version 8 QR code at error
//! correction M (the limit is version 10). The token is a bearer credential for nothing: it
//! only names a transaction that still needs the phone's signed confirmation, and the hub
//! accepts it once.

use ed25519_dalek::{Signature, Signer as _};

use crate::error::TokenError;
use crate::ids::TxId;
use crate::jws::{b64, unb64};
use crate::keys::{KeyId, PrivateKey, PublicKey};

/// The text every token starts with.
pub const PREFIX: &str = "QC1.";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"qrcash/v1/code";
const SIGNED_LEN: usize = 1 + 16 + 8 + 8;
const RAW_LEN: usize = SIGNED_LEN + 64;
/// Length of a token's text.
pub const TEXT_LEN: usize = PREFIX.len() + (RAW_LEN * 4).div_ceil(3);

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeToken {
    /// The registered withdrawal.
    pub tx_id: TxId,
    /// When the code stops being accepted, Unix seconds.
    pub expires_at: u64,
    /// First 8 bytes of the issuing hub key's thumbprint.
    pub issuer: [u8; 8],
}

/// Cheap shape check for a scanner: prefix and length only, no decoding. Lets a camera loop
/// drop QR codes that are not ours before spending any time on them.
pub fn looks_like_token(text: &str) -> bool {
    text.len() == TEXT_LEN && text.starts_with(PREFIX)
}

fn issuer_of(key: &PublicKey) -> [u8; 8] {
    let mut out = [0u8; 8];
    if let Some(d) = key.kid().digest() {
        out.copy_from_slice(&d[..8]);
    }
    out
}

impl CodeToken {
    /// Whether the key with id `kid` is the one this token names as its issuer.
    pub fn issued_by(&self, kid: &KeyId) -> bool {
        kid.digest().is_some_and(|d| d[..8] == self.issuer)
    }

    /// Issues the token text for `tx_id`, signed by the hub key.
    pub fn issue(key: &PrivateKey, tx_id: TxId, expires_at: u64) -> String {
        let token = CodeToken {
            tx_id,
            expires_at,
            issuer: issuer_of(key.public()),
        };
        let mut raw = token.signed_bytes().to_vec();
        let sig = key.signing_key().sign(&[DOMAIN, &raw].concat());
        raw.extend_from_slice(&sig.to_bytes());
        format!("{PREFIX}{}", b64(&raw))
    }

    fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[0] = VERSION;
        b[1..17].copy_from_slice(&self.tx_id.0);
        b[17..25].copy_from_slice(&self.expires_at.to_be_bytes());
        b[25..33].copy_from_slice(&self.issuer);
        b
    }

    /// Decodes without verifying: only to look up the issuer key.
    pub fn parse_unverified(text: &str) -> Result<(CodeToken, Signature), TokenError> {
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::NotAToken)?;
        let raw = unb64(body).ok_or(TokenError::NotAToken)?;
        if raw.first().is_some_and(|v| *v != VERSION) {
            return Err(TokenError::UnsupportedVersion(raw[0]));
        }
        if raw.len() != RAW_LEN {
            return Err(TokenError::NotAToken);
        }
        let mut tx = [0u8; 16];
        tx.copy_from_slice(&raw[1..17]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[17..25]);
        let mut issuer = [0u8; 8];
        issuer.copy_from_slice(&raw[25..33]);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&raw[33..]);
        Ok((
            CodeToken {
                tx_id: TxId(tx),
                expires_at: u64::from_be_bytes(exp),
                issuer,
            },
            Signature::from_bytes(&sig),
        ))
    }

    /// Verifies the signature against the trusted hub keys (several during a key rotation).
    /// Does not look at the expiry: see [`CodeToken::check_expiry`].
    pub fn verify_signature(text: &str, hub_keys: &[PublicKey]) -> Result<CodeToken, TokenError> {
        let (token, sig) = Self::parse_unverified(text)?;
        let key = hub_keys
            .iter()
            .find(|k| issuer_of(k) == token.issuer)
            .ok_or(TokenError::UnknownIssuer)?;
        key.verifying_key()
            .verify_strict(&[DOMAIN, &token.signed_bytes()].concat(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(token)
    }

    /// Fails if the code has expired at `now` (Unix seconds).
    pub fn check_expiry(&self, now: u64) -> Result<(), TokenError> {
        if now >= self.expires_at {
            return Err(TokenError::Expired {
                ago_s: now - self.expires_at,
            });
        }
        Ok(())
    }

    /// Signature and expiry in one call: what an ATM runs on every code it reads.
    pub fn verify(text: &str, hub_keys: &[PublicKey], now: u64) -> Result<CodeToken, TokenError> {
        let token = Self::verify_signature(text, hub_keys)?;
        token.check_expiry(now)?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn issue_and_verify() {
        let hub = PrivateKey::generate();
        let tx = TxId::random();
        let text = CodeToken::issue(&hub, tx, NOW + 600);
        assert_eq!(text.len(), TEXT_LEN);
        assert!(looks_like_token(&text));
        let t = CodeToken::verify(&text, &[hub.public().clone()], NOW).unwrap();
        assert_eq!(t.tx_id, tx);
        assert_eq!(t.expires_at, NOW + 600);
    }

    #[test]
    fn expired_forged_and_foreign_codes_are_refused() {
        let hub = PrivateKey::generate();
        let keys = [hub.public().clone()];
        let text = CodeToken::issue(&hub, TxId::random(), NOW);
        assert_eq!(
            CodeToken::verify(&text, &keys, NOW).unwrap_err(),
            TokenError::Expired { ago_s: 0 }
        );
        // Signed by another key that claims our issuer id: the signature fails.
        let mallory = PrivateKey::generate();
        let (t, _) = CodeToken::parse_unverified(&text).unwrap();
        let mut raw = t.signed_bytes().to_vec();
        raw.extend_from_slice(
            &mallory
                .signing_key()
                .sign(&[DOMAIN, &raw].concat())
                .to_bytes(),
        );
        let forged = format!("{PREFIX}{}", b64(&raw));
        assert_eq!(
            CodeToken::verify_signature(&forged, &keys).unwrap_err(),
            TokenError::BadSignature
        );
        // Issued by an unknown hub.
        let other = CodeToken::issue(&mallory, TxId::random(), NOW + 60);
        assert_eq!(
            CodeToken::verify(&other, &keys, NOW).unwrap_err(),
            TokenError::UnknownIssuer
        );
        // Not ours at all.
        for junk in ["https://example.com", "QC1.", "QC1.!!!!", ""] {
            assert_eq!(
                CodeToken::verify(junk, &keys, NOW).unwrap_err(),
                TokenError::NotAToken
            );
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let hub = PrivateKey::generate();
        let keys = [hub.public().clone()];
        let text = CodeToken::issue(&hub, TxId::random(), NOW + 600);
        let raw = unb64(&text[PREFIX.len()..]).unwrap();
        for i in 0..raw.len() * 8 {
            let mut r = raw.clone();
            r[i / 8] ^= 1 << (i % 8);
            let t = format!("{PREFIX}{}", b64(&r));
            assert!(
                CodeToken::verify(&t, &keys, NOW).is_err(),
                "bit {i} flip accepted"
            );
        }
    }

    #[test]
    fn encodes_as_a_qr_code_of_version_10_or_less_at_level_m() {
        let text = CodeToken::issue(&PrivateKey::generate(), TxId::random(), u64::MAX);
        let code = qrcode::QrCode::with_error_correction_level(&text, qrcode::EcLevel::M)
            .expect("token fits a QR code");
        match code.version() {
            qrcode::Version::Normal(v) => assert!(v <= 10, "version {v}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

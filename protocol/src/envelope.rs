//! Claims sealed into a JWS, and the checks a receiver runs before trusting one.
//!
//! Opening a message is, in this order and never otherwise: size limit (before any
//! decoding), JWS parse (`alg` must be `EdDSA`), `typ` and `kid` present, strict signature
//! verification with the key the receiver already trusts under that `kid`, then the claims
//! as JSON with unknown fields rejected, then addressing (`aud`, `iss`). Freshness and
//! replay ([`crate::replay`]) come last, only for messages whose signature held, so a forger
//! cannot burn sequence numbers.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::EnvelopeError;
use crate::ids::random_bytes;
use crate::jws::{self, Compact, Header, b64};
use crate::keys::{KeyId, PrivateKey, PublicKey};

/// The JWS `typ` of every qrcash message.
pub const TYP: &str = "qrcash.v1+jws";

/// The claims every message carries around its typed body `msg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims<B> {
    /// Sender id: the hub id, an ATM id or a phone device id.
    pub iss: String,
    /// Intended receiver id.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Unique message id (base64url, 16 random bytes). Acks and replies name it.
    pub jti: String,
    /// Per-sender strictly increasing counter, persisted by the sender across restarts.
    pub seq: u64,
    /// The `jti` of the message this one answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<String>,
    /// The typed message.
    pub msg: B,
}

/// A fresh random message id.
pub fn new_jti() -> String {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    b64(&b)
}

impl<B> Claims<B> {
    /// Claims from `iss` to `aud`, issued at `now` (Unix seconds), valid for `ttl`.
    pub fn new(
        iss: impl Into<String>,
        aud: impl Into<String>,
        seq: u64,
        now: u64,
        ttl: Duration,
        msg: B,
    ) -> Self {
        Claims {
            iss: iss.into(),
            aud: aud.into(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs().max(1)),
            jti: new_jti(),
            seq,
            re: None,
            msg,
        }
    }

    /// Marks these claims as the answer to message `jti`.
    pub fn in_reply_to(mut self, jti: impl Into<String>) -> Self {
        self.re = Some(jti.into());
        self
    }

    /// Checks that the message is addressed to `me` and, when the transport tells who sent
    /// it (the topic's id), that `iss` says the same.
    pub fn check_addressing(&self, me: &str, sender: Option<&str>) -> Result<(), EnvelopeError> {
        if self.aud != me {
            return Err(EnvelopeError::WrongAudience {
                expected: me.to_owned(),
                got: self.aud.clone(),
            });
        }
        match sender {
            Some(s) if s != self.iss => Err(EnvelopeError::WrongIssuer {
                expected: s.to_owned(),
                got: self.iss.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// A sender's identity and key: seals claims into signed messages.
#[derive(Debug, Clone)]
pub struct Signer {
    id: String,
    key: PrivateKey,
}

impl Signer {
    /// A signer with sender id `id` (the `iss` it will use) and its private key.
    pub fn new(id: impl Into<String>, key: PrivateKey) -> Self {
        Signer { id: id.into(), key }
    }

    /// The sender id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The signing key's id.
    pub fn kid(&self) -> &KeyId {
        self.key.kid()
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Signs `claims` into a JWS compact serialization.
    ///
    /// # Panics
    /// In debug builds, if `claims.iss` is not this signer's id: that is a programming error.
    pub fn seal<B: Serialize>(&self, claims: &Claims<B>) -> String {
        debug_assert_eq!(claims.iss, self.id, "sealing claims of another sender");
        // Our message types serialize infallibly (no maps with non-string keys, no floats
        // that JSON cannot hold except positions, which are validated on input).
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let header = Header::eddsa(Some(self.key.kid().as_str()), Some(TYP));
        jws::sign(self.key.signing_key(), &header, &payload)
    }
}

/// A message that passed the size limit and parses as a qrcash JWS, not yet verified.
#[derive(Debug, Clone)]
pub struct Sealed<'a> {
    compact: Compact<'a>,
    kid: KeyId,
}

impl<'a> Sealed<'a> {
    /// Checks the size limit first, then parses the JWS and its header.
    pub fn parse(bytes: &'a [u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                max: max_bytes,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| EnvelopeError::NotText)?;
        let compact = Compact::parse(text.trim_end())?;
        if compact.header.typ.as_deref() != Some(TYP) {
            return Err(EnvelopeError::WrongType(compact.header.typ.clone()));
        }
        let kid = KeyId::from_wire(
            compact
                .header
                .kid
                .as_deref()
                .ok_or(EnvelopeError::MissingKeyId)?,
        );
        Ok(Sealed { compact, kid })
    }

    /// The key id the sender claims to have signed with.
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The claims without verification: only for finding the key to verify with (e.g. a
    /// first `Login` carries its own device key). Never act on them.
    pub fn peek<B: DeserializeOwned>(&self) -> Result<Claims<B>, EnvelopeError> {
        decode_claims(&self.compact.payload_unverified())
    }

    /// The `jti` of a message whose signature verifies with `key` although its claims do not
    /// decode (a typo, `10000.0` for an integer, an unknown member): lets a receiver answer
    /// the authentic sender `malformed` about exactly that message. `None` when the
    /// signature fails or the payload has no string `jti` of at most 64 characters.
    pub fn authentic_jti(&self, key: &PublicKey) -> Option<String> {
        if key.kid() != &self.kid {
            return None;
        }
        let payload = self.compact.verify(key.verifying_key()).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&payload).ok()?;
        let jti = value.get("jti")?.as_str()?;
        (!jti.is_empty() && jti.chars().count() <= 64).then(|| jti.to_owned())
    }

    /// Verifies with `key` (which must be the key named by `kid`) and decodes the claims.
    pub fn open<B: DeserializeOwned>(&self, key: &PublicKey) -> Result<Claims<B>, EnvelopeError> {
        if key.kid() != &self.kid {
            return Err(EnvelopeError::UnknownKey(self.kid.to_string()));
        }
        let payload = self.compact.verify(key.verifying_key())?;
        decode_claims(&payload)
    }
}

fn decode_claims<B: DeserializeOwned>(payload: &[u8]) -> Result<Claims<B>, EnvelopeError> {
    serde_json::from_slice(payload).map_err(|e| EnvelopeError::Claims(e.to_string()))
}

/// A message whose signature verified.
#[derive(Debug, Clone)]
pub struct Opened<B> {
    /// The verified claims.
    pub claims: Claims<B>,
    /// The key that signed them.
    pub kid: KeyId,
}

/// Parses, resolves the key by `kid`, verifies and decodes in one call.
pub fn open<B: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
    resolve: impl FnOnce(&KeyId) -> Option<PublicKey>,
) -> Result<Opened<B>, EnvelopeError> {
    let sealed = Sealed::parse(bytes, max_bytes)?;
    let key =
        resolve(sealed.kid()).ok_or_else(|| EnvelopeError::UnknownKey(sealed.kid().to_string()))?;
    let claims = sealed.open(&key)?;
    Ok(Opened {
        claims,
        kid: sealed.kid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AtmUp, CodePresented};

    fn sample(signer: &Signer) -> Claims<AtmUp> {
        Claims::new(
            signer.id(),
            "hub",
            7,
            1_800_000_000,
            Duration::from_secs(60),
            AtmUp::CodePresented(CodePresented {
                token: "QC1.x".into(),
            }),
        )
    }

    #[test]
    fn seal_and_open() {
        let signer = Signer::new("atm-1", PrivateKey::generate());
        let claims = sample(&signer);
        let text = signer.seal(&claims);
        let pk = signer.key().public().clone();
        let opened: Opened<AtmUp> = open(text.as_bytes(), 16384, |_| Some(pk)).unwrap();
        assert_eq!(opened.claims, claims);
        assert!(opened.claims.check_addressing("hub", Some("atm-1")).is_ok());
        assert!(matches!(
            opened.claims.check_addressing("atm-2", None),
            Err(EnvelopeError::WrongAudience { .. })
        ));
        assert!(matches!(
            opened.claims.check_addressing("hub", Some("atm-2")),
            Err(EnvelopeError::WrongIssuer { .. })
        ));
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let big = vec![b'!'; 16385];
        assert_eq!(
            Sealed::parse(&big, 16384).unwrap_err(),
            EnvelopeError::TooLarge {
                size: 16385,
                max: 16384
            }
        );
    }

    #[test]
    fn wrong_key_unknown_key_and_foreign_types_are_refused() {
        let signer = Signer::new("atm-1", PrivateKey::generate());
        let text = signer.seal(&sample(&signer));
        let other = PrivateKey::generate().public().clone();
        assert!(matches!(
            open::<AtmUp>(text.as_bytes(), 16384, |_| Some(other)),
            Err(EnvelopeError::UnknownKey(_))
        ));
        assert!(matches!(
            open::<AtmUp>(text.as_bytes(), 16384, |_| None),
            Err(EnvelopeError::UnknownKey(_))
        ));
        // A JWS without our typ.
        let plain = jws::sign(
            signer.key().signing_key(),
            &Header::eddsa(Some(signer.kid().as_str()), None),
            b"{}",
        );
        assert!(matches!(
            Sealed::parse(plain.as_bytes(), 16384),
            Err(EnvelopeError::WrongType(None))
        ));
        // A kid that names a key which did not sign: verification fails.
        let forged = jws::sign(
            PrivateKey::generate().signing_key(),
            &Header::eddsa(Some(signer.kid().as_str()), Some(TYP)),
            &serde_json::to_vec(&sample(&signer)).unwrap(),
        );
        let pk = signer.key().public().clone();
        assert!(matches!(
            open::<AtmUp>(forged.as_bytes(), 16384, |_| Some(pk)),
            Err(EnvelopeError::Jws(crate::JwsError::BadSignature))
        ));
    }

    #[test]
    fn unknown_claims_and_unknown_message_fields_are_refused() {
        let signer = Signer::new("atm-1", PrivateKey::generate());
        let pk = signer.key().public().clone();
        let mut v = serde_json::to_value(sample(&signer)).unwrap();
        v["extra"] = 1.into();
        let raw = jws::sign(
            signer.key().signing_key(),
            &Header::eddsa(Some(signer.kid().as_str()), Some(TYP)),
            v.to_string().as_bytes(),
        );
        assert!(matches!(
            open::<AtmUp>(raw.as_bytes(), 16384, |_| Some(pk.clone())),
            Err(EnvelopeError::Claims(_))
        ));
        let mut v = serde_json::to_value(sample(&signer)).unwrap();
        v["msg"]["extra"] = 1.into();
        let raw = jws::sign(
            signer.key().signing_key(),
            &Header::eddsa(Some(signer.kid().as_str()), Some(TYP)),
            v.to_string().as_bytes(),
        );
        assert!(matches!(
            open::<AtmUp>(raw.as_bytes(), 16384, |_| Some(pk)),
            Err(EnvelopeError::Claims(_))
        ));
    }
}

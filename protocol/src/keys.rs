//! Ed25519 keys as JWKs and key ids as RFC 7638 thumbprints.
//!
//! A private key travels as a JWK (`kty` OKP, `crv` Ed25519, `x`, `d`); the 0600 files that
//! hold one are written and read by `qrcash-io` (`KeyFile`), not here.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::KeyError;
use crate::ids::random_bytes;
use crate::jws::{b64, unb64};

/// A key id: the base64url SHA-256 JWK thumbprint of the public key (RFC 7638).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The thumbprint text (43 characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The raw 32-byte digest, if this is a well-formed thumbprint.
    pub fn digest(&self) -> Option<[u8; 32]> {
        unb64(&self.0)?.try_into().ok()
    }

    /// Wraps a thumbprint received on the wire (not checked against any key).
    pub fn from_wire(text: &str) -> Self {
        KeyId(text.to_owned())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A public Ed25519 key in JWK form (RFC 8037 §2), as devices send it and operators enrol it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicJwk {
    /// Always `"OKP"`.
    pub kty: String,
    /// Always `"Ed25519"`.
    pub crv: String,
    /// The 32-byte public key, base64url.
    pub x: String,
    /// Optional key id; when present it must equal the thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// A verified-usable Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    kid: KeyId,
}

impl PublicKey {
    /// From the raw 32 bytes; refuses small-order (weak) keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|e| KeyError::InvalidJwk(format!("not an Ed25519 point: {e}")))?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(Self::from_verifying(key))
    }

    fn from_verifying(key: VerifyingKey) -> Self {
        let kid = thumbprint(&b64(key.as_bytes()));
        PublicKey { key, kid }
    }

    /// From a JWK; checks `kty`, `crv`, the key and (if given) that `kid` is the thumbprint.
    pub fn from_jwk(jwk: &PublicJwk) -> Result<Self, KeyError> {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(KeyError::InvalidJwk(format!(
                "expected kty OKP and crv Ed25519, got {} {}",
                jwk.kty, jwk.crv
            )));
        }
        let x: [u8; 32] = unb64(&jwk.x)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| KeyError::InvalidJwk("x is not 32 base64url bytes".into()))?;
        let key = Self::from_bytes(&x)?;
        if let Some(kid) = &jwk.kid
            && kid != key.kid.as_str()
        {
            return Err(KeyError::InvalidJwk(format!(
                "kid {kid} is not the key's thumbprint {}",
                key.kid
            )));
        }
        Ok(key)
    }

    /// Parses a JWK from JSON text.
    pub fn from_jwk_json(text: &str) -> Result<Self, KeyError> {
        let jwk: PublicJwk =
            serde_json::from_str(text).map_err(|e| KeyError::InvalidJwk(e.to_string()))?;
        Self::from_jwk(&jwk)
    }

    /// The JWK form, with `kid` filled in.
    pub fn to_jwk(&self) -> PublicJwk {
        PublicJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64(self.key.as_bytes()),
            kid: Some(self.kid.0.clone()),
        }
    }

    /// The key id.
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The dalek verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kid)
    }
}

/// RFC 7638 thumbprint of an OKP/Ed25519 key: SHA-256 over the required members in
/// lexicographic order with no white space.
fn thumbprint(x_b64: &str) -> KeyId {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_b64}"}}"#);
    KeyId(b64(&Sha256::digest(canonical.as_bytes())))
}

/// An Ed25519 private key. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
    public: PublicKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateJwk {
    kty: String,
    crv: String,
    x: String,
    d: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

impl PrivateKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed);
        Self::from_bytes(seed)
    }

    /// From the 32-byte secret seed.
    pub fn from_bytes(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let public = PublicKey::from_verifying(key.verifying_key());
        PrivateKey { key, public }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The key id of the public half.
    pub fn kid(&self) -> &KeyId {
        &self.public.kid
    }

    /// The dalek signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The key as a private JWK (`kty` OKP, `crv` Ed25519, `x`, `d`, `kid`), pretty-printed:
    /// what a key file holds. Handle the text as the secret it is.
    pub fn to_private_jwk(&self) -> String {
        let jwk = PrivateJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64(self.public.as_bytes()),
            d: b64(&self.key.to_bytes()),
            kid: Some(self.kid().0.clone()),
        };
        serde_json::to_string_pretty(&jwk).unwrap_or_default()
    }

    /// Reads a private JWK; refuses one whose public part `x` does not belong to `d`.
    pub fn from_private_jwk(text: &str) -> Result<Self, KeyError> {
        let jwk: PrivateJwk =
            serde_json::from_str(text).map_err(|e| KeyError::InvalidJwk(e.to_string()))?;
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(KeyError::InvalidJwk("not an Ed25519 key".into()));
        }
        let d: [u8; 32] = unb64(&jwk.d)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| KeyError::InvalidJwk("d is not 32 bytes".into()))?;
        let key = Self::from_bytes(d);
        if b64(key.public.as_bytes()) != jwk.x {
            return Err(KeyError::InvalidJwk(
                "the public part x does not belong to the private key d".into(),
            ));
        }
        Ok(key)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, secret redacted)", self.public.kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_jwk_round_trips_and_hides_the_secret_in_debug() {
        let key = PrivateKey::generate();
        let loaded = PrivateKey::from_private_jwk(&key.to_private_jwk()).unwrap();
        assert_eq!(loaded.kid(), key.kid());
        assert_eq!(
            loaded.signing_key().to_bytes(),
            key.signing_key().to_bytes()
        );
        assert!(!format!("{loaded:?}").contains(&b64(&key.key.to_bytes())));
    }

    #[test]
    fn mismatched_private_and_public_parts_are_refused() {
        let text = PrivateKey::generate().to_private_jwk();
        let other = b64(PrivateKey::generate().public().as_bytes());
        let mut jwk: serde_json::Value = serde_json::from_str(&text).unwrap();
        jwk["x"] = other.into();
        assert!(matches!(
            PrivateKey::from_private_jwk(&jwk.to_string()),
            Err(KeyError::InvalidJwk(_))
        ));
    }

    #[test]
    fn jwk_round_trip_and_checks() {
        let key = PrivateKey::generate();
        let jwk = key.public().to_jwk();
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), *key.public());
        let mut wrong_kid = jwk.clone();
        wrong_kid.kid = Some(PrivateKey::generate().kid().to_string());
        assert!(PublicKey::from_jwk(&wrong_kid).is_err());
        let mut wrong_crv = jwk.clone();
        wrong_crv.crv = "X25519".into();
        assert!(PublicKey::from_jwk(&wrong_crv).is_err());
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::WeakKey)
        ));
    }
}

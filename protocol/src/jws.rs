//! JWS compact serialization (RFC 7515) restricted to `EdDSA` over Ed25519 (RFC 8037).
//!
//! Only what qrcash needs and nothing an attacker could steer: the protected header may
//! carry `alg`, `kid` and `typ` and nothing else (no `jku`, `jwk`, `crit`…), `alg` must be
//! `"EdDSA"`, base64url must be canonical and unpadded, and signatures are checked with
//! strict Ed25519 verification (no malleable or small-order signatures). The payload is
//! opaque bytes here; [`crate::envelope`] gives it meaning.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::JwsError;

/// The only algorithm accepted.
pub const ALG_EDDSA: &str = "EdDSA";

/// The JWS protected header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `"EdDSA"`.
    pub alg: String,
    /// The signer's key id (RFC 7638 thumbprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The payload type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

impl Header {
    /// An EdDSA header with the given key id and type.
    pub fn eddsa(kid: Option<&str>, typ: Option<&str>) -> Self {
        Header {
            alg: ALG_EDDSA.to_owned(),
            kid: kid.map(str::to_owned),
            typ: typ.map(str::to_owned),
        }
    }
}

/// Encodes bytes as unpadded base64url.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical unpadded base64url.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Signs `payload` under `header` and returns the compact serialization
/// `BASE64URL(header) . BASE64URL(payload) . BASE64URL(signature)`.
pub fn sign(key: &SigningKey, header: &Header, payload: &[u8]) -> String {
    // Serializing a struct of strings cannot fail.
    let header_json = serde_json::to_vec(header).unwrap_or_default();
    let mut out =
        String::with_capacity((header_json.len() + payload.len()).div_ceil(3) * 4 + 2 + 86 + 2);
    URL_SAFE_NO_PAD.encode_string(&header_json, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let signature = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
    out
}

/// A parsed but not yet verified JWS. Its payload must not be trusted before
/// [`Compact::verify`] succeeded.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    /// The decoded protected header (already checked to say `alg: EdDSA`).
    pub header: Header,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Signature,
}

impl<'a> Compact<'a> {
    /// Parses the compact form and checks the header. Does not verify the signature.
    pub fn parse(text: &'a str) -> Result<Self, JwsError> {
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::NotCompact);
        };
        let header_json = unb64(h).ok_or(JwsError::Base64 { part: "header" })?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|e| JwsError::Header(e.to_string()))?;
        if header.alg != ALG_EDDSA {
            return Err(JwsError::UnsupportedAlgorithm(header.alg));
        }
        // Decode the payload now so a damaged one is reported as such, not as a bad signature.
        if unb64(p).is_none() {
            return Err(JwsError::Base64 { part: "payload" });
        }
        let sig = unb64(s).ok_or(JwsError::Base64 { part: "signature" })?;
        let sig: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| JwsError::SignatureLength(sig.len()))?;
        Ok(Compact {
            header,
            signing_input: &text[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature: Signature::from_bytes(&sig),
        })
    }

    /// The payload bytes, unverified. Only for choosing the key to verify with.
    pub fn payload_unverified(&self) -> Vec<u8> {
        unb64(self.payload_b64).unwrap_or_default()
    }

    /// Verifies the signature strictly and returns the payload bytes.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Vec<u8>, JwsError> {
        key.verify_strict(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwsError::BadSignature)?;
        Ok(self.payload_unverified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    /// RFC 8037 Appendix A.1 (key), A.4 (signing) and A.5 (verification).
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    fn rfc_key() -> SigningKey {
        let d: [u8; 32] = unb64(RFC8037_D).unwrap().try_into().unwrap();
        SigningKey::from_bytes(&d)
    }

    #[test]
    fn rfc8037_example_reproduced_byte_for_byte() {
        let key = rfc_key();
        assert_eq!(b64(key.verifying_key().as_bytes()), RFC8037_X);
        let jws = sign(
            &key,
            &Header::eddsa(None, None),
            b"Example of Ed25519 signing",
        );
        assert_eq!(jws, RFC8037_JWS);
        let parsed = Compact::parse(RFC8037_JWS).unwrap();
        assert_eq!(
            parsed.verify(&key.verifying_key()).unwrap(),
            b"Example of Ed25519 signing"
        );
    }

    #[test]
    fn rfc8037_thumbprint() {
        // RFC 8037 Appendix A.3.
        let key = PrivateKey::from_bytes(rfc_key().to_bytes());
        assert_eq!(
            key.public().kid().as_str(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    fn flip(text: &str, index: usize) -> String {
        let mut bytes = text.as_bytes().to_vec();
        // Swap to another base64url character so only the decoded bits change.
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn any_tampering_is_detected() {
        let vk = rfc_key().verifying_key();
        let dot1 = RFC8037_JWS.find('.').unwrap();
        let dot2 = RFC8037_JWS.rfind('.').unwrap();
        // A flipped character in the payload or signature: never verifies.
        for i in (dot1 + 1..dot2).chain(dot2 + 1..RFC8037_JWS.len()) {
            let t = flip(RFC8037_JWS, i);
            let ok = Compact::parse(&t).and_then(|c| c.verify(&vk));
            assert!(ok.is_err(), "tampered byte {i} accepted");
        }
        // A flipped character in the header: unparsable or fails verification.
        for i in 0..dot1 {
            let t = flip(RFC8037_JWS, i);
            assert!(Compact::parse(&t).and_then(|c| c.verify(&vk)).is_err());
        }
    }

    #[test]
    fn algorithm_confusion_and_none_are_refused() {
        let payload = ".RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.";
        for alg in ["none", "HS256", "ES256", "eddsa", "Ed25519"] {
            let h = b64(format!("{{\"alg\":\"{alg}\"}}").as_bytes());
            let t = format!("{h}{payload}{}", b64(&[0; 64]));
            assert_eq!(
                Compact::parse(&t).unwrap_err(),
                JwsError::UnsupportedAlgorithm(alg.to_owned())
            );
        }
        // An unsigned token with an empty signature.
        let h = b64(br#"{"alg":"none"}"#);
        assert!(Compact::parse(&format!("{h}{payload}")).is_err());
    }

    #[test]
    fn extra_header_parameters_are_refused() {
        let h = b64(br#"{"alg":"EdDSA","jku":"https://evil.example/keys"}"#);
        let t = format!("{h}.e30.{}", b64(&[0; 64]));
        assert!(matches!(Compact::parse(&t), Err(JwsError::Header(_))));
    }

    #[test]
    fn truncated_and_malformed_tokens_are_refused() {
        for n in [0, 10, RFC8037_JWS.len() / 2, RFC8037_JWS.len() - 1] {
            assert!(
                Compact::parse(&RFC8037_JWS[..n])
                    .and_then(|c| c.verify(&rfc_key().verifying_key()))
                    .is_err(),
                "truncated to {n} accepted"
            );
        }
        assert_eq!(Compact::parse("a.b").unwrap_err(), JwsError::NotCompact);
        assert_eq!(Compact::parse("a.b.c.d").unwrap_err(), JwsError::NotCompact);
        let padded = RFC8037_JWS.replacen(".", "=.", 1);
        assert_eq!(
            Compact::parse(&padded).unwrap_err(),
            JwsError::Base64 { part: "header" }
        );
    }

    #[test]
    fn wrong_key_fails() {
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let c = Compact::parse(RFC8037_JWS).unwrap();
        assert_eq!(c.verify(&other).unwrap_err(), JwsError::BadSignature);
    }
}

//! ATM enrolment by one-time code: the board proves it holds the code the hub operator issued
//! for its ATM id, without sending the code, and learns the hub's keys from an answer only
//! the code's holder (the hub) could have bound to its request.
//!
//! The code is 80 random bits, shown as 16 base32 characters in groups of four
//! (`ABCD-EFGH-IJKL-MNOP`) and as a QR code carrying [`qr_payload`]. Both sides derive a
//! proof key from it ([`proof_key`]); the board's `Enrol` request carries an HMAC over its
//! ATM id, its new key's `kid` and a nonce ([`request_proof`]), and is signed by that new key
//! (possession); the hub's `Enrolled` answer carries an HMAC over the same and the `kid`s of
//! the hub keys it lists ([`answer_proof`]), so a board trusts exactly the keys the real
//! hub sent. An eavesdropper sees only HMACs of an 80-bit secret that is spent on first
//! use. `docs/protocol.md` ("Enrolment") is the prose form.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The QR payload's prefix: `qrcash-enrol:v1:<atm id>:<code>`.
pub const QR_PREFIX: &str = "qrcash-enrol:v1:";

/// Random bytes in a code (80 bits).
const CODE_BYTES: usize = 10;

/// Base32 characters in a code.
pub const CODE_CHARS: usize = 16;

/// A one-time enrolment code, in its canonical form (16 upper-case base32 characters).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentCode(String);

impl std::fmt::Debug for EnrolmentCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret until used: never in logs.
        f.write_str("EnrolmentCode(…)")
    }
}

/// A code that is not 16 base32 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an enrolment code is 16 letters A-Z and digits 2-7, in groups of four (ABCD-EFGH-IJKL-MNOP)"
)]
pub struct BadCode;

impl EnrolmentCode {
    /// A fresh code from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; CODE_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self::from_random(bytes)
    }

    /// A code from 10 random bytes.
    pub fn from_random(bytes: [u8; CODE_BYTES]) -> Self {
        EnrolmentCode(data_encoding::BASE32_NOPAD.encode(&bytes))
    }

    /// Reads a code as a person types it: case, spaces and dashes do not matter.
    pub fn parse(text: &str) -> Result<Self, BadCode> {
        let canonical: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if canonical.len() != CODE_CHARS
            || data_encoding::BASE32_NOPAD
                .decode(canonical.as_bytes())
                .is_err()
        {
            return Err(BadCode);
        }
        Ok(EnrolmentCode(canonical))
    }

    /// The canonical form (what the proof key is derived from).
    pub fn canonical(&self) -> &str {
        &self.0
    }

    /// Grouped for reading aloud or typing: `ABCD-EFGH-IJKL-MNOP`.
    pub fn grouped(&self) -> String {
        self.0
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// The text of the QR code an engineer shows the ATM's camera.
pub fn qr_payload(atm_id: &str, code: &EnrolmentCode) -> String {
    format!("{QR_PREFIX}{atm_id}:{}", code.canonical())
}

/// Reads [`qr_payload`]: (ATM id, code).
pub fn parse_qr(text: &str) -> Option<(String, EnrolmentCode)> {
    let rest = text.strip_prefix(QR_PREFIX)?;
    let (atm, code) = rest.rsplit_once(':')?;
    crate::topics::validate_id(atm).ok()?;
    Some((atm.to_owned(), EnrolmentCode::parse(code).ok()?))
}

/// The proof key: SHA-256 of `"qrcash-enrol-v1"`, a zero byte and the canonical code.
pub fn proof_key(code: &EnrolmentCode) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"qrcash-enrol-v1\0");
    h.update(code.canonical().as_bytes());
    h.finalize().into()
}

fn mac(key: &[u8; 32], parts: &[&str]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(parts.join("\0").as_bytes());
    m
}

fn request_parts<'a>(atm_id: &'a str, kid: &'a str, nonce: &'a str) -> [&'a str; 4] {
    ["qrcash-enrol-v1 request", atm_id, kid, nonce]
}

/// The request's proof: base64url (no padding) of HMAC-SHA256 under [`proof_key`] over
/// `"qrcash-enrol-v1 request"`, the ATM id, the new key's `kid` and the nonce, joined by zero
/// bytes.
pub fn request_proof(key: &[u8; 32], atm_id: &str, kid: &str, nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        mac(key, &request_parts(atm_id, kid, nonce))
            .finalize()
            .into_bytes(),
    )
}

/// Checks a request's proof in constant time.
pub fn verify_request(key: &[u8; 32], atm_id: &str, kid: &str, nonce: &str, proof: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(proof) else {
        return false;
    };
    mac(key, &request_parts(atm_id, kid, nonce))
        .verify_slice(&tag)
        .is_ok()
}

fn answer_text(atm_id: &str, kid: &str, nonce: &str, hub_kids: &[&str]) -> [String; 5] {
    [
        "qrcash-enrol-v1 answer".to_owned(),
        atm_id.to_owned(),
        kid.to_owned(),
        nonce.to_owned(),
        hub_kids.join(","),
    ]
}

/// The answer's proof: as [`request_proof`] with `"qrcash-enrol-v1 answer"` first and the
/// listed hub keys' `kid`s, in order and joined by commas, last.
pub fn answer_proof(
    key: &[u8; 32],
    atm_id: &str,
    kid: &str,
    nonce: &str,
    hub_kids: &[&str],
) -> String {
    let parts = answer_text(atm_id, kid, nonce, hub_kids);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    URL_SAFE_NO_PAD.encode(mac(key, &parts).finalize().into_bytes())
}

/// Checks an answer's proof in constant time.
pub fn verify_answer(
    key: &[u8; 32],
    atm_id: &str,
    kid: &str,
    nonce: &str,
    hub_kids: &[&str],
    proof: &str,
) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(proof) else {
        return false;
    };
    let parts = answer_text(atm_id, kid, nonce, hub_kids);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    mac(key, &parts).verify_slice(&tag).is_ok()
}

/// What a board's new key signs when the board changes keys (`RotateKey`): the rotation
/// statement `"qrcash-rotate-v1"` ‖ ATM id ‖ old `kid` ‖ new `kid`, joined by zero bytes.
fn rotation_statement(atm_id: &str, old_kid: &str, new_kid: &str) -> Vec<u8> {
    ["qrcash-rotate-v1", atm_id, old_kid, new_kid]
        .join("\0")
        .into_bytes()
}

/// The new key's proof of possession in a `RotateKey`: base64url of its Ed25519 signature
/// of the rotation statement.
pub fn rotation_proof(new_key: &crate::PrivateKey, atm_id: &str, old_kid: &str) -> String {
    use ed25519_dalek::Signer as _;
    let statement = rotation_statement(atm_id, old_kid, new_key.kid().as_str());
    URL_SAFE_NO_PAD.encode(new_key.signing_key().sign(&statement).to_bytes())
}

/// Checks a rotation proof (strict Ed25519).
pub fn verify_rotation(
    new_key: &crate::PublicKey,
    atm_id: &str,
    old_kid: &str,
    proof: &str,
) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(proof) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    let statement = rotation_statement(atm_id, old_kid, new_key.kid().as_str());
    new_key
        .verifying_key()
        .verify_strict(&statement, &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> EnrolmentCode {
        EnrolmentCode::from_random([7; CODE_BYTES])
    }

    #[test]
    fn codes_read_as_people_type_them() {
        let c = code();
        assert_eq!(c.canonical().len(), CODE_CHARS);
        assert_eq!(c.grouped().len(), CODE_CHARS + 3);
        for typed in [
            c.grouped(),
            c.grouped().to_lowercase(),
            c.canonical().to_owned(),
            c.grouped().replace('-', " "),
        ] {
            assert_eq!(EnrolmentCode::parse(&typed).unwrap(), c, "{typed}");
        }
        for bad in [
            "",
            "ABCD-EFGH",
            "ABCD-EFGH-IJKL-MNO1",
            "ABCD-EFGH-IJKL-MNOPQ",
            "ÄBCD-EFGH-IJKL-MNOP",
        ] {
            assert_eq!(EnrolmentCode::parse(bad), Err(BadCode), "{bad}");
        }
        assert!(!format!("{c:?}").contains(c.canonical()), "never in logs");
    }

    #[test]
    fn the_qr_payload_round_trips_and_refuses_strangers() {
        let c = code();
        let text = qr_payload("atm-7", &c);
        assert_eq!(parse_qr(&text), Some(("atm-7".to_owned(), c.clone())));
        assert_eq!(parse_qr("qrcash-enrol:v2:atm-7:AAAA"), None);
        assert_eq!(
            parse_qr(&format!("{QR_PREFIX}atm 7:{}", c.canonical())),
            None
        );
        assert_eq!(parse_qr(&format!("{QR_PREFIX}atm-7:short")), None);
    }

    #[test]
    fn proofs_bind_every_part() {
        let key = proof_key(&code());
        let p = request_proof(&key, "atm-7", "kid", "nonce");
        assert!(verify_request(&key, "atm-7", "kid", "nonce", &p));
        assert!(!verify_request(&key, "atm-8", "kid", "nonce", &p));
        assert!(!verify_request(&key, "atm-7", "kid2", "nonce", &p));
        assert!(!verify_request(&key, "atm-7", "kid", "nonce2", &p));
        assert!(!verify_request(
            &key,
            "atm-7",
            "kid",
            "nonce",
            "not base64!"
        ));
        let other = proof_key(&EnrolmentCode::from_random([8; CODE_BYTES]));
        assert!(!verify_request(&other, "atm-7", "kid", "nonce", &p));
        // Zero bytes separate the parts: moving text between them changes the proof.
        assert_ne!(p, request_proof(&key, "atm-7k", "id", "nonce"));

        let a = answer_proof(&key, "atm-7", "kid", "nonce", &["h1", "h2"]);
        assert!(verify_answer(
            &key,
            "atm-7",
            "kid",
            "nonce",
            &["h1", "h2"],
            &a
        ));
        assert!(!verify_answer(
            &key,
            "atm-7",
            "kid",
            "nonce",
            &["h2", "h1"],
            &a
        ));
        assert!(!verify_answer(&key, "atm-7", "kid", "nonce", &["h1"], &a));
        assert_ne!(a, p, "an answer is not a request");
    }

    #[test]
    fn a_rotation_proof_binds_the_atm_and_both_keys() {
        let (old, new) = (crate::PrivateKey::generate(), crate::PrivateKey::generate());
        let p = rotation_proof(&new, "atm-7", old.kid().as_str());
        assert!(verify_rotation(
            new.public(),
            "atm-7",
            old.kid().as_str(),
            &p
        ));
        assert!(!verify_rotation(
            new.public(),
            "atm-8",
            old.kid().as_str(),
            &p
        ));
        assert!(!verify_rotation(
            new.public(),
            "atm-7",
            new.kid().as_str(),
            &p
        ));
        assert!(!verify_rotation(
            old.public(),
            "atm-7",
            old.kid().as_str(),
            &p
        ));
        assert!(!verify_rotation(
            new.public(),
            "atm-7",
            old.kid().as_str(),
            "AAAA"
        ));
    }

    /// Pinned vectors, computed independently with Python's `hashlib` and `hmac` from the
    /// definitions in `docs/protocol.md` ("Enrolment").
    #[test]
    fn vectors() {
        let c = EnrolmentCode::parse("abcd efgh-ijkl-mnop").unwrap();
        let key = proof_key(&c);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "58eb3ec0b8b16e7fcf5f19519576978a95dafb0ec18891a2de5f43bda7b93ea9"
        );
        assert_eq!(
            request_proof(&key, "atm-7", "KID", "NONCE"),
            "KqkzMgQIy446LqOrSFtBl_fzkEXqdf62OUQHi16U1rc"
        );
        assert_eq!(
            answer_proof(&key, "atm-7", "KID", "NONCE", &["H1", "H2"]),
            "EF3Bs3zlve-CVB2bm_e5CtjPCb4eEgSxORwefVzjKoc"
        );
    }
}

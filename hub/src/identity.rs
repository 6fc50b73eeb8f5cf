//! Secrets at rest and PIN lockout: argon2id hashes of passwords and PINs, and the pure
//! rule that locks a PIN after too many wrong attempts.
//!
//! Neither the secret nor its hash is ever logged. Verification reads the cost parameters
//! from the stored PHC string, so raising the cost for new hashes keeps old ones working.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use argon2::{Algorithm, Argon2, Params, Version};
use qrcash_protocol::RejectReason;

/// Cost of new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
}

impl HashCost {
    /// A very cheap cost for tests only.
    pub const TEST: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
    };
}

/// Hashes `secret` with argon2id and a random salt into a PHC string.
pub fn hash_secret(secret: &str, cost: HashCost) -> Result<String, String> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    let mut salt = [0u8; 16];
    qrcash_protocol::ids::random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("argon2 salt: {e}"))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2 hashing: {e}"))
}

/// Whether `secret` matches the stored hash. A malformed hash never matches.
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    EVALUATIONS.with(|n| n.set(n.get() + 1));
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

thread_local! {
    static EVALUATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times [`verify_secret`] ran on this thread: lets a test prove that a throttled
/// login costs no argon2, or that a check done ahead was used.
pub fn evaluations_on_this_thread() -> u64 {
    EVALUATIONS.with(std::cell::Cell::get)
}

/// A hash of a secret nobody knows, at `cost`: a login for an account that does not exist is
/// checked against it, so that it costs what a real one costs and its answer time does not
/// tell which accounts exist.
pub fn decoy_hash(cost: HashCost) -> &'static str {
    static DECOYS: OnceLock<Mutex<HashMap<HashCost, &'static str>>> = OnceLock::new();
    let mut decoys = DECOYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    decoys.entry(cost).or_insert_with(|| {
        let mut secret = [0u8; 16];
        qrcash_protocol::ids::random_bytes(&mut secret);
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret);
        let phc = hash_secret(&secret, cost)
            .or_else(|_| hash_secret(&secret, HashCost::TEST))
            .unwrap_or_default();
        Box::leak(phc.into_boxed_str())
    })
}

/// A password or PIN checked ahead of the writer (`crate::service`'s secret workers): the
/// key binds the stored hash and the secret, so the writer uses the answer only for exactly
/// the check it would have made itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedSecret {
    /// [`check_key`] of the secret and the hash.
    pub key: [u8; 32],
    /// Whether the secret matched.
    pub ok: bool,
}

/// The key of a check of `secret` against `phc`.
pub fn check_key(secret: &str, phc: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"qrcash/v1/secret-check\0");
    h.update((phc.len() as u64).to_be_bytes());
    h.update(phc.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// Checks `secret` against `phc` now (on a secret worker).
pub fn check_ahead(secret: &str, phc: &str) -> CheckedSecret {
    CheckedSecret {
        key: check_key(secret, phc),
        ok: verify_secret(secret, phc),
    }
}

/// Whether a PIN is acceptable as a PIN (4 to 12 digits).
pub fn valid_pin(pin: &str) -> bool {
    (4..=12).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit())
}

/// Persisted PIN attempt state of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PinState {
    /// Wrong attempts in a row.
    pub failures: u32,
    /// Locked until this Unix time (0: not locked).
    pub locked_until: u64,
}

impl PinState {
    /// If the PIN is locked at `now`, the refusal to give.
    pub fn locked(&self, now: u64) -> Option<RejectReason> {
        (self.locked_until > now).then_some(RejectReason::PinLocked {
            until: self.locked_until,
        })
    }

    /// The state after an attempt; `Err` with the refusal if it was wrong. The `max_failures`th
    /// wrong attempt in a row locks the PIN for `lockout_s`.
    pub fn attempt(
        self,
        correct: bool,
        now: u64,
        max_failures: u32,
        lockout_s: u64,
    ) -> (PinState, Result<(), RejectReason>) {
        if correct {
            return (PinState::default(), Ok(()));
        }
        // A lock that has run out starts a fresh count.
        let failures = if self.locked_until != 0 && self.locked_until <= now {
            1
        } else {
            self.failures + 1
        };
        if failures >= max_failures {
            let until = now.saturating_add(lockout_s);
            (
                PinState {
                    failures: 0,
                    locked_until: until,
                },
                Err(RejectReason::PinLocked { until }),
            )
        } else {
            (
                PinState {
                    failures,
                    locked_until: 0,
                },
                Err(RejectReason::PinWrong {
                    attempts_left: max_failures - failures,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_secret() {
        let h = hash_secret("1234", HashCost::TEST).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("1234$"));
        assert!(verify_secret("1234", &h));
        assert!(!verify_secret("1235", &h));
        assert!(!verify_secret("1234", "not a hash"));
        assert_ne!(h, hash_secret("1234", HashCost::TEST).unwrap(), "salted");
    }

    #[test]
    fn pins_are_digits() {
        assert!(valid_pin("0000"));
        assert!(!valid_pin("123"));
        assert!(!valid_pin("12a4"));
    }

    #[test]
    fn third_wrong_pin_locks_and_the_lock_runs_out() {
        let s = PinState::default();
        let (s, r) = s.attempt(false, 100, 3, 600);
        assert_eq!(r, Err(RejectReason::PinWrong { attempts_left: 2 }));
        let (s, r) = s.attempt(false, 101, 3, 600);
        assert_eq!(r, Err(RejectReason::PinWrong { attempts_left: 1 }));
        let (s, r) = s.attempt(false, 102, 3, 600);
        assert_eq!(r, Err(RejectReason::PinLocked { until: 702 }));
        assert_eq!(s.locked(500), Some(RejectReason::PinLocked { until: 702 }));
        assert_eq!(s.locked(702), None);
        // After the lock a single wrong PIN does not lock again at once.
        let (s2, r) = s.attempt(false, 800, 3, 600);
        assert_eq!(r, Err(RejectReason::PinWrong { attempts_left: 2 }));
        // A right PIN clears the count.
        let (s3, r) = s2.attempt(true, 801, 3, 600);
        assert_eq!((s3, r), (PinState::default(), Ok(())));
    }
}

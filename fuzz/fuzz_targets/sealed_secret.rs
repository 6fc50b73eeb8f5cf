//! Sealed secrets: arbitrary bytes as wire JSON, as raw ciphertext and as a secret to seal
//! must never panic, never open unless sealed, and always open to themselves when sealed.
#![no_main]

include!("../checks/sealed_secret.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

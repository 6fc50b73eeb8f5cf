//! The QR token parser: arbitrary text must never panic and never verify.
#![no_main]

include!("../checks/qr_token.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

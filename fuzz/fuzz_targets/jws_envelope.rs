//! The signed-envelope parser: arbitrary bytes must never panic, and nothing unsigned by the
//! trusted key is ever opened.
#![no_main]

include!("../checks/jws_envelope.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

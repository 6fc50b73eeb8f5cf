//! The LCDM serial decoder, both directions: garbage on the line must never panic, every
//! frame it accepts must pass its BCC, and a response it parses must encode back to a frame
//! that parses to the same response.
#![no_main]

include!("../checks/lcdm_frame.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

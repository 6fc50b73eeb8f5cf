//! The hub's message handler entry point: garbage on any topic is never answered and never
//! moves money.
#![no_main]

include!("../checks/hub_handler.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

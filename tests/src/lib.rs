//! Shared harness for qrcash's end-to-end, fault and benchmark suites.
//!
//! The suites themselves live in `tests/tests/` (one file per concern) and `src/bin/` (bench
//! binaries). What they share is here: a real Mosquitto broker started per test with its
//! own generated configuration on a free loopback port.

pub mod atm;
pub mod broker;
pub mod hub;
pub mod invariants;
pub mod mqtt;
pub mod pki;
pub mod report;
pub mod scenario;

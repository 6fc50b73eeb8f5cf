//! Shared harness for qrcash's end-to-end and fault suites (in `tests/tests/`, one file per
//! concern) and the benchmarks (`bench/`): a hub, an ATM and randomized scenarios over a
//! real broker, and the money invariants checked after every run. The broker, PKI and raw
//! MQTT client come from `qrcash-testsupport`, re-exported here.

pub mod atm;
pub mod customer;
pub mod hub;
pub mod instances;
pub mod invariants;
pub mod postgres;
pub mod python;
pub mod scenario;

pub use qrcash_testsupport::{broker, mqtt, nats, pki};

//! Test helpers that depend on none of the programs, so the agent, the hub and the
//! end-to-end suites can all use them without a dependency cycle:
//!
//! - [`broker`]: a real Mosquitto per test, on a free loopback port, with its own generated
//!   configuration (TLS and ACLs when asked);
//! - [`pki`]: a test CA with broker and client certificates, and the production ACL;
//! - [`nats`]: a real clustered broker: NATS server nodes with MQTT listeners;
//! - [`mqtt`]: a raw MQTT client that sees what a test needs (subscription return codes,
//!   every publish).
//!
//! Not for production code: nothing here is hardened.

pub mod broker;
pub mod mqtt;
pub mod nats;
pub mod pki;

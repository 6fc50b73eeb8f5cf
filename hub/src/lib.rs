//! qrcash-hub: the cardless withdrawal service. It issues one-time QR codes, checks their
//! presentation at ATMs, has the customer confirm on the phone, orders and settles the
//! dispense, and keeps a double-entry ledger, all over signed MQTT messages and SQLite.
//!
//! Where to look:
//! - [`withdrawal`]: the life cycle as one enum and one pure transition function.
//! - [`ledger`]: the double-entry model; [`store::ledger`] applies and checks it.
//! - [`notes`], [`warnings`], [`identity`]: pure rules (note breakdown, fraud warnings,
//!   secrets and PIN lockout).
//! - [`restriction`]: the new-device restriction in one place (policy, locate, decide, and
//!   `check_may_move_money`, the one gate of money out); [`limits`]: how much may move.
//! - [`store`]: every SQL statement of the hub, behind one handle (`store::Db`); SQLite
//!   (WAL, `synchronous=FULL`, migrations) and typed rows.
//! - [`handler`]: the pure entry point `Hub::handle(topic, bytes)`, no MQTT inside.
//! - [`service`]: the MQTT shell (single writer with group commit, sweeper, shutdown);
//!   [`embedded_broker`]: rumqttd in-process.
//! - [`evidence`]: what is known about an order's cash, and the rules a settlement keeps.
//! - [`admin`]: operator operations as functions; [`config`]: the TOML configuration.
//! - `testkit` (feature `testkit`): signed test devices and a hub with a manual clock, for
//!   tests, benchmarks and fuzzers.
//!
//! `docs/hub.md` describes the service, `docs/invariants.md` the money rules it keeps.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod embedded_broker;
pub mod error;
pub mod evidence;
pub mod handler;
pub mod identity;
pub mod keyring;
pub mod ledger;
pub mod limits;
pub mod notes;
pub mod pki;
pub mod qr;
pub mod reconcile;
pub mod restriction;
pub mod rng;
pub mod secrets;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod throttle;
pub mod warnings;
pub mod withdrawal;

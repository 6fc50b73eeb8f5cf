//! qrcash-hub: the cardless withdrawal service. It issues one-time QR codes, checks their
//! presentation at ATMs, has the customer confirm on the phone, orders and settles the
//! dispense, and keeps a double-entry ledger, all over signed MQTT messages and SQLite.
//!
//! Where to look:
//! - [`withdrawal`]: the life cycle as one enum and one pure transition function.
//! - [`ledger`]: the double-entry model; [`store::ledger`] applies and checks it.
//! - [`notes`], [`warnings`], [`identity`]: pure rules (note breakdown, fraud warnings,
//!   secrets and PIN lockout).
//! - [`store`]: SQLite (WAL, `synchronous=FULL`, migrations) and typed rows.
//! - [`config`]: the TOML configuration.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod embedded_broker;
pub mod error;
pub mod handler;
pub mod identity;
pub mod ledger;
pub mod notes;
pub mod policy;
pub mod qr;
pub mod restriction;
pub mod rng;
pub mod service;
pub mod store;
pub mod testkit;
pub mod warnings;
pub mod withdrawal;

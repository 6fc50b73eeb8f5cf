//! The reference qrcash phone client: what a phone app does, written to be read by the
//! authors of real phone apps.
//!
//! - [`store`]: the device's durable state (0600 device key, persisted `seq`, the hub's
//!   replay window, small records).
//! - [`requests`]: building requests, above all the confirmation that copies the exact
//!   transaction details from the hub's `ConfirmRequest` (dynamic linking).
//! - [`verify`]: checking every push from the hub (signature, addressing, replay).
//! - [`client`]: [`PhoneClient`], the async MQTT client tying them together.
//! - [`display`]: the QR code (terminal, PNG) and the confirmation screen.
//! - [`config`]: the CLI's `phone.toml`.
//!
//! A withdrawal, as the app runs it:
//!
//! ```no_run
//! # async fn demo(mut phone: qrcash_phone::PhoneClient) -> Result<(), qrcash_phone::PhoneError> {
//! use std::time::Duration;
//! use qrcash_protocol::{Amount, Currency};
//! let t = Duration::from_secs(30);
//! phone.login("hanako", "password", None, t).await?;
//! let code = phone.register_withdrawal("hanako", Amount::new(10_000, Currency::JPY), t).await?;
//! // ... show code.token as a QR code to the ATM's camera ...
//! let req = phone.await_confirm_request(Some(code.tx_id), Duration::from_secs(300)).await?;
//! let evidence = qrcash_phone::requests::evidence(Some("1234"), None, 0);
//! let jti = phone.confirm(&req, evidence, None).await?;
//! let receipt = phone.await_receipt(&req.tx_id.to_string(), Some(&jti), Duration::from_secs(120)).await?;
//! # let _ = receipt; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod display;
pub mod error;
pub mod requests;
pub mod store;
pub mod verify;

pub use client::{PhoneClient, PhoneSettings};
pub use config::PhoneConfig;
pub use error::{PhoneError, PushError};
pub use store::DeviceStore;
pub use verify::PushVerifier;

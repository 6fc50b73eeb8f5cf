//! The I/O every qrcash program shares, kept out of the pure protocol crate:
//!
//! - [`link`]: one MQTT link actor (connection, subscriptions, reconnect with backoff,
//!   typed events) used by the hub, the agent and the phone;
//! - [`broker`]: broker URLs and TLS files turned into client options;
//! - [`backoff`]: reconnect and resend delays;
//! - [`files`]: 0700 directories and 0600 databases; [`keyfile`]: 0600 private key files.

#![warn(missing_docs)]

pub mod backoff;
pub mod broker;
pub mod files;
pub mod keyfile;
pub mod link;

pub use backoff::Backoff;
pub use broker::{BrokerConfig, LinkError, mqtt_options};
pub use keyfile::KeyFile;
pub use link::{LinkEvent, LinkHandle, LinkOptions, Publication, PublishError};

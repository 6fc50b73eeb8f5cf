//! Puloon LCDM-1000/2000 driver: wire codec, link rules, batching (pure cores) and the serial
//! port shell.
//!
//! Layers, bottom up: `frame` (bytes ⇄ frames), `message` (frames ⇄ typed commands and
//! responses, error table), `link` (ACK/NAK/resend/timeouts for one transaction), `batch`
//! (a dispense split into batches, counts summed), `driver` (the port and the `Dispenser`
//! implementation). Only `driver` does I/O.

pub mod batch;
pub mod config;
pub mod driver;
pub mod frame;
pub mod link;
pub mod message;

pub use config::{LcdmConfig, LcdmModel, Parity};
pub use driver::{Identity, LcdmDispenser};
pub use message::CombinedFieldOrder;

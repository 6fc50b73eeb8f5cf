//! qrcash-agent: the program on each ATM's Linux board.
//!
//! It reads withdrawal codes through the camera, verifies them offline, presents them to
//! the hub, and pays out only on a hub-signed order for the transaction presented here,
//! with every step in a durable journal and every message to the hub in a durable outbox.
//!
//! - [`session`]: the customer session as a pure state machine.
//! - [`dispense`]: one order's dispense sequence (pure) and outcome-to-report mapping.
//! - [`inbound`]: verification of hub messages (pure).
//! - [`store`]: SQLite journal, order records (write-ahead), outbox, counters.
//! - [`runtime`]: the tokio tasks (camera, MQTT link, outbox, core) and [`Agent::start`].
//! - [`config`]: the TOML configuration.
//! - [`doctor`]: `qrcash-agent doctor`, the installer's self-check.
//! - [`enrol`]: `qrcash-agent enrol`, enrolment by a one-time code.
//!
//! ```no_run
//! # async fn demo(cfg: qrcash_agent::AgentConfig,
//! #   frames: Box<dyn qrcash_hardware::camera::FrameSource>,
//! #   dispenser: Box<dyn qrcash_hardware::dispenser::Dispenser>) -> Result<(), qrcash_agent::AgentError> {
//! let agent = qrcash_agent::Agent::start(cfg, frames, dispenser).await?;
//! let mut events = agent.subscribe();
//! while let Ok(ev) = events.recv().await {
//!     println!("{ev:?}");
//! }
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod dispense;
pub mod doctor;
pub mod enrol;
pub mod error;
pub mod inbound;
pub mod runtime;
pub mod session;
pub mod store;

pub use config::AgentConfig;
pub use error::AgentError;
pub use runtime::{Agent, AgentEvent, AgentHandle};
pub use session::Screen;

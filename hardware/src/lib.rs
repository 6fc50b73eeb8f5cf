//! Device side of an ATM: the cash dispenser (driver and simulator), the camera and the
//! QR scanner.
//!
//! Nothing here knows about MQTT, signatures or money: the agent turns device outcomes into
//! protocol messages. Everything that touches a device is a pure core (codec, link rules,
//! image processing) plus a thin I/O shell, so the cores are tested without hardware.

pub mod camera;
pub mod dispenser;
pub mod scan;

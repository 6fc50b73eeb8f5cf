//! qrcash-agent: the program on each ATM's Linux board (work in progress).

pub mod dispense;
pub mod error;
pub mod session;
pub mod store;

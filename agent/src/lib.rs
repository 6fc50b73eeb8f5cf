//! qrcash-agent: the program on each ATM's Linux board (work in progress).

pub mod error;
pub mod store;

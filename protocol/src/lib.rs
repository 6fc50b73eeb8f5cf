//! qrcash-protocol

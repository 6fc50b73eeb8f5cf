//! qrcash-hub

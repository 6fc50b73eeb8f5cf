//! qrcash-agent

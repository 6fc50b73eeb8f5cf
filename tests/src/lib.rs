//! qrcash-tests

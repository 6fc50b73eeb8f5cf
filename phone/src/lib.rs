//! qrcash-phone

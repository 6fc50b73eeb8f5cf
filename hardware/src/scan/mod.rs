//! Fast QR scanning on top of rqrr.

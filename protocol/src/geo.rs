//! Positions with their accuracy, and great-circle distances between them.
//!
//! A position is evidence, not truth: a phone's GPS fix carries its own accuracy radius, and
//! any decision ("is the phone at the ATM?") must allow for it.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in metres (IUGG), used by [`Position::distance_m`].
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS 84 position with the radius (metres) of its accuracy circle.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Latitude in degrees, −90 to 90.
    pub lat: f64,
    /// Longitude in degrees, −180 to 180.
    pub lon: f64,
    /// Accuracy radius in metres (as reported by the device; 0 for a surveyed position).
    pub accuracy_m: f64,
}

impl Position {
    /// A position; see [`Position::validate`].
    pub const fn new(lat: f64, lon: f64, accuracy_m: f64) -> Self {
        Position {
            lat,
            lon,
            accuracy_m,
        }
    }

    /// Checks the ranges; a device reporting nonsense gets a typed rejection, not a NaN.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(format!("latitude {} out of range", self.lat));
        }
        if !(self.lon.is_finite() && (-180.0..=180.0).contains(&self.lon)) {
            return Err(format!("longitude {} out of range", self.lon));
        }
        if !(self.accuracy_m.is_finite() && self.accuracy_m >= 0.0) {
            return Err(format!("accuracy {} m is not a radius", self.accuracy_m));
        }
        Ok(())
    }

    /// Great-circle (haversine) distance in metres between the two centres.
    pub fn distance_m(&self, other: &Position) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
    }

    /// The shortest distance the two could be apart given both accuracy circles (never
    /// negative). Use it where a false "too far" would wrongly refuse a customer.
    pub fn min_distance_m(&self, other: &Position) -> f64 {
        (self.distance_m(other) - self.accuracy_m - other.accuracy_m).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokyo_to_osaka_is_about_400_km() {
        let tokyo = Position::new(35.6812, 139.7671, 0.0);
        let osaka = Position::new(34.7025, 135.4959, 0.0);
        let d = tokyo.distance_m(&osaka);
        assert!((395_000.0..410_000.0).contains(&d), "{d}");
        assert_eq!(tokyo.distance_m(&tokyo), 0.0);
    }

    #[test]
    fn accuracy_shrinks_the_minimum_distance() {
        let a = Position::new(35.0, 139.0, 300.0);
        let b = Position::new(35.01, 139.0, 500.0); // ~1112 m north
        let d = a.distance_m(&b);
        assert!((d - a.min_distance_m(&b) - 800.0).abs() < 1e-6);
        assert_eq!(a.min_distance_m(&Position::new(35.0, 139.0, 0.0)), 0.0);
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(Position::new(91.0, 0.0, 1.0).validate().is_err());
        assert!(Position::new(0.0, 181.0, 1.0).validate().is_err());
        assert!(Position::new(f64::NAN, 0.0, 1.0).validate().is_err());
        assert!(Position::new(0.0, 0.0, -1.0).validate().is_err());
        assert!(Position::new(35.0, 139.0, 10.0).validate().is_ok());
    }
}

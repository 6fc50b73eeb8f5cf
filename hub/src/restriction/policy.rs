//! The tunable figures of the restriction rules, and how long a restriction lasts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{SECS_PER_DAY, SECS_PER_HOUR};

/// The tunable figures of the restriction rules (the `[restriction]` table of the hub's
/// configuration). Every field has a default, so a partial table is valid; unknown fields are
/// rejected so a misspelt key cannot silently keep the default. Durations are plain seconds,
/// distances kilometres, speeds km/h. The defaults and their reasons are in
/// `docs/restriction.md`.
///
/// The functions of this module never panic or return a longer-than-`max` period on an
/// invalid policy, but their answers are only meaningful for one that passes
/// [`RestrictionPolicy::validate`]: call it when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestrictionPolicy {
    /// Shortest restriction, for accounts that log in at least `frequent_logins` times in the
    /// login window. Default 3,600 s (1 h).
    pub min_period_secs: u64,
    /// Longest restriction, for accounts that log in at most `rare_logins` times in the login
    /// window, and for impossible travel. Default 259,200 s (72 h).
    pub max_period_secs: u64,
    /// The window over which the hub counts an account's logins for [`restriction_period`].
    /// Default 2,592,000 s (30 days).
    pub login_window_secs: u64,
    /// At or below this many logins in the window the period is `max_period_secs`.
    /// Default 1.
    pub rare_logins: u32,
    /// At or above this many logins in the window the period is `min_period_secs`.
    /// Default 30 (about one a day).
    pub frequent_logins: u32,
    /// Two devices whose smallest plausible distance is at most this far apart are taken to be
    /// the same person's: no restriction. Also the radius of "one place" when estimating a
    /// position from payments. Default 20 km.
    pub same_person_range_km: f64,
    /// The least combined location error assumed for any pair of positions: the distance
    /// between two devices is reduced by the larger of this and the sum of their accuracy
    /// radii. Default 50 km.
    pub location_tolerance_km: f64,
    /// A position whose accuracy radius is larger than this is treated as unknown.
    /// Default 25 km.
    pub max_trusted_accuracy_km: f64,
    /// Travel faster than this between the existing device's last fix and the new device's is
    /// impossible. Default 900 km/h.
    pub impossible_speed_kmh: f64,
    /// The speed rule applies only when the smallest plausible distance is at least this far.
    /// Default 100 km.
    pub speed_rule_min_distance_km: f64,
    /// Payments older than this are not used to estimate a position. Default 604,800 s
    /// (7 days).
    pub estimate_window_secs: u64,
    /// At most this many of the most recent payments are used to estimate a position (0
    /// disables estimation). Default 10.
    pub estimate_max_payments: u32,
    /// A payment's weight in the estimate halves with every this many seconds of age.
    /// Default 86,400 s (1 day).
    pub estimate_half_life_secs: u64,
    /// How fast an estimate's accuracy radius grows with the age of the newest payment it
    /// uses, in km per day. Default 10 km/day.
    pub estimate_drift_km_per_day: f64,
}

impl Default for RestrictionPolicy {
    fn default() -> Self {
        RestrictionPolicy {
            min_period_secs: SECS_PER_HOUR,
            max_period_secs: 72 * SECS_PER_HOUR,
            login_window_secs: 30 * SECS_PER_DAY,
            rare_logins: 1,
            frequent_logins: 30,
            same_person_range_km: 20.0,
            location_tolerance_km: 50.0,
            max_trusted_accuracy_km: 25.0,
            impossible_speed_kmh: 900.0,
            speed_rule_min_distance_km: 100.0,
            estimate_window_secs: 7 * SECS_PER_DAY,
            estimate_max_payments: 10,
            estimate_half_life_secs: SECS_PER_DAY,
            estimate_drift_km_per_day: 10.0,
        }
    }
}

/// A restriction policy that cannot be applied as configured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The period bounds are reversed.
    #[error(
        "restriction: min_period_secs ({min}) is larger than max_period_secs ({max}); \
         set min_period_secs <= max_period_secs"
    )]
    PeriodBounds {
        /// The configured minimum.
        min: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The login-count bounds are reversed or zero.
    #[error(
        "restriction: rare_logins ({rare}) must be at least 1 and below frequent_logins \
         ({frequent})"
    )]
    LoginBounds {
        /// The configured `rare_logins`.
        rare: u32,
        /// The configured `frequent_logins`.
        frequent: u32,
    },
    /// A distance, speed or rate is negative, infinite or not a number.
    #[error("restriction: {field} must be a finite number >= 0, got {value}")]
    NotAFigure {
        /// The field's name as in the configuration.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// A duration that must be positive is zero.
    #[error("restriction: {field} must be greater than 0")]
    Zero {
        /// The field's name as in the configuration.
        field: &'static str,
    },
}

impl RestrictionPolicy {
    /// Checks that the figures make sense together; the hub refuses to start otherwise.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_period_secs > self.max_period_secs {
            return Err(PolicyError::PeriodBounds {
                min: self.min_period_secs,
                max: self.max_period_secs,
            });
        }
        if self.rare_logins == 0 || self.rare_logins >= self.frequent_logins {
            return Err(PolicyError::LoginBounds {
                rare: self.rare_logins,
                frequent: self.frequent_logins,
            });
        }
        for (field, value) in [
            ("same_person_range_km", self.same_person_range_km),
            ("location_tolerance_km", self.location_tolerance_km),
            ("max_trusted_accuracy_km", self.max_trusted_accuracy_km),
            ("impossible_speed_kmh", self.impossible_speed_kmh),
            (
                "speed_rule_min_distance_km",
                self.speed_rule_min_distance_km,
            ),
            ("estimate_drift_km_per_day", self.estimate_drift_km_per_day),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PolicyError::NotAFigure { field, value });
            }
        }
        for (field, value) in [
            ("min_period_secs", self.min_period_secs),
            ("login_window_secs", self.login_window_secs),
            ("estimate_window_secs", self.estimate_window_secs),
            ("estimate_half_life_secs", self.estimate_half_life_secs),
        ] {
            if value == 0 {
                return Err(PolicyError::Zero { field });
            }
        }
        Ok(())
    }

    /// The shortest restriction.
    pub fn min_period(&self) -> Duration {
        Duration::from_secs(self.min_period_secs)
    }

    /// The longest restriction.
    pub fn max_period(&self) -> Duration {
        Duration::from_secs(self.max_period_secs)
    }

    /// The window over which the caller counts logins for [`restriction_period`].
    pub fn login_window(&self) -> Duration {
        Duration::from_secs(self.login_window_secs)
    }

    /// The period bounds in order, even if the configuration reversed them.
    pub(super) fn period_bounds(&self) -> (u64, u64) {
        let lo = self.min_period_secs.min(self.max_period_secs);
        let hi = self.min_period_secs.max(self.max_period_secs);
        (lo, hi)
    }

    pub(super) fn max_trusted_accuracy_m(&self) -> f64 {
        self.max_trusted_accuracy_km * 1_000.0
    }
}

// ---------------------------------------------------------------------------------------
// How long: the login-habit rule
// ---------------------------------------------------------------------------------------

/// How long a new device stays restricted, from the account's number of logins in the last
/// [`RestrictionPolicy::login_window`] (count only logins from the account's established,
/// unrestricted devices, so a new device cannot shorten its own period by logging in often).
///
/// With `lo`/`hi` the period bounds, `r` = `rare_logins` and `f` = `frequent_logins`:
///
/// ```text
/// n <= r      → hi
/// n >= f      → lo
/// otherwise   → hi − (hi − lo) · ln(n / r) / ln(f / r), rounded to whole minutes
/// ```
///
/// that is, linear interpolation on a logarithmic login scale: the first few extra logins a
/// month shorten the period the most. The result is non-increasing in `n` and always within
/// the bounds (also for a policy that [`RestrictionPolicy::validate`] would refuse).
pub fn restriction_period(policy: &RestrictionPolicy, logins_last_30_days: u32) -> Duration {
    let (lo, hi) = policy.period_bounds();
    let rare = policy.rare_logins.max(1);
    let n = logins_last_30_days;
    if n <= rare {
        return Duration::from_secs(hi);
    }
    if n >= policy.frequent_logins {
        return Duration::from_secs(lo);
    }
    // Here rare < n < frequent, so frequent / rare > 1 and the denominator is positive.
    let t = (f64::from(n) / f64::from(rare)).ln()
        / (f64::from(policy.frequent_logins) / f64::from(rare)).ln();
    let secs = hi as f64 - (hi - lo) as f64 * t.clamp(0.0, 1.0);
    let minutes = (secs / 60.0).round() * 60.0;
    // `as` saturates; the clamp keeps bounds that are not whole minutes exact.
    Duration::from_secs((minutes as u64).clamp(lo, hi))
}

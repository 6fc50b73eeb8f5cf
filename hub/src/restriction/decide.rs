//! Whether a new device is restricted at login, and why: the decision from the evidence,
//! the account's login habit and the last position of its established devices.

use qrcash_protocol::messages::RestrictionReason;
use serde::{Deserialize, Serialize};

use super::locate::trusted;
use super::{
    ActiveRestriction, DeviceFix, NewDeviceEvidence, RestrictionPolicy, SECS_PER_HOUR,
    restriction_period,
};

/// Why a new device is not restricted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum FreeReason {
    /// The two devices are close enough to be the same person's.
    WithinRange {
        /// The smallest plausible distance between them, km (see [`decide`]).
        distance_km: f64,
    },
}

/// What to do with a login from a new device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No restriction.
    Free {
        /// Why.
        reason: FreeReason,
    },
    /// No asset-decreasing function from this device until `until`.
    Restrict {
        /// Until when, Unix seconds (self-lifting: free again from this second on).
        until: u64,
        /// [`RestrictionReason::NewDevice`] or [`RestrictionReason::ImpossibleTravel`].
        reason: RestrictionReason,
        /// The smallest plausible distance between the devices, km; `None` when a position
        /// is unknown.
        distance_km: Option<f64>,
        /// That distance over the time between the two fixes, km/h; `None` when a position
        /// is unknown.
        speed_kmh: Option<f64>,
    },
}

impl Decision {
    /// The restriction to store for the new device, if any.
    pub fn restriction(&self) -> Option<ActiveRestriction> {
        match *self {
            Decision::Free { .. } => None,
            Decision::Restrict { until, reason, .. } => Some(ActiveRestriction {
                reason,
                until: Some(until),
            }),
        }
    }

    /// Whether the new device is restricted.
    pub fn is_restricted(&self) -> bool {
        matches!(self, Decision::Restrict { .. })
    }
}

/// Decides whether a login from a new device restricts it, and until when.
///
/// `new_device` is what the hub has on the new device's position; `existing_device_last` is
/// the last known position of the established device already in use on the account. A
/// position that is invalid or coarser than `max_trusted_accuracy_km` counts as unknown. The
/// smallest plausible distance between two fixes is the centre distance minus the larger of
/// `location_tolerance_km` and the two accuracy radii together (never below 0); a fix is
/// *impossible* when that distance is at least `speed_rule_min_distance_km` and the distance
/// over the time between the two fixes (at least one second) exceeds `impossible_speed_kmh`.
/// The rules, in order:
///
/// 1. the established device's position unknown → restrict, [`RestrictionReason::NewDevice`],
///    habit period ([`restriction_period`]);
/// 2. the observed or the claimed fix impossible → restrict,
///    [`RestrictionReason::ImpossibleTravel`], `max_period_secs`;
/// 3. the observed fix within `same_person_range_km`, and the claimed fix (if any) within
///    range too → [`Decision::Free`];
/// 4. otherwise (nothing observed, observed too far, or a claim too far) → restrict,
///    [`RestrictionReason::NewDevice`], habit period.
///
/// So a claim alone never frees a device: with nothing observed the answer is rule 1, 2 or 4.
/// Fix times after `now` count as `now`.
pub fn decide(
    policy: &RestrictionPolicy,
    new_device: NewDeviceEvidence,
    existing_device_last: Option<DeviceFix>,
    logins_last_30_days: u32,
    now: u64,
) -> Decision {
    let habit = |measured: Option<Measured>| Decision::Restrict {
        until: now.saturating_add(restriction_period(policy, logins_last_30_days).as_secs()),
        reason: RestrictionReason::NewDevice,
        distance_km: measured.map(|m| m.distance_km),
        speed_kmh: measured.map(|m| m.speed_kmh),
    };
    let known = |fix: Option<DeviceFix>| fix.filter(|f| trusted(&f.position, policy));
    let Some(existing) = known(existing_device_last) else {
        return habit(None);
    };
    let measure = |fix: Option<DeviceFix>| known(fix).map(|f| measure(policy, f, existing, now));
    let observed = measure(new_device.observed);
    let claimed = measure(new_device.claimed);

    if let Some(m) = [observed, claimed]
        .into_iter()
        .flatten()
        .find(|m| m.impossible)
    {
        let (_, hi) = policy.period_bounds();
        return Decision::Restrict {
            until: now.saturating_add(hi),
            reason: RestrictionReason::ImpossibleTravel,
            distance_km: Some(m.distance_km),
            speed_kmh: Some(m.speed_kmh),
        };
    }
    match (observed, claimed) {
        (Some(o), c) if o.within && c.is_none_or(|c| c.within) => Decision::Free {
            reason: FreeReason::WithinRange {
                distance_km: o.distance_km,
            },
        },
        // Report the figure that restricts: a claim out of range, else what was observed.
        (_, Some(c)) if !c.within => habit(Some(c)),
        (o, c) => habit(o.or(c)),
    }
}

/// One fix of the new device against the established device's last fix.
#[derive(Debug, Clone, Copy)]
struct Measured {
    distance_km: f64,
    speed_kmh: f64,
    within: bool,
    impossible: bool,
}

fn measure(policy: &RestrictionPolicy, new: DeviceFix, existing: DeviceFix, now: u64) -> Measured {
    let centre_km = new.position.distance_m(&existing.position) / 1_000.0;
    let error_km = policy
        .location_tolerance_km
        .max((new.position.accuracy_m + existing.position.accuracy_m) / 1_000.0);
    let distance_km = (centre_km - error_km).max(0.0);
    let elapsed_secs = new.at.min(now).abs_diff(existing.at.min(now)).max(1);
    let speed_kmh = distance_km / (elapsed_secs as f64 / SECS_PER_HOUR as f64);
    Measured {
        distance_km,
        speed_kmh,
        within: distance_km <= policy.same_person_range_km,
        impossible: distance_km >= policy.speed_rule_min_distance_km
            && speed_kmh > policy.impossible_speed_kmh,
    }
}

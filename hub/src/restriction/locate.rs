//! Where a device is: what the hub saw itself (payments, code presentations), estimated
//! into one position, and what the device claims.

use qrcash_protocol::Position;
use serde::{Deserialize, Serialize};

use super::{RestrictionPolicy, SECS_PER_DAY};

/// A position of a device at a time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeviceFix {
    /// Where, with its accuracy radius.
    pub position: Position,
    /// When, Unix seconds.
    pub at: u64,
}

/// A place and time the hub itself saw a device: the registered position of a merchant it
/// paid, or of an ATM where it presented a code. Never anything the device reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    /// When, Unix seconds.
    pub at: u64,
    /// The merchant's or the ATM's position.
    pub position: Position,
}

/// What the hub has on where a new device is, sorted by how far it can be believed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NewDeviceEvidence {
    /// Where the hub saw the device itself ([`observe_new_device`]). The only thing that can
    /// show the new device is beside the established one.
    pub observed: Option<DeviceFix>,
    /// Where the device says it is (its login's position). A claim: it can make the decision
    /// stricter (impossible travel, out of range), never, on its own, lift a restriction.
    pub claimed: Option<DeviceFix>,
}

impl NewDeviceEvidence {
    /// Observed evidence only.
    pub const fn observed(fix: Option<DeviceFix>) -> Self {
        NewDeviceEvidence {
            observed: fix,
            claimed: None,
        }
    }

    /// A claim only: what a brand-new device brings to its first login.
    pub const fn claimed(fix: Option<DeviceFix>) -> Self {
        NewDeviceEvidence {
            observed: None,
            claimed: fix,
        }
    }
}

/// Estimates where a device is now from where the hub saw it recently (the merchants it paid,
/// the ATMs it presented codes at), or `None` when those sightings do not point to one place.
/// The steps call each sighting a payment:
///
/// 1. Take the payments at most `estimate_window_secs` old with a valid position, the newest
///    `estimate_max_payments` of them (a payment dated after `now` counts as made `now`).
/// 2. Weigh each by recency: `w = 0.5^(age / estimate_half_life_secs)`.
/// 3. Find the medoid: the payment with the least weighted distance to all the others.
///    Payments within `same_person_range_km` of it form its cluster; the others are outliers
///    and are ignored. If the cluster carries no more than half the total weight, the device
///    is in no single place: `None`.
/// 4. The estimate is the weighted centroid of the cluster (on the sphere, so clusters across
///    the antimeridian work), with accuracy radius = weighted RMS distance of the cluster to
///    the centroid + weighted mean of the merchants' own accuracy +
///    `estimate_drift_km_per_day` × days since the cluster's newest payment.
///
/// [`decide`] treats an estimate whose radius exceeds `max_trusted_accuracy_km` as unknown,
/// so an estimate ages out of trust even inside the window.
pub fn estimate_position(
    payments: &[Sighting],
    now: u64,
    policy: &RestrictionPolicy,
) -> Option<Position> {
    let mut recent: Vec<(u64, Position)> = payments
        .iter()
        .filter(|p| p.position.validate().is_ok())
        .map(|p| (now.saturating_sub(p.at), p.position))
        .filter(|(age, _)| *age <= policy.estimate_window_secs)
        .collect();
    // Newest first; the sort is stable, so equal ages keep the caller's order.
    recent.sort_by_key(|(age, _)| *age);
    recent.truncate(usize::try_from(policy.estimate_max_payments).unwrap_or(usize::MAX));
    if recent.is_empty() {
        return None;
    }

    let half_life = policy.estimate_half_life_secs.max(1) as f64;
    let weights: Vec<f64> = recent
        .iter()
        .map(|(age, _)| 0.5_f64.powf(*age as f64 / half_life))
        .collect();
    let total: f64 = weights.iter().sum();

    let medoid = (0..recent.len())
        .map(|i| {
            let cost: f64 = recent
                .iter()
                .zip(&weights)
                .map(|((_, p), w)| w * recent[i].1.distance_m(p))
                .sum();
            (i, cost)
        })
        // Strictly smaller only: ties go to the newest payment.
        .fold(None::<(usize, f64)>, |best, (i, cost)| match best {
            Some((_, best_cost)) if best_cost <= cost => best,
            _ => Some((i, cost)),
        })
        .map(|(i, _)| recent[i].1)?;

    let range_m = policy.same_person_range_km * 1_000.0;
    let cluster: Vec<(u64, Position, f64)> = recent
        .iter()
        .zip(&weights)
        .filter(|((_, p), _)| medoid.distance_m(p) <= range_m)
        .map(|((age, p), w)| (*age, *p, *w))
        .collect();
    let cluster_weight: f64 = cluster.iter().map(|(_, _, w)| w).sum();
    // Weights are finite and non-negative; all of them underflowing to 0 also ends here.
    if cluster_weight * 2.0 <= total {
        return None;
    }

    let (mut x, mut y, mut z) = (0.0, 0.0, 0.0);
    for (_, p, w) in &cluster {
        let (lat, lon) = (p.lat.to_radians(), p.lon.to_radians());
        x += w * lat.cos() * lon.cos();
        y += w * lat.cos() * lon.sin();
        z += w * lat.sin();
    }
    let norm = (x * x + y * y + z * z).sqrt();
    if !norm.is_finite() || norm <= 1e-9 {
        return None;
    }
    let lat = (z / norm).clamp(-1.0, 1.0).asin().to_degrees();
    let lon = y.atan2(x).to_degrees();
    let centre = Position::new(lat, lon, 0.0);

    let spread_m = (cluster
        .iter()
        .map(|(_, p, w)| w * centre.distance_m(p).powi(2))
        .sum::<f64>()
        / cluster_weight)
        .sqrt();
    let merchant_accuracy_m = cluster
        .iter()
        .map(|(_, p, w)| w * p.accuracy_m)
        .sum::<f64>()
        / cluster_weight;
    let newest_age = cluster.iter().map(|(age, _, _)| *age).min().unwrap_or(0);
    let drift_m = policy.estimate_drift_km_per_day.max(0.0) * 1_000.0 * newest_age as f64
        / SECS_PER_DAY as f64;

    let estimate = Position::new(lat, lon, spread_m + merchant_accuracy_m + drift_m);
    estimate.validate().ok().map(|()| estimate)
}

/// Where the hub itself saw a new device, for [`NewDeviceEvidence::observed`]: the estimate
/// from its sightings ([`estimate_position`]) timed `now` (the estimate's accuracy already
/// covers its age), or `None`. A brand-new device has no sightings, so in practice this
/// speaks only for a device id the hub has seen pay or present a code before.
pub fn observe_new_device(
    sightings: &[Sighting],
    now: u64,
    policy: &RestrictionPolicy,
) -> Option<DeviceFix> {
    estimate_position(sightings, now, policy).map(|position| DeviceFix { position, at: now })
}

/// Whether a position is well-formed and precise enough to decide on.
pub(super) fn trusted(position: &Position, policy: &RestrictionPolicy) -> bool {
    position.validate().is_ok() && position.accuracy_m <= policy.max_trusted_accuracy_m()
}

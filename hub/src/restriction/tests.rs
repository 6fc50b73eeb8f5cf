use std::time::Duration;

use super::*;
use crate::identity::PinState;
use crate::store::rows::{AccountRow, DeviceRow, DeviceStatus};
use proptest::prelude::*;
use qrcash_protocol::Position;
use qrcash_protocol::messages::{
    AnswerNewDeviceAlert, BalanceQuery, BankWithdrawal, ChangePassword, ConfirmWithdrawal,
    DeclineWithdrawal, DeviceInfo, IdentityEvidence, Login, Payment, RegisterWithdrawal,
    SignOutOtherDevices, TopUp, Transfer,
};
use qrcash_protocol::messages::{PhoneUp, RejectReason, RestrictionInfo, RestrictionReason};
use qrcash_protocol::{Amount, Currency, PrivateKey, TxId};

const NOW: u64 = 1_760_000_000;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

const TOKYO: Position = Position::new(35.6812, 139.7671, 10.0);
const SHINJUKU: Position = Position::new(35.6896, 139.7006, 10.0);
const YOKOHAMA: Position = Position::new(35.4658, 139.6223, 10.0);
const OSAKA: Position = Position::new(34.7025, 135.4959, 10.0);

fn policy() -> RestrictionPolicy {
    RestrictionPolicy::default()
}

fn fix(position: Position, at: u64) -> Option<DeviceFix> {
    Some(DeviceFix { position, at })
}

/// What the hub observed itself, with no claim.
fn seen(fix: Option<DeviceFix>) -> NewDeviceEvidence {
    NewDeviceEvidence::observed(fix)
}

fn paid(position: Position, age: u64) -> Sighting {
    Sighting {
        at: NOW - age,
        position,
    }
}

fn km(a: &Position, b: &Position) -> f64 {
    a.distance_m(b) / 1_000.0
}

// --- policy ---------------------------------------------------------------------------

#[test]
fn defaults_are_the_documented_figures_and_valid() {
    let p = policy();
    assert_eq!(p.min_period(), Duration::from_secs(HOUR));
    assert_eq!(p.max_period(), Duration::from_secs(72 * HOUR));
    assert_eq!(p.login_window(), Duration::from_secs(30 * DAY));
    assert_eq!((p.rare_logins, p.frequent_logins), (1, 30));
    assert_eq!(p.same_person_range_km, 20.0);
    assert_eq!(p.location_tolerance_km, 50.0);
    assert_eq!(p.max_trusted_accuracy_km, 25.0);
    assert_eq!(p.impossible_speed_kmh, 900.0);
    assert_eq!(p.speed_rule_min_distance_km, 100.0);
    assert_eq!(p.estimate_window_secs, 7 * DAY);
    assert_eq!(p.estimate_max_payments, 10);
    assert_eq!(p.estimate_half_life_secs, DAY);
    assert_eq!(p.estimate_drift_km_per_day, 10.0);
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn toml_table_is_partial_and_strict() {
    let p: RestrictionPolicy = toml::from_str("").expect("empty table");
    assert_eq!(p, policy());
    let p: RestrictionPolicy =
        toml::from_str("min_period_secs = 7200\nsame_person_range_km = 5.5\n")
            .expect("partial table");
    assert_eq!(p.min_period_secs, 7_200);
    assert_eq!(p.same_person_range_km, 5.5);
    assert_eq!(p.max_period_secs, policy().max_period_secs);
    let typo = toml::from_str::<RestrictionPolicy>("min_period = 7200");
    assert!(
        typo.is_err(),
        "a misspelt key must not silently keep the default"
    );
}

#[test]
fn validate_names_each_bad_figure() {
    let bad = |f: fn(&mut RestrictionPolicy)| {
        let mut p = policy();
        f(&mut p);
        p.validate().expect_err("must be refused")
    };
    assert_eq!(
        bad(|p| p.min_period_secs = 100 * HOUR),
        PolicyError::PeriodBounds {
            min: 100 * HOUR,
            max: 72 * HOUR
        }
    );
    assert!(matches!(
        bad(|p| p.rare_logins = 0),
        PolicyError::LoginBounds { rare: 0, .. }
    ));
    assert!(matches!(
        bad(|p| p.frequent_logins = 1),
        PolicyError::LoginBounds { .. }
    ));
    assert_eq!(
        bad(|p| p.location_tolerance_km = -1.0),
        PolicyError::NotAFigure {
            field: "location_tolerance_km",
            value: -1.0
        }
    );
    assert!(matches!(
        bad(|p| p.impossible_speed_kmh = f64::NAN),
        PolicyError::NotAFigure {
            field: "impossible_speed_kmh",
            ..
        }
    ));
    assert!(matches!(
        bad(|p| p.max_trusted_accuracy_km = f64::INFINITY),
        PolicyError::NotAFigure { .. }
    ));
    assert_eq!(
        bad(|p| p.estimate_half_life_secs = 0),
        PolicyError::Zero {
            field: "estimate_half_life_secs"
        }
    );
    assert_eq!(
        bad(|p| p.min_period_secs = 0),
        PolicyError::Zero {
            field: "min_period_secs"
        }
    );
    let msg = bad(|p| p.min_period_secs = 100 * HOUR).to_string();
    assert!(
        msg.contains("min_period_secs") && msg.contains("max_period_secs"),
        "{msg}"
    );
}

// --- period ---------------------------------------------------------------------------

/// The table in `docs/restriction.md` is what the code computes.
#[test]
fn period_table_in_docs_matches_code() {
    let doc = include_str!("../../../docs/restriction.md");
    let start = doc.find("<!-- period-table").expect("table start marker");
    let end = doc.find("<!-- end period-table").expect("table end marker");
    let rows: Vec<(u32, u64)> = doc[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "| n | text | secs |" splits into ["", n, text, secs, ""].
            Some((cells.get(1)?.parse().ok()?, cells.get(3)?.parse().ok()?))
        })
        .collect();
    let counts: Vec<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [0, 1, 5, 10, 20, 30, 60]);
    for (n, secs) in rows {
        assert_eq!(
            restriction_period(&policy(), n).as_secs(),
            secs,
            "{n} logins"
        );
    }
}

#[test]
fn period_is_max_when_rare_min_when_frequent_in_minutes_between() {
    let p = policy();
    assert_eq!(restriction_period(&p, 0), p.max_period());
    assert_eq!(restriction_period(&p, 1), p.max_period());
    assert_eq!(restriction_period(&p, 30), p.min_period());
    assert_eq!(restriction_period(&p, u32::MAX), p.min_period());
    for n in 2..30 {
        let d = restriction_period(&p, n);
        assert!(p.min_period() < d && d < p.max_period(), "{n}: {d:?}");
        assert_eq!(d.as_secs() % 60, 0, "{n}: whole minutes");
    }
    // Log scale: the first extra logins shorten the period most.
    let step = |n| restriction_period(&p, n).as_secs() - restriction_period(&p, n + 1).as_secs();
    assert!(step(1) > step(10) && step(10) > step(28));
}

/// Exhaustive for the defaults: every count from 0 past the saturation point (all counts
/// ≥ `frequent_logins` give the same answer by construction).
#[test]
fn period_is_non_increasing_and_bounded_for_every_count() {
    let p = policy();
    let mut last = restriction_period(&p, 0);
    for n in (1..=1_000).chain([u32::MAX - 1, u32::MAX]) {
        let d = restriction_period(&p, n);
        assert!(d <= last, "{n}: {d:?} > {last:?}");
        assert!(p.min_period() <= d && d <= p.max_period(), "{n}: {d:?}");
        last = d;
    }
}

/// Any policy, valid or not (reversed bounds, zero or reversed login counts, a maximum
/// near `u64::MAX`).
fn any_policy() -> impl Strategy<Value = RestrictionPolicy> {
    (
        0..10 * DAY,
        prop_oneof![0..20 * DAY, (u64::MAX - 1_000)..=u64::MAX],
        0u32..50,
        0u32..200,
    )
        .prop_map(|(min, max, rare, frequent)| RestrictionPolicy {
            min_period_secs: min,
            max_period_secs: max,
            rare_logins: rare,
            frequent_logins: frequent,
            ..RestrictionPolicy::default()
        })
}

fn any_count() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..300, any::<u32>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Non-increasing in the count and within the (ordered) bounds, for any policy.
    #[test]
    fn period_is_monotone_and_bounded_for_any_policy(
        p in any_policy(),
        a in any_count(),
        b in any_count(),
    ) {
        let lo = p.min_period_secs.min(p.max_period_secs);
        let hi = p.min_period_secs.max(p.max_period_secs);
        let (fewer, more) = (a.min(b), a.max(b));
        let (long, short) = (
            restriction_period(&p, fewer).as_secs(),
            restriction_period(&p, more).as_secs(),
        );
        prop_assert!(long >= short, "{fewer} → {long} s but {more} → {short} s");
        prop_assert!((lo..=hi).contains(&long) && (lo..=hi).contains(&short));
    }
}

// --- estimate -------------------------------------------------------------------------

#[test]
fn single_payment_is_its_merchant_with_drift_added() {
    let p = policy();
    let merchant = Position::new(35.0, 139.0, 30.0);
    let e = estimate_position(&[paid(merchant, 0)], NOW, &p).expect("one payment");
    assert!(km(&e, &merchant) < 0.001);
    assert!((e.accuracy_m - 30.0).abs() < 1e-6, "{}", e.accuracy_m);
    // Half a day later: 5 km of drift at 10 km/day.
    let e = estimate_position(&[paid(merchant, DAY / 2)], NOW, &p).expect("one payment");
    assert!((e.accuracy_m - 5_030.0).abs() < 1e-6, "{}", e.accuracy_m);
}

#[test]
fn cluster_gives_centroid_with_spread_as_accuracy() {
    let p = policy();
    let pays = [paid(TOKYO, HOUR), paid(SHINJUKU, HOUR)];
    let e = estimate_position(&pays, NOW, &p).expect("cluster");
    let half = km(&TOKYO, &SHINJUKU) / 2.0;
    assert!((km(&e, &TOKYO) - half).abs() < 0.05, "{e:?}");
    assert!((km(&e, &SHINJUKU) - half).abs() < 0.05, "{e:?}");
    // Spread (each ~3 km from the centroid) + merchant accuracy + 1 h of drift.
    let expected_m = half * 1_000.0 + 10.0 + 10_000.0 / 24.0;
    assert!(
        (e.accuracy_m - expected_m).abs() < 50.0,
        "{} vs {expected_m}",
        e.accuracy_m
    );
}

#[test]
fn outlier_far_away_is_ignored() {
    let p = policy();
    let pays = [
        paid(TOKYO, HOUR),
        paid(SHINJUKU, 2 * HOUR),
        paid(TOKYO, 3 * HOUR),
        paid(OSAKA, 30 * 60), // the newest, but alone
        paid(SHINJUKU, 4 * HOUR),
    ];
    let e = estimate_position(&pays, NOW, &p).expect("cluster");
    assert!(km(&e, &TOKYO) < 10.0, "{e:?}");
    assert!(
        e.accuracy_m < 10_000.0,
        "outlier must not inflate accuracy: {e:?}"
    );
    // Without the outlier rule the centroid would be ~80 km towards Osaka.
    assert!(km(&e, &OSAKA) > 390.0);
}

#[test]
fn payments_in_two_places_of_equal_weight_give_no_estimate() {
    let p = policy();
    let pays = [paid(TOKYO, HOUR), paid(OSAKA, HOUR)];
    assert_eq!(estimate_position(&pays, NOW, &p), None);
}

#[test]
fn recent_payments_outweigh_older_ones() {
    let p = policy();
    let pays = [
        paid(OSAKA, 6 * DAY),
        paid(OSAKA, 6 * DAY),
        paid(OSAKA, 6 * DAY),
        paid(TOKYO, HOUR),
        paid(SHINJUKU, 2 * HOUR),
    ];
    let e = estimate_position(&pays, NOW, &p).expect("recent cluster wins");
    assert!(km(&e, &TOKYO) < 10.0, "{e:?}");
    // The same payments all equally old: Osaka has the majority.
    let flat: Vec<Sighting> = pays.iter().map(|f| paid(f.position, HOUR)).collect();
    let e = estimate_position(&flat, NOW, &p).expect("majority cluster");
    assert!(km(&e, &OSAKA) < 1.0, "{e:?}");
}

#[test]
fn payments_too_old_or_unusable_give_no_estimate() {
    let p = policy();
    assert_eq!(estimate_position(&[], NOW, &p), None);
    let old = [paid(TOKYO, 7 * DAY + 1), paid(SHINJUKU, 30 * DAY)];
    assert_eq!(estimate_position(&old, NOW, &p), None);
    assert!(estimate_position(&[paid(TOKYO, 7 * DAY)], NOW, &p).is_some());
    let nonsense = [
        paid(Position::new(f64::NAN, 139.0, 0.0), HOUR),
        paid(Position::new(95.0, 139.0, 0.0), HOUR),
        paid(Position::new(35.0, 139.0, -5.0), HOUR),
    ];
    assert_eq!(estimate_position(&nonsense, NOW, &p), None);
    let mut none = policy();
    none.estimate_max_payments = 0;
    assert_eq!(estimate_position(&[paid(TOKYO, HOUR)], NOW, &none), None);
}

#[test]
fn invalid_positions_are_skipped_not_fatal() {
    let p = policy();
    let pays = [
        paid(Position::new(f64::NAN, 0.0, 0.0), 0),
        paid(TOKYO, HOUR),
    ];
    let e = estimate_position(&pays, NOW, &p).expect("valid payment remains");
    assert!(km(&e, &TOKYO) < 0.001);
}

#[test]
fn only_the_newest_payments_count() {
    let mut p = policy();
    p.estimate_max_payments = 3;
    let mut pays: Vec<Sighting> = (0..3).map(|i| paid(TOKYO, HOUR + i)).collect();
    // More, older payments in Osaka that would be the majority.
    pays.extend((0..5).map(|i| paid(OSAKA, 2 * HOUR + i)));
    let e = estimate_position(&pays, NOW, &p).expect("estimate");
    assert!(km(&e, &TOKYO) < 0.001, "{e:?}");
}

#[test]
fn cluster_across_the_antimeridian_stays_there() {
    let p = policy();
    let east = Position::new(-17.0, 179.99, 0.0);
    let west = Position::new(-17.0, -179.99, 0.0);
    let e = estimate_position(&[paid(east, HOUR), paid(west, HOUR)], NOW, &p).expect("cluster");
    assert!(e.lon.abs() > 179.9, "{e:?}");
    assert!(km(&e, &east) < 2.0 && km(&e, &west) < 2.0, "{e:?}");
}

#[test]
fn accuracy_grows_with_age_and_future_payments_count_as_now() {
    let p = policy();
    let mut last = 0.0;
    for age in [0, HOUR, DAY, 2 * DAY, 7 * DAY] {
        let e = estimate_position(&[paid(TOKYO, age)], NOW, &p).expect("estimate");
        assert!(e.accuracy_m > last || age == 0, "{age}: {e:?}");
        last = e.accuracy_m;
    }
    let future = Sighting {
        at: NOW + HOUR,
        position: TOKYO,
    };
    let e = estimate_position(&[future], NOW, &p).expect("estimate");
    assert_eq!(e.accuracy_m, TOKYO.accuracy_m);
}

// --- locate ---------------------------------------------------------------------------

#[test]
fn the_observed_position_is_the_estimate_from_sightings_timed_now() {
    let p = policy();
    let l = observe_new_device(&[paid(OSAKA, HOUR)], NOW, &p).expect("estimated");
    assert!(km(&l.position, &OSAKA) < 0.001);
    assert_eq!(l.at, NOW);
    assert_eq!(observe_new_device(&[], NOW, &p), None);
}

// --- decide ---------------------------------------------------------------------------

#[test]
fn unknown_position_restricts_with_habit_period() {
    let p = policy();
    for (new, existing) in [
        (None, fix(TOKYO, NOW - HOUR)),
        (fix(TOKYO, NOW), None),
        (None, None),
        // Coarser than the trust limit counts as unknown.
        (
            fix(Position::new(35.68, 139.77, 25_001.0), NOW),
            fix(TOKYO, NOW - HOUR),
        ),
        (
            fix(TOKYO, NOW),
            fix(Position::new(f64::NAN, 0.0, 1.0), NOW - HOUR),
        ),
    ] {
        let d = decide(&p, seen(new), existing, 10, NOW);
        assert_eq!(
            d,
            Decision::Restrict {
                until: NOW + restriction_period(&p, 10).as_secs(),
                reason: RestrictionReason::NewDevice,
                distance_km: None,
                speed_kmh: None,
            },
            "{new:?} / {existing:?}"
        );
    }
}

#[test]
fn same_city_is_free() {
    let p = policy();
    // Tokyo station – Yokohama is ~28 km: within 20 km once the 50 km tolerance is off.
    let d = decide(
        &p,
        seen(fix(YOKOHAMA, NOW)),
        fix(TOKYO, NOW - 5 * 60),
        0,
        NOW,
    );
    assert_eq!(
        d,
        Decision::Free {
            reason: FreeReason::WithinRange { distance_km: 0.0 }
        }
    );
    assert_eq!(d.restriction(), None);
    assert!(!d.is_restricted());
    // Even the same second: a precise same-place fix is never "impossible travel".
    let d = decide(&p, seen(fix(TOKYO, NOW)), fix(SHINJUKU, NOW), 0, NOW);
    assert!(!d.is_restricted());
}

#[test]
fn free_zone_ends_at_range_plus_tolerance() {
    let p = policy();
    // Points due north of Tokyo at 69.9 km and 70.1 km centre distance (20 km + 50 km).
    let north = |centre_km: f64| {
        let dlat = (centre_km * 1_000.0 / qrcash_protocol::geo::EARTH_RADIUS_M).to_degrees();
        Position::new(TOKYO.lat + dlat, TOKYO.lon, 0.0)
    };
    let origin = Position::new(TOKYO.lat, TOKYO.lon, 0.0);
    let inside = decide(
        &p,
        seen(fix(north(69.9), NOW)),
        fix(origin, NOW - DAY),
        30,
        NOW,
    );
    assert!(!inside.is_restricted(), "{inside:?}");
    let outside = decide(
        &p,
        seen(fix(north(70.1), NOW)),
        fix(origin, NOW - DAY),
        30,
        NOW,
    );
    assert!(
        matches!(
            outside,
            Decision::Restrict {
                reason: RestrictionReason::NewDevice,
                ..
            }
        ),
        "{outside:?}"
    );
}

#[test]
fn accuracy_beyond_the_tolerance_widens_the_free_zone() {
    let mut p = policy();
    p.location_tolerance_km = 0.0;
    // ~28 km apart: beyond 20 km with precise fixes...
    let precise = decide(&p, seen(fix(YOKOHAMA, NOW)), fix(TOKYO, NOW - DAY), 0, NOW);
    assert!(precise.is_restricted());
    // ...within it when each fix is only good to 5 km.
    let vague = |pos: Position| Position::new(pos.lat, pos.lon, 5_000.0);
    let d = decide(
        &p,
        seen(fix(vague(YOKOHAMA), NOW)),
        fix(vague(TOKYO), NOW - DAY),
        0,
        NOW,
    );
    assert!(!d.is_restricted(), "{d:?}");
}

#[test]
fn far_but_reachable_restricts_as_new_device_with_habit_period() {
    let p = policy();
    // Tokyo → Osaka in a day is an ordinary trip.
    let d = decide(&p, seen(fix(OSAKA, NOW)), fix(TOKYO, NOW - DAY), 20, NOW);
    let Decision::Restrict {
        until,
        reason,
        distance_km,
        speed_kmh,
    } = d
    else {
        panic!("expected a restriction, got {d:?}");
    };
    assert_eq!(reason, RestrictionReason::NewDevice);
    assert_eq!(until, NOW + restriction_period(&p, 20).as_secs());
    let dist = distance_km.expect("distance");
    assert!((dist - (km(&OSAKA, &TOKYO) - 50.0)).abs() < 1e-6, "{dist}");
    let speed = speed_kmh.expect("speed");
    assert!((speed - dist / 24.0).abs() < 1e-9, "{speed}");
    assert_eq!(
        d.restriction(),
        Some(ActiveRestriction {
            reason: RestrictionReason::NewDevice,
            until: Some(until)
        })
    );
}

#[test]
fn impossible_travel_restricts_for_the_maximum() {
    let p = policy();
    // Tokyo → Osaka (~350 km after tolerance) in 10 minutes: ~2,100 km/h.
    let d = decide(&p, seen(fix(OSAKA, NOW)), fix(TOKYO, NOW - 600), 60, NOW);
    let Decision::Restrict {
        until,
        reason,
        speed_kmh,
        ..
    } = d
    else {
        panic!("expected a restriction, got {d:?}");
    };
    assert_eq!(reason, RestrictionReason::ImpossibleTravel);
    assert_eq!(
        until,
        NOW + p.max_period_secs,
        "max period despite 60 logins"
    );
    assert!(speed_kmh.expect("speed") > 2_000.0);
    // Fix times in the future count as now; zero elapsed time counts as one second.
    let d = decide(
        &p,
        seen(fix(OSAKA, NOW + 50)),
        fix(TOKYO, NOW + 100),
        60,
        NOW,
    );
    match d {
        Decision::Restrict {
            reason: RestrictionReason::ImpossibleTravel,
            speed_kmh: Some(s),
            ..
        } => assert!(s.is_finite() && s > 1e6, "{s}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn speed_rule_needs_the_minimum_distance_and_a_speed_above_the_threshold() {
    let p = policy();
    let origin = Position::new(TOKYO.lat, TOKYO.lon, 0.0);
    let north = |centre_km: f64| {
        let dlat = (centre_km * 1_000.0 / qrcash_protocol::geo::EARTH_RADIUS_M).to_degrees();
        Position::new(TOKYO.lat + dlat, TOKYO.lon, 0.0)
    };
    // 80 km left after tolerance, in one minute: fast, but below the 100 km minimum.
    let d = decide(
        &p,
        seen(fix(north(130.0), NOW)),
        fix(origin, NOW - 60),
        0,
        NOW,
    );
    assert!(
        matches!(
            d,
            Decision::Restrict {
                reason: RestrictionReason::NewDevice,
                ..
            }
        ),
        "{d:?}"
    );
    // 900 km left in one hour: the speed is the threshold; it must be exceeded.
    let (far, hour_ago) = (fix(north(950.0), NOW), fix(origin, NOW - HOUR));
    let Decision::Restrict {
        speed_kmh: Some(s), ..
    } = decide(&p, seen(far), hour_ago, 0, NOW)
    else {
        panic!("beyond range must restrict");
    };
    assert!((s - 900.0).abs() < 1e-6, "{s}");
    let reason_with = |f: fn(&mut RestrictionPolicy, f64), value: f64, new, old| {
        let mut q = policy();
        f(&mut q, value);
        match decide(&q, seen(new), old, 0, NOW) {
            Decision::Restrict { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    };
    let speed = |q: &mut RestrictionPolicy, v: f64| q.impossible_speed_kmh = v;
    assert_eq!(
        reason_with(speed, s, far, hour_ago),
        RestrictionReason::NewDevice
    );
    assert_eq!(
        reason_with(speed, s.next_down(), far, hour_ago),
        RestrictionReason::ImpossibleTravel
    );
    // The minimum distance is inclusive: 900 km in a minute, minimum set to exactly it.
    let minute_ago = fix(origin, NOW - 60);
    let Decision::Restrict {
        distance_km: Some(dist),
        ..
    } = decide(&p, seen(far), minute_ago, 0, NOW)
    else {
        panic!("beyond range must restrict");
    };
    let min_distance = |q: &mut RestrictionPolicy, v: f64| q.speed_rule_min_distance_km = v;
    assert_eq!(
        reason_with(min_distance, dist, far, minute_ago),
        RestrictionReason::ImpossibleTravel
    );
    assert_eq!(
        reason_with(min_distance, dist.next_up(), far, minute_ago),
        RestrictionReason::NewDevice
    );
}

#[test]
fn position_estimated_from_payments_near_the_other_device_is_free() {
    let p = policy();
    // No position with the login; the new device paid around Shinjuku this morning.
    let pays = [
        paid(SHINJUKU, 2 * HOUR),
        paid(SHINJUKU, 3 * HOUR),
        paid(TOKYO, 5 * HOUR),
    ];
    let located = observe_new_device(&pays, NOW, &p);
    let d = decide(&p, seen(located), fix(TOKYO, NOW - HOUR), 0, NOW);
    assert!(!d.is_restricted(), "{d:?}");
}

#[test]
fn position_estimated_from_payments_far_from_the_other_device_restricts() {
    let p = policy();
    let pays = [paid(OSAKA, 2 * HOUR), paid(OSAKA, 3 * HOUR)];
    let located = observe_new_device(&pays, NOW, &p);
    // The owner's phone was in Tokyo yesterday: reachable, so a new-device restriction.
    let d = decide(&p, seen(located), fix(TOKYO, NOW - DAY), 5, NOW);
    assert_eq!(
        d.restriction(),
        Some(ActiveRestriction {
            reason: RestrictionReason::NewDevice,
            until: Some(NOW + restriction_period(&p, 5).as_secs())
        })
    );
    // ...and ten minutes ago: impossible.
    let d = decide(&p, seen(located), fix(TOKYO, NOW - 600), 5, NOW);
    assert!(
        matches!(
            d,
            Decision::Restrict {
                reason: RestrictionReason::ImpossibleTravel,
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn stale_estimate_is_not_trusted() {
    let p = policy();
    // Paid next to the other device, but three days ago: drift makes it 30 km vague.
    let located = observe_new_device(&[paid(TOKYO, 3 * DAY)], NOW, &p).expect("estimate");
    assert!(located.position.accuracy_m > 25_000.0);
    let d = decide(&p, seen(Some(located)), fix(TOKYO, NOW - HOUR), 0, NOW);
    assert!(
        matches!(
            d,
            Decision::Restrict {
                distance_km: None,
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn a_claimed_position_never_frees_a_device_on_its_own() {
    let p = policy();
    // A fraudster with a phished password claims to stand next to the owner's phone.
    let claim = NewDeviceEvidence::claimed(fix(SHINJUKU, NOW));
    let d = decide(&p, claim, fix(TOKYO, NOW - 60), 30, NOW);
    assert_eq!(
        d,
        Decision::Restrict {
            until: NOW + restriction_period(&p, 30).as_secs(),
            reason: RestrictionReason::NewDevice,
            distance_km: Some(0.0),
            speed_kmh: Some(0.0),
        }
    );
}

#[test]
fn a_claim_can_only_make_the_decision_stricter() {
    let p = policy();
    let near = fix(SHINJUKU, NOW);
    // Observed near, claimed near: free (the claim agrees).
    let both = NewDeviceEvidence {
        observed: near,
        claimed: near,
    };
    assert!(!decide(&p, both, fix(TOKYO, NOW - HOUR), 0, NOW).is_restricted());
    // Observed near but claiming Osaka a day later: out of range, so the habit period.
    let far = NewDeviceEvidence {
        observed: near,
        claimed: fix(OSAKA, NOW),
    };
    let d = decide(&p, far, fix(TOKYO, NOW - DAY), 5, NOW);
    assert_eq!(
        d.restriction(),
        Some(ActiveRestriction {
            reason: RestrictionReason::NewDevice,
            until: Some(NOW + restriction_period(&p, 5).as_secs()),
        })
    );
    // Claiming Osaka ten minutes after the owner was in Tokyo: impossible travel.
    let d = decide(&p, far, fix(TOKYO, NOW - 600), 5, NOW);
    assert_eq!(
        d.restriction(),
        Some(ActiveRestriction {
            reason: RestrictionReason::ImpossibleTravel,
            until: Some(NOW + p.max_period_secs),
        })
    );
    // An unusable claim is no claim.
    let vague = NewDeviceEvidence {
        observed: near,
        claimed: fix(Position::new(35.0, 139.0, 90_000.0), NOW),
    };
    assert!(!decide(&p, vague, fix(TOKYO, NOW - HOUR), 0, NOW).is_restricted());
}

fn any_position() -> impl Strategy<Value = Position> {
    (-80.0..80.0, -180.0..180.0, 0.0..30_000.0)
        .prop_map(|(lat, lon, acc)| Position::new(lat, lon, acc))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Free exactly when both positions are trusted and the smallest plausible distance
    /// is within range; a restriction ends after `now` and no later than the maximum;
    /// moving the new device farther away (north, when already north) never frees it.
    #[test]
    fn decide_is_consistent_for_any_pair(
        existing in any_position(),
        dlat in prop_oneof![-2.0f64..2.0, -40.0f64..40.0],
        new_accuracy in 0.0..30_000.0,
        age in 0..3 * DAY,
        logins in 0u32..80,
    ) {
        let p = policy();
        let new = Position::new(
            (existing.lat + dlat).clamp(-89.0, 89.0),
            existing.lon,
            new_accuracy,
        );
        let at_existing = NOW - age;
        let d = decide(&p, seen(fix(new, NOW)), fix(existing, at_existing), logins, NOW);
        let known = new.accuracy_m <= 25_000.0 && existing.accuracy_m <= 25_000.0;
        let min_km = (km(&new, &existing)
            - 50.0_f64.max((new.accuracy_m + existing.accuracy_m) / 1_000.0))
        .max(0.0);
        prop_assert_eq!(d.is_restricted(), !known || min_km > 20.0, "{:?}", d);
        // The same position, only claimed, never frees.
        let claim = NewDeviceEvidence::claimed(fix(new, NOW));
        prop_assert!(decide(&p, claim, fix(existing, at_existing), logins, NOW).is_restricted());
        if let Decision::Restrict { until, .. } = d {
            prop_assert!(until > NOW && until <= NOW + p.max_period_secs, "{:?}", d);
        }
        if new.lat >= existing.lat && new.lat < 88.0 {
            let farther = Position::new(new.lat + 0.5, new.lon, new.accuracy_m);
            let d2 = decide(&p, seen(fix(farther, NOW)), fix(existing, at_existing), logins, NOW);
            prop_assert!(!d.is_restricted() || d2.is_restricted(), "{:?} → {:?}", d, d2);
        }
    }
}

// --- functions and check ------------------------------------------------------------

#[test]
fn exactly_the_money_out_functions_decrease_assets() {
    let decreasing: Vec<Function> = Function::ALL
        .into_iter()
        .filter(|f| f.decreases_assets())
        .collect();
    assert_eq!(
        decreasing,
        [
            Function::WithdrawalRegister,
            Function::WithdrawalConfirm,
            Function::Transfer,
            Function::Payment,
            Function::BankWithdrawal,
            Function::TopUp,
        ]
    );
}

#[test]
fn names_are_unique_and_match_serde() {
    let mut seen = std::collections::HashSet::new();
    for f in Function::ALL {
        assert!(seen.insert(f.as_str()), "duplicate {}", f.as_str());
        let json = serde_json::to_string(&f).expect("serialise");
        assert_eq!(json, format!("\"{}\"", f.as_str()));
    }
}

#[test]
fn every_phone_message_maps_to_its_function() {
    let amount = Amount::new(10_000, Currency::JPY);
    let tx = TxId([7; 16]);
    let cases = [
        (
            PhoneUp::Login(Login {
                account: "a".into(),
                password: qrcash_protocol::SealedSecret {
                    kid: "k".into(),
                    enc: "e".into(),
                    ct: "c".into(),
                },
                device: DeviceInfo {
                    device_id: "d".into(),
                    name: "n".into(),
                    public_key: PrivateKey::generate().public().to_jwk(),
                },
                position: None,
            }),
            Function::Login,
        ),
        (
            PhoneUp::RegisterWithdrawal(RegisterWithdrawal {
                account: "a".into(),
                amount,
            }),
            Function::WithdrawalRegister,
        ),
        (
            PhoneUp::ConfirmWithdrawal(ConfirmWithdrawal {
                tx_id: tx,
                atm_id: "atm".into(),
                amount,
                challenge: "c".into(),
                position: None,
                identity: IdentityEvidence::default(),
            }),
            Function::WithdrawalConfirm,
        ),
        (
            PhoneUp::DeclineWithdrawal(DeclineWithdrawal {
                tx_id: tx,
                not_me: true,
            }),
            Function::WithdrawalDecline,
        ),
        (
            PhoneUp::Transfer(Transfer {
                idempotency_key: "k".into(),
                to_account: "b".into(),
                amount,
                memo: None,
            }),
            Function::Transfer,
        ),
        (
            PhoneUp::Payment(Payment {
                idempotency_key: "k".into(),
                merchant_id: "m".into(),
                amount,
            }),
            Function::Payment,
        ),
        (
            PhoneUp::BankWithdrawal(BankWithdrawal {
                idempotency_key: "k".into(),
                bank_account: "b".into(),
                amount,
            }),
            Function::BankWithdrawal,
        ),
        (
            PhoneUp::TopUp(TopUp {
                idempotency_key: "k".into(),
                amount,
                from: "f".into(),
            }),
            Function::TopUp,
        ),
        (
            PhoneUp::BalanceQuery(BalanceQuery {
                account: "a".into(),
                history: 5,
            }),
            Function::BalanceQuery,
        ),
        (
            PhoneUp::AnswerNewDeviceAlert(AnswerNewDeviceAlert {
                alert_id: "x".into(),
                not_me: true,
            }),
            Function::AnswerNewDeviceAlert,
        ),
        (
            PhoneUp::ChangePassword(ChangePassword {
                current_password: qrcash_protocol::SealedSecret {
                    kid: "k".into(),
                    enc: "e".into(),
                    ct: "c".into(),
                },
                new_password: qrcash_protocol::SealedSecret {
                    kid: "k".into(),
                    enc: "e".into(),
                    ct: "c".into(),
                },
            }),
            Function::ChangePassword,
        ),
        (
            PhoneUp::SignOutOtherDevices(SignOutOtherDevices {}),
            Function::SignOutOtherDevices,
        ),
    ];
    for (msg, f) in &cases {
        assert_eq!(Function::of(msg), *f, "{msg:?}");
    }
    // Every function except the hub-side credit is reachable from a phone message.
    let mapped: std::collections::HashSet<Function> = cases.iter().map(|(_, f)| *f).collect();
    for f in Function::ALL {
        assert_eq!(mapped.contains(&f), f != Function::ReceiveTransfer, "{f:?}");
    }
}

#[test]
fn no_restriction_lets_everything_through() {
    for f in Function::ALL {
        assert_eq!(check(f, None, NOW), Ok(()), "{f:?}");
    }
}

#[test]
fn timed_restriction_blocks_money_out_until_it_lifts_itself() {
    let until = NOW + HOUR;
    for reason in [
        RestrictionReason::NewDevice,
        RestrictionReason::ImpossibleTravel,
    ] {
        let r = ActiveRestriction {
            reason,
            until: Some(until),
        };
        for f in Function::ALL {
            let before = check(f, Some(&r), until - 1);
            let at = check(f, Some(&r), until);
            if f.decreases_assets() {
                assert_eq!(before, Err(RejectReason::Restricted { until }), "{f:?}");
            } else {
                assert_eq!(before, Ok(()), "{f:?}");
            }
            assert_eq!(at, Ok(()), "{f:?} at until");
            assert_eq!(check(f, Some(&r), u64::MAX), Ok(()), "{f:?} long after");
        }
        assert!(r.is_active(until - 1) && !r.is_active(until));
    }
}

#[test]
fn frozen_account_blocks_money_out_until_an_operator_lifts_it() {
    let frozen = ActiveRestriction::frozen();
    assert_eq!(frozen.until, None);
    for f in Function::ALL {
        let expected = if f.decreases_assets() {
            Err(RejectReason::AccountFrozen)
        } else {
            Ok(())
        };
        assert_eq!(check(f, Some(&frozen), NOW), expected, "{f:?}");
        assert_eq!(check(f, Some(&frozen), u64::MAX), expected, "{f:?} forever");
    }
    // An open-ended restriction of another reason is a freeze too.
    let open = ActiveRestriction {
        reason: RestrictionReason::NewDevice,
        until: None,
    };
    assert_eq!(
        check(Function::Transfer, Some(&open), NOW),
        Err(RejectReason::AccountFrozen)
    );
    // A timed freeze reports the freeze while active and lifts at its end.
    let timed = ActiveRestriction {
        reason: RestrictionReason::AccountFrozen,
        until: Some(NOW + 10),
    };
    assert_eq!(
        check(Function::Payment, Some(&timed), NOW),
        Err(RejectReason::AccountFrozen)
    );
    assert_eq!(check(Function::Payment, Some(&timed), NOW + 10), Ok(()));
}

#[test]
fn restriction_converts_to_and_from_the_wire_form() {
    let r = ActiveRestriction {
        reason: RestrictionReason::ImpossibleTravel,
        until: Some(NOW),
    };
    let info: RestrictionInfo = r.into();
    assert_eq!(
        info,
        RestrictionInfo {
            until: Some(NOW),
            reason: RestrictionReason::ImpossibleTravel
        }
    );
    assert_eq!(ActiveRestriction::from(info), r);
    assert_eq!(ActiveRestriction::frozen().info().until, None);
}

fn account(frozen: bool) -> AccountRow {
    AccountRow {
        id: "a".into(),
        currency: Currency::JPY,
        password_hash: String::new(),
        pin_hash: String::new(),
        created_at: 0,
        password_changed_at: 0,
        frozen,
        frozen_reason: None,
        pin: PinState::default(),
    }
}

fn device(status: DeviceStatus, restricted_until: Option<u64>) -> DeviceRow {
    DeviceRow {
        id: "d".into(),
        account: "a".into(),
        name: "n".into(),
        public_jwk: String::new(),
        kid: String::new(),
        status,
        enrolled_at: 0,
        key_changed_at: 0,
        last_login_at: Some(0),
        restricted_until,
        restriction_reason: restricted_until.map(|_| "new_device".to_owned()),
        revoked_reason: None,
    }
}

#[test]
fn the_gate_checks_freeze_status_and_restriction() {
    let f = Function::Transfer;
    let ok = device(DeviceStatus::Active, None);
    assert_eq!(check_may_move_money(&account(false), &ok, f, 10), Ok(()));
    assert_eq!(
        check_may_move_money(&account(true), &ok, f, 10),
        Err(RejectReason::AccountFrozen)
    );
    assert_eq!(
        check_may_move_money(&account(false), &device(DeviceStatus::Revoked, None), f, 10),
        Err(RejectReason::DeviceRevoked)
    );
    let restricted = device(DeviceStatus::Active, Some(100));
    assert_eq!(
        check_may_move_money(&account(false), &restricted, f, 10),
        Err(RejectReason::Restricted { until: 100 })
    );
    assert_eq!(
        check_may_move_money(&account(false), &restricted, f, 100),
        Ok(())
    );
    assert!(effective_restriction(&account(false), &restricted, 100).is_none());
    assert!(effective_restriction(&account(true), &ok, 100).is_some());
}

//! `Login`: the password (throttled, checked ahead when it can be), enrolment of the device
//! and its key, and for a new device the restriction: load the evidence through the store,
//! [`crate::restriction::decide`], store the verdict and alert the established devices.

use qrcash_protocol::messages::{Login, LoginResult, NewDeviceAlert, PhonePush};
use qrcash_protocol::{Position, PublicKey, RejectReason, SecretField};

use crate::handler::guard::refuse_keeping;
use crate::handler::{Ctx, Fail, Outcome, refuse};
use crate::identity;
use crate::restriction::{self, DeviceFix, NewDeviceEvidence};
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus};
use crate::store::trail;
use crate::throttle::{self, Failures};

pub(in crate::handler) fn login(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    l: &Login,
) -> Outcome {
    if l.device.device_id != sender {
        return Err(refuse(
            RejectReason::WrongAddress,
            "device_id differs from the sender",
        ));
    }
    if let Some(p) = &l.position {
        p.validate()
            .map_err(|e| refuse(RejectReason::Malformed, format!("position: {e}")))?;
    }
    let key = PublicKey::from_jwk(&l.device.public_key)
        .map_err(|e| refuse(RejectReason::BadSignature, e.to_string()))?;
    // A revoked device, or one enrolled for another account, is refused before any password
    // is checked, with the same answer whatever the password: it must not be an oracle that
    // tells its holder whether a password is right.
    if let Some(d) = device {
        if d.status == DeviceStatus::Revoked {
            return Err(refuse(
                RejectReason::DeviceRevoked,
                "this device was revoked; contact support",
            ));
        }
        if d.account != l.account {
            ctx.note(format!("device {} is enrolled for another account", d.id));
            return Err(refuse(
                RejectReason::BadCredentials,
                "wrong account or password",
            ));
        }
    }
    let account = check_password(ctx, sender, device, &key, l)?;
    let jwk = serde_json::to_string(&l.device.public_key)
        .map_err(|e| refuse(RejectReason::Malformed, e.to_string()))?;
    let all_others: Vec<DeviceRow> = rows::devices(ctx.db, Some(&account.id))?
        .into_iter()
        .filter(|d| d.id != sender)
        .collect();
    // Any device the account ever had makes this one new, revoked ones included: right
    // after a revoke (a lost phone) or a "not me" is exactly when a fraudster's device
    // arrives, and with no established device to vouch for it, it gets the habit period.
    let had_devices = !all_others.is_empty();
    let others: Vec<DeviceRow> = all_others
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Active)
        .collect();
    let rekeyed = device.is_some_and(|d| d.kid != key.kid().as_str());
    // A new key for a known device id is a new device too: otherwise a stolen password
    // could re-key the owner's device and skip the restriction. Its previous logins stand
    // for "the device already in use".
    let new_device = (device.is_none() && had_devices) || rekeyed;
    let decision = if new_device {
        let mut existing = others.clone();
        existing.extend(device.filter(|_| rekeyed).cloned());
        Some(decide_new_device(
            ctx, sender, &existing, rekeyed, l.position,
        )?)
    } else {
        None
    };
    let row = DeviceRow {
        id: sender.to_owned(),
        account: account.id.clone(),
        name: l.device.name.chars().take(64).collect(),
        public_jwk: jwk,
        kid: key.kid().as_str().to_owned(),
        status: DeviceStatus::Active,
        enrolled_at: device.map_or(ctx.now, |d| d.enrolled_at),
        key_changed_at: match device {
            Some(d) if !rekeyed => d.key_changed_at,
            _ => ctx.now,
        },
        last_login_at: Some(ctx.now),
        restricted_until: None,
        restriction_reason: None,
        revoked_reason: None,
    };
    rows::upsert_device_login(ctx.db, &row, ctx.now, l.position.as_ref(), new_device)?;
    let mut out = Vec::new();
    match decision {
        Some((decision, observed)) => {
            out.extend(apply_new_device(
                ctx, &account, &row, &others, decision, observed, rekeyed,
            )?);
        }
        None => ctx.note(format!("login of {} to {}", row.id, account.id)),
    }
    let stored = rows::device(ctx.db, sender)?.unwrap_or(row);
    let restriction =
        restriction::effective_restriction(&account, &stored, ctx.now).map(|r| r.info());
    out.insert(
        0,
        ctx.push_phone(
            sender,
            PhonePush::LoginResult(LoginResult {
                account: account.id.clone(),
                device_id: sender.to_owned(),
                new_device,
                restriction,
            }),
        )?,
    );
    Ok(out)
}

/// Checks a login's password, throttled (`crate::throttle`): the device id's failures, and
/// the account name's unless the device is the account's own established one with its
/// enrolled key (so guessing from elsewhere cannot lock the owner's phone out). A locked
/// subject is refused before any argon2 runs; an unknown account is checked against a decoy
/// hash of the same cost, so it answers as slowly as a known one. A wrong password is
/// counted (kept although the login is refused); a right one clears both counts.
fn check_password(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    key: &PublicKey,
    l: &Login,
) -> Result<AccountRow, Fail> {
    let own = device.is_some_and(|d| {
        d.account == l.account && d.status == DeviceStatus::Active && d.kid == key.kid().as_str()
    });
    let subjects = throttle::subjects(sender, &l.account, own);
    for subject in &subjects {
        if let Err(until) = rows::login_failures(ctx.db, subject)?.check(ctx.now) {
            return Err(refuse(
                RejectReason::LoginThrottled { until },
                format!("too many wrong passwords; try again from {until}"),
            ));
        }
    }
    // A device id gets a bounded number of successful logins a minute (each costs argon2 and
    // a `logins` row); wrong ones are bounded by the failure counts above.
    let minute_ago = ctx.now.saturating_sub(59);
    let (recent, oldest) = trail::logins_since(ctx.db, sender, minute_ago)?;
    if recent >= u64::from(ctx.cfg.auth.logins_per_device_per_minute) {
        let until = oldest.unwrap_or(ctx.now).saturating_add(60);
        return Err(refuse(
            RejectReason::LoginThrottled { until },
            format!("too many logins from this device; try again from {until}"),
        ));
    }
    let password = ctx.open_secret(&l.password, SecretField::Password)?;
    let account = rows::account(ctx.db, &l.account)?;
    let decoy = identity::decoy_hash(ctx.cfg.auth.hash_cost());
    let phc = account.as_ref().map_or(decoy, |a| a.password_hash.as_str());
    let matches = ctx.secret_matches(password.expose(), phc);
    match account {
        Some(account) if matches => {
            // A right password from elsewhere clears the account's count (whoever sent it
            // needs no more guesses). It never clears the device's: a device of the
            // fraudster's own account must not wash its failures against other accounts away
            // with a login to its own; the device's count is forgotten after an hour of quiet.
            if !own {
                let subject = throttle::account_subject(&l.account);
                rows::save_login_failures(ctx.db, &subject, &Failures::default())?;
            }
            Ok(account)
        }
        _ => {
            let policy = ctx.cfg.auth.throttle();
            for subject in &subjects {
                let f = rows::login_failures(ctx.db, subject)?.fail(ctx.now, &policy);
                rows::save_login_failures(ctx.db, subject, &f)?;
            }
            ctx.note(format!("wrong password or account from {sender}"));
            Err(refuse_keeping(
                RejectReason::BadCredentials,
                "wrong account or password".into(),
                Vec::new(),
            ))
        }
    }
}

/// The new-device policy's verdict ([`restriction::decide`]) from what was known before
/// this login: where the hub itself saw the new device (its own payments and code
/// presentations, unless it is a re-keyed device, whose history is its previous owner's),
/// where it claims to be, and the last fix and login count of the established (unrestricted)
/// devices already in use. Returns the observed fix too, the only position the owner's alert
/// shows: a claim would put the owner's own neighbourhood on a fraudster's alert.
fn decide_new_device(
    ctx: &Ctx<'_>,
    new_id: &str,
    existing: &[DeviceRow],
    rekeyed: bool,
    claimed: Option<Position>,
) -> Result<(restriction::Decision, Option<DeviceFix>), Fail> {
    let policy = &ctx.cfg.restriction;
    let own = if rekeyed {
        Vec::new()
    } else {
        trail::sightings(ctx.db, new_id)?
    };
    let evidence = NewDeviceEvidence {
        observed: restriction::observe_new_device(&own, ctx.now, policy),
        claimed: claimed.map(|position| DeviceFix {
            position,
            at: ctx.now,
        }),
    };
    // Only the account's established devices say where the owner is and how often they log
    // in: a device still under restriction may be the fraudster's own, and its position
    // would otherwise free the fraudster's next device logging in beside it.
    let established: Vec<DeviceRow> = existing
        .iter()
        .filter(|d| restriction::device_restriction(d).is_none_or(|r| !r.is_active(ctx.now)))
        .cloned()
        .collect();
    let last = last_fix_of(ctx, &established)?;
    let window_start = ctx.now.saturating_sub(policy.login_window_secs);
    let mut logins = 0u32;
    for d in &established {
        let (n, _) = trail::logins_since(ctx.db, &d.id, window_start)?;
        logins = logins.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }
    let decision = restriction::decide(policy, evidence, last, logins, ctx.now);
    Ok((decision, evidence.observed))
}

/// Stores the restriction (if any) on the new device and alerts the account's other
/// devices.
fn apply_new_device(
    ctx: &mut Ctx<'_>,
    account: &AccountRow,
    new: &DeviceRow,
    others: &[DeviceRow],
    decision: restriction::Decision,
    observed: Option<DeviceFix>,
    rekeyed: bool,
) -> Result<Vec<crate::handler::Outgoing>, Fail> {
    // A new verdict never cuts short a restriction still in force: re-keying a restricted
    // device asks the policy again, and must not turn 72 h into the habit's 1 h.
    let earlier = rows::device(ctx.db, &new.id)?
        .and_then(|d| restriction::device_restriction(&d))
        .filter(|r| r.is_active(ctx.now));
    let active = match (earlier, decision.restriction()) {
        (Some(e), Some(d)) if outlasts(&d, &e) => Some(d),
        (Some(e), _) => Some(e),
        (None, d) => d,
    };
    if let Some(r) = &active {
        let reason = serde_json::to_value(r.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "new_device".into());
        rows::set_restriction(ctx.db, &new.id, r.until, Some(&reason))?;
    }
    ctx.note(format!(
        "new device {} on {}{}: {}",
        new.id,
        account.id,
        if rekeyed { " (new key)" } else { "" },
        serde_json::to_string(&decision).unwrap_or_default()
    ));
    let mut out = Vec::new();
    // Only devices that may move money themselves hear about (and can veto) a new one: a
    // restricted device is no more trusted than the newcomer, and a fraudster's phone must
    // not be able to lock the owner out with "not me".
    let now = ctx.now;
    let trusted = others.iter().filter(|o| {
        restriction::device_restriction(o)
            .filter(|r| r.is_active(now))
            .is_none()
    });
    for other in trusted {
        let alert_id = format!("alert-{}", ctx.random_token());
        trail::insert_alert(
            ctx.db,
            &trail::AlertRow {
                id: alert_id.clone(),
                account: account.id.clone(),
                new_device: new.id.clone(),
                new_kid: Some(new.kid.clone()),
                notified: other.id.clone(),
                at: ctx.now,
                answered_at: None,
                outcome: None,
            },
        )?;
        out.push(ctx.push_phone(
            &other.id,
            PhonePush::NewDeviceAlert(NewDeviceAlert {
                alert_id,
                account: account.id.clone(),
                device_id: new.id.clone(),
                device_name: new.name.clone(),
                position: observed.map(|f| f.position),
                at: ctx.now,
                restricted_until: active.and_then(|r| r.until),
            }),
        )?);
    }
    Ok(out)
}

/// Whether restriction `a` ends no earlier than `b` (no end is the latest).
fn outlasts(a: &restriction::ActiveRestriction, b: &restriction::ActiveRestriction) -> bool {
    match (a.until, b.until) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x >= y,
    }
}

/// The last known position of the account's other devices: their latest login with a
/// position, else an estimate from their payments, timed at the newest of them.
fn last_fix_of(ctx: &Ctx<'_>, others: &[DeviceRow]) -> Result<Option<DeviceFix>, Fail> {
    let mut best: Option<DeviceFix> = None;
    let mut payments = Vec::new();
    for d in others {
        let fix = trail::last_login_fix(ctx.db, &d.id)?;
        if let Some(f) = fix
            && best.is_none_or(|b| f.at > b.at)
        {
            best = Some(f);
        }
        payments.extend(trail::sightings(ctx.db, &d.id)?);
    }
    if best.is_some() {
        return Ok(best);
    }
    // The estimate says where the device paid, so it is timed at its newest payment: timed
    // `now`, any far-away login would look like impossible travel. (If that payment is an
    // outlier of the estimate, the fix is younger than its cluster: the safe side.)
    let newest = payments.iter().map(|p| p.at.min(ctx.now)).max();
    Ok(
        restriction::estimate_position(&payments, ctx.now, &ctx.cfg.restriction).map(|p| {
            DeviceFix {
                position: p,
                at: newest.unwrap_or(ctx.now),
            }
        }),
    )
}

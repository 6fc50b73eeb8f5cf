//! `AnswerNewDeviceAlert`: an established device approves the newcomer (lifting its
//! restriction) or answers "not me" (revoking it and freezing the account); the first answer
//! stands.
//!
//! Load (the alert, the device it is about as it is now) → [`decide`] (pure) → apply.

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::{AlertAnswered, AlertOutcome, AnswerNewDeviceAlert, PhonePush};

use crate::handler::{Ctx, Outcome, refuse};
use crate::restriction;
use crate::store::rows::{self, AccountRow, DeviceRow, DeviceStatus};
use crate::store::trail;

pub(in crate::handler) fn answer_alert(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    a: &AnswerNewDeviceAlert,
) -> Outcome {
    // A device restricted since the alert was sent may not veto anyone either.
    if let Some(r) = restriction::device_restriction(device).filter(|r| r.is_active(ctx.now)) {
        return Err(refuse(
            r.until.map_or(RejectReason::AccountFrozen, |until| {
                RejectReason::Restricted { until }
            }),
            "a restricted device cannot answer new-device alerts",
        ));
    }
    let row = trail::alert(ctx.db, &a.alert_id, &device.id)?;
    let Some(trail::AlertRow {
        new_device,
        new_kid,
        answered_at: answered,
        outcome: first,
        ..
    }) = row
    else {
        // Never echo an unbounded client string back (an id of kilobytes would come back
        // in the `Rejected` and in the audit log).
        let shown: String = a.alert_id.chars().take(64).collect();
        let more = if shown.len() < a.alert_id.len() {
            "…"
        } else {
            ""
        };
        return Err(refuse(
            RejectReason::UnknownAlert,
            format!("no alert {shown}{more} for this device"),
        ));
    };
    // Load: the device the alert is about, as it is now.
    let current = rows::device(ctx.db, &new_device)?;
    // Decide.
    let answer = match answered {
        Some(_) => Answer::Repeat(
            first
                .and_then(|o| serde_json::from_value(serde_json::Value::String(o)).ok())
                .unwrap_or(AlertOutcome::NothingToLift),
        ),
        None => decide(
            a.not_me,
            account,
            current.as_ref(),
            new_kid.as_deref(),
            ctx.now,
        ),
    };
    // Apply.
    let outcome = match answer {
        Answer::Repeat(outcome) => {
            ctx.note(format!(
                "alert {} answered again; kept the first answer",
                a.alert_id
            ));
            outcome
        }
        Answer::NotMe => {
            rows::revoke_device(
                ctx.db,
                &new_device,
                &format!("owner answered alert {} with not me", a.alert_id),
                ctx.now,
            )?;
            rows::set_frozen(
                ctx.db,
                &account.id,
                true,
                Some(&format!("not me: alert {}", a.alert_id)),
                ctx.now,
            )?;
            ctx.note(format!(
                "not me: device {new_device} revoked, account {} frozen",
                account.id
            ));
            AlertOutcome::RevokedAndFrozen
        }
        Answer::Outdated => {
            ctx.note(format!(
                "owner approved device {new_device}, which has since been re-keyed or \
                 revoked: nothing lifted"
            ));
            AlertOutcome::Outdated
        }
        Answer::NothingToLift => {
            ctx.note(format!(
                "owner approved device {new_device}; it was not restricted"
            ));
            AlertOutcome::NothingToLift
        }
        Answer::Lift => {
            rows::set_restriction(ctx.db, &new_device, None, None)?;
            ctx.note(format!(
                "owner approved device {new_device} from {}: restriction lifted",
                device.id
            ));
            AlertOutcome::Approved
        }
    };
    if answered.is_none() {
        trail::answer_alert(
            ctx.db,
            &a.alert_id,
            ctx.now,
            a.not_me,
            outcome_name(outcome),
        )?;
    }
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::AlertAnswered(AlertAnswered {
            alert_id: a.alert_id.clone(),
            device_id: new_device,
            outcome,
        }),
    )?])
}

/// What an answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Answered before: the first answer is the answer (a "not me" cannot be turned into an
    /// approval by answering again, and vice versa).
    Repeat(AlertOutcome),
    /// "Not me": the device is revoked and the account frozen.
    NotMe,
    /// "This was me", but the device has since been re-keyed or revoked: nothing lifted.
    Outdated,
    /// "This was me" for a device that is not restricted.
    NothingToLift,
    /// "This was me": the established device vouches for the newcomer, whose restriction
    /// is lifted at once.
    Lift,
}

/// The first answer to an alert about the device now `current` (with key `new_kid` when
/// the alert was sent).
fn decide(
    not_me: bool,
    account: &AccountRow,
    current: Option<&DeviceRow>,
    new_kid: Option<&str>,
    now: u64,
) -> Answer {
    if not_me {
        return Answer::NotMe;
    }
    let same = current.filter(|d| {
        d.account == account.id
            && d.status == DeviceStatus::Active
            && new_kid.is_some_and(|k| k == d.kid)
    });
    match same {
        None => Answer::Outdated,
        Some(d) if restriction::device_restriction(d).is_none_or(|r| !r.is_active(now)) => {
            Answer::NothingToLift
        }
        Some(_) => Answer::Lift,
    }
}

fn outcome_name(o: AlertOutcome) -> &'static str {
    match o {
        AlertOutcome::Approved => "approved",
        AlertOutcome::NothingToLift => "nothing_to_lift",
        AlertOutcome::Outdated => "outdated",
        AlertOutcome::RevokedAndFrozen => "revoked_and_frozen",
    }
}

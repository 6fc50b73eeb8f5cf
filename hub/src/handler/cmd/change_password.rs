//! `ChangePassword`: needs an established device and the current password (throttled like
//! a login); signs every other device out. Not blocked by an account freeze, so an owner who
//! answered "not me" can still change it.

use qrcash_protocol::messages::ChangePassword;
use qrcash_protocol::{RejectReason, SecretField};

use crate::handler::cmd::sign_out_others::sessions_ended;
use crate::handler::guard::established;
use crate::handler::{Ctx, Fail, Outcome, Refusal, refuse};
use crate::identity::hash_secret;
use crate::restriction::Function;
use crate::store::rows::{self, AccountRow, DeviceRow};
use crate::throttle;

/// The shortest password the hub accepts, from the phone and from an operator alike.
pub const MIN_PASSWORD_CHARS: usize = 8;

pub(in crate::handler) fn change_password(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
    c: &ChangePassword,
) -> Outcome {
    established(ctx, device, Function::ChangePassword)?;
    // A wrong current password is a guess like a wrong login: throttled the same way, on
    // this device and on the account, before any argon2 runs.
    let subjects = [
        throttle::device_subject(&device.id),
        throttle::account_subject(&account.id),
    ];
    for subject in &subjects {
        if let Err(until) = rows::login_failures(ctx.db, subject)?.check(ctx.now) {
            return Err(refuse(
                RejectReason::LoginThrottled { until },
                format!("too many wrong passwords; try again from {until}"),
            ));
        }
    }
    let current = ctx.open_secret(&c.current_password, SecretField::CurrentPassword)?;
    let new = ctx.open_secret(&c.new_password, SecretField::NewPassword)?;
    if !ctx.secret_matches(current.expose(), &account.password_hash) {
        let policy = ctx.cfg.auth.throttle();
        for subject in &subjects {
            let f = rows::login_failures(ctx.db, subject)?.fail(ctx.now, &policy);
            rows::save_login_failures(ctx.db, subject, &f)?;
        }
        ctx.note(format!(
            "password change with a wrong password on {}",
            account.id
        ));
        // The count stays although the change is refused.
        return Err(Fail::Refused(Refusal {
            reason: RejectReason::BadCredentials,
            message: "wrong password".into(),
            keep_effects: true,
            extra: Vec::new(),
        }));
    }
    let new = new.expose();
    if new.chars().count() < MIN_PASSWORD_CHARS {
        return Err(refuse(
            RejectReason::Malformed,
            format!("the new password needs at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    let hash = hash_secret(new, ctx.cfg.auth.hash_cost())
        .map_err(|e| refuse(RejectReason::Internal, e))?;
    rows::set_password(ctx.db, &account.id, &hash, ctx.now)?;
    let signed_out = rows::end_sessions(ctx.db, &account.id, Some(&device.id))?;
    ctx.note(format!(
        "password of {} changed from {}; signed out: {}",
        account.id,
        device.id,
        signed_out.join(", ")
    ));
    sessions_ended(ctx, device, true, signed_out)
}

//! Routes each authenticated message to its command: ATM messages (the ATM must be in
//! service; every accepted one ends with an `Ack`) and phone messages (all but `Login` need
//! a live session of an active device).

use qrcash_protocol::RejectReason;
use qrcash_protocol::messages::{Ack, AtmDown, PhoneUp};

use crate::handler::cmd::answer_alert::answer_alert;
use crate::handler::cmd::balance::balance;
use crate::handler::cmd::bank_withdrawal::bank_withdrawal;
use crate::handler::cmd::change_password::change_password;
use crate::handler::cmd::confirm::confirm;
use crate::handler::cmd::decline::decline;
use crate::handler::cmd::enrol::enrol;
use crate::handler::cmd::heartbeat::heartbeat;
use crate::handler::cmd::login::login;
use crate::handler::cmd::order_refused::refused;
use crate::handler::cmd::payment::payment;
use crate::handler::cmd::present::presented;
use crate::handler::cmd::register::register;
use crate::handler::cmd::report::report;
use crate::handler::cmd::rotate_key::rotate_key;
use crate::handler::cmd::session_cancelled::cancelled;
use crate::handler::cmd::sign_out_others::sign_out_others;
use crate::handler::cmd::top_up::top_up;
use crate::handler::cmd::transfer::transfer;
use crate::handler::guard::session;
use crate::handler::{Ctx, Outcome, refuse};
use crate::store::rows::{AtmRow, DeviceRow};

/// Routes an ATM message; accepted messages end with an `Ack`.
pub(in crate::handler) fn atm(
    ctx: &mut Ctx<'_>,
    atm: &AtmRow,
    msg: &qrcash_protocol::AtmUp,
) -> Outcome {
    use qrcash_protocol::AtmUp;
    // An enrolled key may enrol itself again (an ATM back in service under the same key);
    // the answer is `Enrolled`, not an `Ack`: an enrolment does not go through an outbox.
    if let AtmUp::Enrol(e) = msg {
        return enrol(ctx, &atm.id, Some(atm), e);
    }
    if !atm.active {
        return Err(refuse(
            RejectReason::UnknownAtm,
            format!("ATM {} is not in service", atm.id),
        ));
    }
    let mut out = match msg {
        AtmUp::CodePresented(c) => presented(ctx, atm, c)?,
        AtmUp::DispenseReport(r) => report(ctx, atm, r)?,
        AtmUp::OrderRefused(r) => refused(ctx, atm, r)?,
        AtmUp::SessionCancelled(s) => cancelled(ctx, atm, s)?,
        AtmUp::Heartbeat(h) => heartbeat(ctx, atm, h)?,
        AtmUp::RotateKey(r) => rotate_key(ctx, atm, r)?,
        AtmUp::Enrol(_) => unreachable_enrol()?,
    };
    let jti = ctx.jti.clone();
    out.push(ctx.send_atm(&atm.id, AtmDown::Ack(Ack { ids: vec![jti] }))?);
    Ok(out)
}

/// Routes a phone message.
pub(in crate::handler) fn phone(
    ctx: &mut Ctx<'_>,
    sender: &str,
    device: Option<&DeviceRow>,
    msg: &PhoneUp,
) -> Outcome {
    if let PhoneUp::Login(l) = msg {
        return login(ctx, sender, device, l);
    }
    let (device, account) = session(ctx, device)?;
    match msg {
        PhoneUp::Login(_) => unreachable_login(),
        PhoneUp::RegisterWithdrawal(r) => register(ctx, &device, &account, r),
        PhoneUp::ConfirmWithdrawal(c) => confirm(ctx, &device, &account, c),
        PhoneUp::DeclineWithdrawal(d) => decline(ctx, &device, &account, d),
        PhoneUp::AnswerNewDeviceAlert(a) => answer_alert(ctx, &device, &account, a),
        PhoneUp::Transfer(t) => transfer(ctx, &device, &account, t),
        PhoneUp::Payment(p) => payment(ctx, &device, &account, p),
        PhoneUp::BankWithdrawal(b) => bank_withdrawal(ctx, &device, &account, b),
        PhoneUp::TopUp(t) => top_up(ctx, &device, &account, t),
        PhoneUp::BalanceQuery(q) => balance(ctx, &device, &account, q),
        PhoneUp::ChangePassword(c) => change_password(ctx, &device, &account, c),
        PhoneUp::SignOutOtherDevices(_) => sign_out_others(ctx, &device, &account),
    }
}

/// Routes a message signed by a key the ATM id is not enrolled with: only an `Enrol`
/// carrying that key gets here (`keys::AtmKeys`).
pub(in crate::handler) fn enrolling(
    ctx: &mut Ctx<'_>,
    id: &str,
    atm: Option<&AtmRow>,
    msg: &qrcash_protocol::AtmUp,
) -> Outcome {
    match msg {
        qrcash_protocol::AtmUp::Enrol(e) => enrol(ctx, id, atm, e),
        _ => Err(refuse(
            RejectReason::BadSignature,
            "only an enrolment may be signed by a key that is not enrolled",
        )),
    }
}

fn unreachable_enrol() -> Outcome {
    Err(refuse(RejectReason::Internal, "enrolment routed twice"))
}

fn unreachable_login() -> Outcome {
    Err(refuse(RejectReason::Internal, "login routed twice"))
}

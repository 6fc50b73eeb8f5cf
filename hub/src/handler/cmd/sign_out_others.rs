//! `SignOutOtherDevices`: ends every other device's session; needs an established device.

use qrcash_protocol::messages::{PhonePush, SessionsEnded};

use crate::handler::guard::established;
use crate::handler::{Ctx, Outcome};
use crate::restriction::Function;
use crate::store::rows::{self, AccountRow, DeviceRow};

pub(in crate::handler) fn sign_out_others(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    account: &AccountRow,
) -> Outcome {
    established(ctx, device, Function::SignOutOtherDevices)?;
    let signed_out = rows::end_sessions(ctx.db, &account.id, Some(&device.id))?;
    ctx.note(format!(
        "{} signed out the other devices of {}: {}",
        device.id,
        account.id,
        signed_out.join(", ")
    ));
    sessions_ended(ctx, device, false, signed_out)
}

pub(in crate::handler) fn sessions_ended(
    ctx: &mut Ctx<'_>,
    device: &DeviceRow,
    password_changed: bool,
    signed_out: Vec<String>,
) -> Outcome {
    Ok(vec![ctx.push_phone(
        &device.id,
        PhonePush::SessionsEnded(SessionsEnded {
            password_changed,
            signed_out,
        }),
    )?])
}

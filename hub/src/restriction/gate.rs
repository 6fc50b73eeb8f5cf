//! Which functions a restriction blocks, and the one gate every asset-decreasing operation
//! passes: the account freeze ("not me"), the device's status and its restriction.

use qrcash_protocol::messages::{PhoneUp, RejectReason, RestrictionInfo, RestrictionReason};
use serde::{Deserialize, Serialize};

use crate::store::rows::{AccountRow, DeviceRow, DeviceStatus};

/// A restriction in force on a device or an account, as the hub stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRestriction {
    /// Why.
    pub reason: RestrictionReason,
    /// Until when, Unix seconds; `None` until an operator lifts it (a frozen account).
    pub until: Option<u64>,
}

impl ActiveRestriction {
    /// The account holder said "not me": frozen until an operator lifts it.
    pub const fn frozen() -> Self {
        ActiveRestriction {
            reason: RestrictionReason::AccountFrozen,
            until: None,
        }
    }

    /// Whether it still applies at `now`: a timed restriction lifts itself at `until`.
    pub fn is_active(&self, now: u64) -> bool {
        self.until.is_none_or(|until| now < until)
    }

    /// The form sent to the phone (`LoginResult::restriction`).
    pub fn info(&self) -> RestrictionInfo {
        RestrictionInfo {
            until: self.until,
            reason: self.reason,
        }
    }
}

impl From<ActiveRestriction> for RestrictionInfo {
    fn from(r: ActiveRestriction) -> Self {
        r.info()
    }
}

impl From<RestrictionInfo> for ActiveRestriction {
    fn from(r: RestrictionInfo) -> Self {
        ActiveRestriction {
            reason: r.reason,
            until: r.until,
        }
    }
}

/// The functions a phone can use, as far as restrictions are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Log in.
    Login,
    /// Balance and history.
    BalanceQuery,
    /// Stage an ATM cash withdrawal.
    WithdrawalRegister,
    /// Approve a withdrawal presented at an ATM.
    WithdrawalConfirm,
    /// Refuse a withdrawal presented at an ATM (also "not me").
    WithdrawalDecline,
    /// Send money to another account.
    Transfer,
    /// Pay a merchant.
    Payment,
    /// Pay out to the registered bank account.
    BankWithdrawal,
    /// Add money to the account from its linked funding account.
    TopUp,
    /// Receive a transfer from another account.
    ReceiveTransfer,
    /// Answer a new-device alert ("this was me" / "not me").
    AnswerNewDeviceAlert,
    /// Change the account's password.
    ChangePassword,
    /// End the sessions of the account's other devices.
    SignOutOtherDevices,
}

impl Function {
    /// Every function, for exhaustive checks.
    pub const ALL: [Function; 13] = [
        Function::Login,
        Function::BalanceQuery,
        Function::WithdrawalRegister,
        Function::WithdrawalConfirm,
        Function::WithdrawalDecline,
        Function::Transfer,
        Function::Payment,
        Function::BankWithdrawal,
        Function::TopUp,
        Function::ReceiveTransfer,
        Function::AnswerNewDeviceAlert,
        Function::ChangePassword,
        Function::SignOutOtherDevices,
    ];

    /// Whether using it can move money out of the account: the functions a restriction
    /// blocks. Declining a withdrawal and answering an alert only ever protect the account,
    /// so they stay free.
    pub const fn decreases_assets(self) -> bool {
        match self {
            Function::WithdrawalRegister
            | Function::WithdrawalConfirm
            | Function::Transfer
            | Function::Payment
            | Function::BankWithdrawal
            // A top-up draws on the customer's linked bank account.
            | Function::TopUp => true,
            Function::Login
            | Function::BalanceQuery
            | Function::WithdrawalDecline
            | Function::ReceiveTransfer
            | Function::AnswerNewDeviceAlert
            | Function::ChangePassword
            | Function::SignOutOtherDevices => false,
        }
    }

    /// Whether only an established device (one not under a restriction) may use it: the
    /// functions that move money, and those that would let a newcomer lock the owner out
    /// (changing the password, signing the other devices out). An account freeze does not
    /// block the latter two: after a "not me" the owner must still be able to change the
    /// password.
    pub const fn needs_established_device(self) -> bool {
        self.decreases_assets()
            || matches!(
                self,
                Function::ChangePassword | Function::SignOutOtherDevices
            )
    }

    /// The function a phone message asks for (a new message type must be classified here
    /// before the hub compiles).
    pub const fn of(message: &PhoneUp) -> Function {
        match message {
            PhoneUp::Login(_) => Function::Login,
            PhoneUp::RegisterWithdrawal(_) => Function::WithdrawalRegister,
            PhoneUp::ConfirmWithdrawal(_) => Function::WithdrawalConfirm,
            PhoneUp::DeclineWithdrawal(_) => Function::WithdrawalDecline,
            PhoneUp::Transfer(_) => Function::Transfer,
            PhoneUp::Payment(_) => Function::Payment,
            PhoneUp::BankWithdrawal(_) => Function::BankWithdrawal,
            PhoneUp::TopUp(_) => Function::TopUp,
            PhoneUp::BalanceQuery(_) => Function::BalanceQuery,
            PhoneUp::AnswerNewDeviceAlert(_) => Function::AnswerNewDeviceAlert,
            PhoneUp::ChangePassword(_) => Function::ChangePassword,
            PhoneUp::SignOutOtherDevices(_) => Function::SignOutOtherDevices,
        }
    }

    /// A stable snake_case name for logs and audit entries.
    pub const fn as_str(self) -> &'static str {
        match self {
            Function::Login => "login",
            Function::BalanceQuery => "balance_query",
            Function::WithdrawalRegister => "withdrawal_register",
            Function::WithdrawalConfirm => "withdrawal_confirm",
            Function::WithdrawalDecline => "withdrawal_decline",
            Function::Transfer => "transfer",
            Function::Payment => "payment",
            Function::BankWithdrawal => "bank_withdrawal",
            Function::TopUp => "top_up",
            Function::ReceiveTransfer => "receive_transfer",
            Function::AnswerNewDeviceAlert => "answer_new_device_alert",
            Function::ChangePassword => "change_password",
            Function::SignOutOtherDevices => "sign_out_other_devices",
        }
    }
}

/// Whether `function` may be used at `now` under `restriction` (the device's or the account's;
/// call once for each that applies).
///
/// Functions that do not decrease assets always pass. An asset-decreasing one is refused with
/// [`RejectReason::AccountFrozen`] while the restriction has no end or is an account freeze,
/// and with [`RejectReason::Restricted`] before its `until`; from `until` on it passes (the
/// restriction lifts itself; the stored row may be deleted lazily).
pub fn check(
    function: Function,
    restriction: Option<&ActiveRestriction>,
    now: u64,
) -> Result<(), RejectReason> {
    let Some(r) = restriction else {
        return Ok(());
    };
    if !function.decreases_assets() || !r.is_active(now) {
        return Ok(());
    }
    match r.until {
        Some(until) if r.reason != RestrictionReason::AccountFrozen => {
            Err(RejectReason::Restricted { until })
        }
        _ => Err(RejectReason::AccountFrozen),
    }
}

/// The stored restriction of a device, if it has one (active or not).
pub fn device_restriction(device: &DeviceRow) -> Option<ActiveRestriction> {
    let reason = match device.restriction_reason.as_deref()? {
        "new_device" => RestrictionReason::NewDevice,
        "impossible_travel" => RestrictionReason::ImpossibleTravel,
        _ => RestrictionReason::AccountFrozen,
    };
    Some(ActiveRestriction {
        reason,
        until: device.restricted_until,
    })
}

/// The restriction to report for a device at `now` (account freeze first).
pub fn effective_restriction(
    account: &AccountRow,
    device: &DeviceRow,
    now: u64,
) -> Option<ActiveRestriction> {
    if account.frozen {
        return Some(ActiveRestriction::frozen());
    }
    device_restriction(device).filter(|r| r.is_active(now))
}

/// The single gate of every asset-decreasing operation (register and confirm withdrawal,
/// transfer, payment, bank withdrawal): the account must not be frozen, the device must be
/// active and not restricted.
pub fn check_may_move_money(
    account: &AccountRow,
    device: &DeviceRow,
    function: Function,
    now: u64,
) -> Result<(), RejectReason> {
    debug_assert!(function.decreases_assets(), "{function:?} is not money out");
    if device.status == DeviceStatus::Revoked {
        return Err(RejectReason::DeviceRevoked);
    }
    if account.frozen {
        check(function, Some(&ActiveRestriction::frozen()), now)?;
    }
    check(function, device_restriction(device).as_ref(), now)
}

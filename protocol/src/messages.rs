//! The message catalogue: one enum per direction, one struct per message.
//!
//! Every message travels as the `msg` claim of a signed envelope, tagged by its `type`
//! (`{"type":"RegisterWithdrawal", ...}`). Unknown types and unknown fields are rejected,
//! so a receiver never silently ignores something a sender meant. Which enum applies follows
//! from the topic the message arrived on ([`crate::topics`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::geo::Position;
use crate::ids::{OrderId, TxId};
use crate::keys::PublicJwk;
use crate::money::Amount;
use crate::sealed::SealedSecret;

// ---------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------

/// A secret string (password, PIN) once opened, or before it is sealed. `Debug` prints
/// `***`, so it cannot reach a log by accident. It never travels as it is: on the wire it
/// is a [`SealedSecret`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret text; call only where it is checked.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A number of banknotes of one denomination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteCount {
    /// Face value in minor units (e.g. 10000 for a ¥10,000 note).
    pub denomination: u64,
    /// How many notes.
    pub count: u32,
}

/// A phone device as it introduces itself at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The device id (also its topic id and `iss`).
    pub device_id: String,
    /// A human name ("Hanako's iPhone").
    pub name: String,
    /// The device's public signing key; the login message must be signed by it.
    pub public_key: PublicJwk,
}

/// Why a device may not move money out right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictionInfo {
    /// Until when (Unix seconds); `None` while an operator has to clear it.
    pub until: Option<u64>,
    /// Why.
    pub reason: RestrictionReason,
}

/// The cause of a restriction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionReason {
    /// Logged in while another device of the account was active, too far from it.
    NewDevice,
    /// Logged in from a place the other device could not have reached in time.
    ImpossibleTravel,
    /// The account's owner said "not me"; an operator must clear it.
    AccountFrozen,
}

// ---------------------------------------------------------------------------------------
// Phone → hub (`qrcash/v1/phone/{device}/up`)
// ---------------------------------------------------------------------------------------

/// Messages a phone sends to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum PhoneUp {
    /// Log in (and enrol the device key on first use).
    Login(Login),
    /// Stage a cash withdrawal; answered by `CodeIssued`.
    RegisterWithdrawal(RegisterWithdrawal),
    /// Approve a presented withdrawal (dynamic linking: signed over its exact details).
    ConfirmWithdrawal(ConfirmWithdrawal),
    /// Refuse a presented withdrawal, optionally as "this was not me".
    DeclineWithdrawal(DeclineWithdrawal),
    /// Send money to another account.
    Transfer(Transfer),
    /// Pay a merchant.
    Payment(Payment),
    /// Pay out to the account holder's registered bank account.
    BankWithdrawal(BankWithdrawal),
    /// Add money to the account (asset-increasing, never restricted).
    TopUp(TopUp),
    /// Ask for balance and recent history.
    BalanceQuery(BalanceQuery),
    /// The owner's answer to a `NewDeviceAlert`.
    AnswerNewDeviceAlert(AnswerNewDeviceAlert),
    /// Change the account's password; ends every other device's session.
    ChangePassword(ChangePassword),
    /// End every other device's session ("sign out all other devices").
    SignOutOtherDevices(SignOutOtherDevices),
}

/// Log in to an account from this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The account.
    pub account: String,
    /// The account password, sealed to the hub (`crate::sealed`).
    pub password: SealedSecret,
    /// This device.
    pub device: DeviceInfo,
    /// Where the device is, if it can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

/// Stage a cash withdrawal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterWithdrawal {
    /// The account to debit.
    pub account: String,
    /// How much cash.
    pub amount: Amount,
}

/// Evidence that the person holding the phone is the account holder.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEvidence {
    /// The account PIN sealed to the hub (`crate::sealed`), checked against an argon2 hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<SealedSecret>,
    /// The device's statement that its biometric check passed (signed with the envelope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biometric: Option<BiometricAttestation>,
}

/// A device-local biometric check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiometricAttestation {
    /// Which sensor.
    pub method: BiometricMethod,
    /// When the check passed, Unix seconds.
    pub verified_at: u64,
}

/// Biometric sensor kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiometricMethod {
    /// Face recognition.
    Face,
    /// Fingerprint.
    Fingerprint,
}

/// Approve a presented withdrawal. Every field that identifies the transaction is repeated
/// so the device signature covers exactly what the customer saw; any difference from the
/// hub's record is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmWithdrawal {
    /// The transaction.
    pub tx_id: TxId,
    /// The ATM the code was presented at.
    pub atm_id: String,
    /// The amount shown.
    pub amount: Amount,
    /// The `challenge` of the `ConfirmRequest` being answered.
    pub challenge: String,
    /// The phone's position now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// PIN and/or biometric evidence.
    pub identity: IdentityEvidence,
}

/// Refuse a presented withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclineWithdrawal {
    /// The transaction.
    pub tx_id: TxId,
    /// "This was not me": also freezes the account's asset-decreasing functions.
    pub not_me: bool,
}

/// Send money to another account of this service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// Client-chosen key; a repeat with the same key returns the first result.
    pub idempotency_key: String,
    /// The receiving account.
    pub to_account: String,
    /// How much.
    pub amount: Amount,
    /// Optional note for the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// Pay a registered merchant (its position feeds the device-location estimate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Client-chosen idempotency key.
    pub idempotency_key: String,
    /// The merchant.
    pub merchant_id: String,
    /// How much.
    pub amount: Amount,
}

/// Pay out to a registered bank account (recorded as a pending payout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankWithdrawal {
    /// Client-chosen idempotency key.
    pub idempotency_key: String,
    /// The registered bank account's id.
    pub bank_account: String,
    /// How much.
    pub amount: Amount,
}

/// Add money (from a linked source; settled outside this protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// Client-chosen idempotency key.
    pub idempotency_key: String,
    /// How much.
    pub amount: Amount,
    /// The account's linked funding account (a bank account registered at the hub) the
    /// money is drawn from.
    pub from: String,
}

/// Ask for balance and the latest `history` ledger entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    /// The account.
    pub account: String,
    /// How many history entries (0–50).
    pub history: u32,
}

/// The owner's answer to a new-device alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerNewDeviceAlert {
    /// The alert answered.
    pub alert_id: String,
    /// "Not me": revoke the new device and freeze the account.
    pub not_me: bool,
}

/// Changes the account's password, from an established device (a restricted one is
/// refused): the current password proves the holder knows it, and every other device of the
/// account is signed out and must log in again with the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// The password now.
    pub current_password: SealedSecret,
    /// The new password, at least 8 characters.
    pub new_password: SealedSecret,
}

/// Ends the sessions of every other device of the account, from an established device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignOutOtherDevices {}

// ---------------------------------------------------------------------------------------
// Hub → phone (`qrcash/v1/phone/{device}/push`)
// ---------------------------------------------------------------------------------------

/// Messages the hub pushes to a phone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum PhonePush {
    /// Answer to `Login`.
    LoginResult(LoginResult),
    /// Answer to `RegisterWithdrawal`: the code to show at an ATM.
    CodeIssued(CodeIssued),
    /// The code was presented at an ATM: confirm or decline.
    ConfirmRequest(ConfirmRequest),
    /// The outcome of a money movement.
    Receipt(Receipt),
    /// Another device logged in to this account.
    NewDeviceAlert(NewDeviceAlert),
    /// Answer to `AnswerNewDeviceAlert`: what the hub did with the answer.
    AlertAnswered(AlertAnswered),
    /// Answer to `ChangePassword` and `SignOutOtherDevices`: the sessions that ended.
    SessionsEnded(SessionsEnded),
    /// Answer to `BalanceQuery`.
    Balance(Balance),
    /// A request was refused; nothing changed.
    Rejected(Rejected),
}

/// Result of a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginResult {
    /// The account.
    pub account: String,
    /// This device.
    pub device_id: String,
    /// Whether this was a login from a device other than one already in use.
    pub new_device: bool,
    /// Present while this device may not move money out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<RestrictionInfo>,
}

/// The code for a registered withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeIssued {
    /// The transaction.
    pub tx_id: TxId,
    /// The amount.
    pub amount: Amount,
    /// The QR code text ([`crate::token`]).
    pub token: String,
    /// When the code expires, Unix seconds.
    pub expires_at: u64,
    /// The code as a PNG image, standard base64.
    pub qr_png: String,
    /// The code as an SVG document.
    pub qr_svg: String,
}

/// The ATM a code was presented at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtmInfo {
    /// Its id.
    pub atm_id: String,
    /// Its display name.
    pub name: String,
    /// Its street address.
    pub address: String,
    /// Its registered position.
    pub position: Position,
}

/// A fraud warning shown with the confirmation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudWarning {
    /// Stable code (`first_use_of_atm`, `large_amount`, …).
    pub code: String,
    /// Language of `text` (BCP 47, e.g. `ja`, `en`).
    pub lang: String,
    /// The text to show.
    pub text: String,
}

/// Which authentication the hub requires for a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequired {
    /// The account PIN.
    pub pin: bool,
    /// A device biometric check (accepted instead of the PIN when `pin` is false).
    pub biometric: bool,
    /// The phone's position, which must be near the ATM.
    pub location: bool,
}

/// The push sent when a code is presented at an ATM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The transaction.
    pub tx_id: TxId,
    /// The amount.
    pub amount: Amount,
    /// Where the code was presented.
    pub atm: AtmInfo,
    /// When, Unix seconds.
    pub presented_at: u64,
    /// Confirm before this time, Unix seconds.
    pub confirm_by: u64,
    /// A fresh random value the confirmation must echo.
    pub challenge: String,
    /// Warnings to show before the customer confirms.
    pub warnings: Vec<FraudWarning>,
    /// What the confirmation must carry.
    pub auth: AuthRequired,
}

/// What kind of money movement a receipt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// ATM cash withdrawal.
    Withdrawal,
    /// Transfer sent.
    TransferSent,
    /// Transfer received.
    TransferReceived,
    /// Merchant payment.
    Payment,
    /// Bank payout.
    BankWithdrawal,
    /// Top-up.
    TopUp,
}

/// How a money movement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Done in full.
    Completed,
    /// Only part was paid out (the rest released).
    Partial,
    /// Nothing was paid out (everything released).
    Failed,
    /// The device could not tell what it paid out; the amount stays held until an operator
    /// reconciles.
    InDoubt,
    /// Cancelled before anything moved.
    Cancelled,
    /// Accepted, settles later (bank payouts).
    Pending,
}

/// The outcome of a money movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The transaction id (withdrawals) or operation id.
    pub reference: String,
    /// What it was.
    pub kind: ReceiptKind,
    /// The amount asked for.
    pub requested: Amount,
    /// The amount that actually moved.
    pub settled: Amount,
    /// How it ended.
    pub status: ReceiptStatus,
    /// Available balance afterwards.
    pub balance: Amount,
    /// When, Unix seconds.
    pub at: u64,
}

/// Another device logged in to the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceAlert {
    /// Id to quote in `AnswerNewDeviceAlert`.
    pub alert_id: String,
    /// The account.
    pub account: String,
    /// The new device.
    pub device_id: String,
    /// Its name.
    pub device_name: String,
    /// Where the hub itself saw it (estimated from where it paid or presented codes), if
    /// known. Never the position the new device reported about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// When it logged in, Unix seconds.
    pub at: u64,
    /// Until when it may not move money out, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted_until: Option<u64>,
}

/// The answer to `AnswerNewDeviceAlert`. The first answer to an alert is final: answering
/// again gets this same push describing the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertAnswered {
    /// The alert answered.
    pub alert_id: String,
    /// The device the alert was about.
    pub device_id: String,
    /// What the hub did.
    pub outcome: AlertOutcome,
}

/// The answer to `ChangePassword` and `SignOutOtherDevices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsEnded {
    /// Whether the password was changed (`ChangePassword`).
    pub password_changed: bool,
    /// The other devices whose session ended (those that had one), sorted.
    pub signed_out: Vec<String>,
}

/// What the hub did with an answer to a new-device alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOutcome {
    /// "This was me": the new device's restriction was lifted.
    Approved,
    /// "This was me", but the device was not restricted (any more): nothing to lift.
    NothingToLift,
    /// "This was me", but the device has since been re-keyed or revoked: nothing lifted;
    /// a newer alert (if any) is about its current key.
    Outdated,
    /// "Not me": the new device is revoked and the account frozen for money out.
    RevokedAndFrozen,
}

/// Direction of a ledger entry as the account holder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryDirection {
    /// Money in.
    Credit,
    /// Money out (or put on hold).
    Debit,
}

/// One line of account history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// When, Unix seconds.
    pub at: u64,
    /// In or out.
    pub direction: EntryDirection,
    /// How much.
    pub amount: Amount,
    /// What it was.
    pub description: String,
}

/// Balance and history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balance {
    /// The account.
    pub account: String,
    /// Spendable now.
    pub available: Amount,
    /// Held for withdrawals in progress or in doubt.
    pub held: Amount,
    /// Latest entries, newest first.
    pub history: Vec<HistoryEntry>,
}

/// A refusal. Sent to the sender whenever it can be identified; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// Why, machine-readable.
    pub reason: RejectReason,
    /// Why, for a person.
    pub message: String,
}

// ---------------------------------------------------------------------------------------
// ATM → hub (`qrcash/v1/atm/{atm}/up`)
// ---------------------------------------------------------------------------------------

/// Messages an ATM agent sends to the hub. All of them go through the agent's durable
/// outbox and stay there until the hub's `Ack` names their `jti`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AtmUp {
    /// A customer showed a code.
    CodePresented(CodePresented),
    /// What the dispenser did for an order.
    DispenseReport(DispenseReport),
    /// The ATM will not execute an order (so the hub releases the hold).
    OrderRefused(OrderRefused),
    /// The ATM gave up a session before an order arrived.
    SessionCancelled(SessionCancelled),
    /// Periodic status.
    Heartbeat(Heartbeat),
    /// Enrol this board's key with a one-time code ([`crate::enrol`]); signed by the key it
    /// carries.
    Enrol(Enrol),
    /// Change this ATM's key: signed by the enrolled key, carrying the new one and its proof
    /// of possession.
    RotateKey(RotateKey),
}

/// The enrolled key hands over to a new one; messages signed by the old key stay accepted for
/// an overlap (`docs/protocol.md` §6.6), so nothing queued is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The new public key.
    pub public_key: PublicJwk,
    /// [`crate::enrol::rotation_proof`]: the new key's signature of the rotation statement.
    pub proof: String,
}

/// A board asks to be enrolled under the ATM id of its topic with the key it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    /// The board's new public key (it signs this message).
    pub public_key: PublicJwk,
    /// 16 random bytes, base64url: binds the hub's answer to this request.
    pub nonce: String,
    /// [`crate::enrol::request_proof`] over the ATM id, the key's `kid` and the nonce.
    pub proof: String,
}

/// A code read by the camera (already verified offline by the ATM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodePresented {
    /// The token text as read.
    pub token: String,
}

/// How a dispense ended, as the device reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispenseOutcome {
    /// Every requested note left the machine.
    Dispensed,
    /// Some notes left the machine, fewer than requested.
    Partial,
    /// No note left the machine.
    Failed,
    /// The device cannot tell (power loss, lost response): counts are what is known.
    InDoubt,
}

/// Counts for one denomination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteOutcome {
    /// Face value in minor units.
    pub denomination: u64,
    /// Notes ordered.
    pub requested: u32,
    /// Notes counted at the pick (CHK) sensors.
    pub picked: u32,
    /// Notes counted leaving the machine (EXIT sensor): what the customer received.
    pub exited: u32,
    /// Notes diverted to the reject tray.
    pub rejected: u32,
}

/// Where the counts of a [`DispenseReport`] come from. Counts are attributed to an order by
/// its identity only (the driver's record names the order id), never because another
/// dispense asked for the same notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountSource {
    /// The device's answers, read while the agent waited for them.
    Device,
    /// The device's answer to the batch in flight, read from the serial line after the
    /// agent restarted.
    LateAnswer,
    /// The dispenser driver's own record of this order: the batches answered before the
    /// agent stopped. The batch then in flight, if any, is unknown.
    DriverRecord,
    /// No device record names this order (the agent stopped before or while handing the
    /// command to the device): no note is known to have left, none is known not to.
    NoRecord,
}

/// What the dispenser did for an order. `dispensed` is the value of the exited notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispenseReport {
    /// The order.
    pub order_id: OrderId,
    /// Its transaction.
    pub tx_id: TxId,
    /// Per denomination counts.
    pub notes: Vec<NoteOutcome>,
    /// Value of the notes that left the machine.
    pub dispensed: Amount,
    /// The outcome.
    pub outcome: DispenseOutcome,
    /// The device's error, if any, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_error: Option<String>,
    /// For `in_doubt`: the most that may have left the machine (the known counts plus every
    /// note whose fate is unknown). Absent: the order's amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dispensed: Option<Amount>,
    /// Where the counts come from. Absent: `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CountSource>,
}

impl DispenseReport {
    /// The bounds of what left the machine, in minor units: exactly `dispensed` for a
    /// definitive outcome; for `in_doubt` from `dispensed` up to `max_dispensed`, or up to
    /// `ordered` when the report states no upper bound. `None` when the report contradicts
    /// itself (an upper bound below the known counts, or another currency).
    pub fn bounds(&self, ordered: Amount) -> Option<(u64, u64)> {
        let low = self.dispensed.minor;
        if self.dispensed.currency != ordered.currency {
            return None;
        }
        let high = match (self.outcome, self.max_dispensed) {
            (DispenseOutcome::InDoubt, Some(max)) if max.currency == ordered.currency => {
                max.minor.min(ordered.minor)
            }
            (DispenseOutcome::InDoubt, Some(_)) => return None,
            (DispenseOutcome::InDoubt, None) => ordered.minor,
            _ => low,
        };
        (low <= high).then_some((low, high))
    }
}

/// The ATM refuses an order without touching the dispenser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRefused {
    /// The order.
    pub order_id: OrderId,
    /// Its transaction.
    pub tx_id: TxId,
    /// Why (expired, not the current session, already executed, out of service…).
    pub reason: String,
}

/// Why an ATM abandoned a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// No order arrived before the confirmation deadline.
    Timeout,
    /// The customer pressed cancel.
    Customer,
    /// The ATM went out of service.
    OutOfService,
}

/// The ATM gave up a session before an order arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCancelled {
    /// The transaction.
    pub tx_id: TxId,
    /// Why.
    pub reason: CancelReason,
}

/// What an ATM is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtmState {
    /// Waiting for a customer.
    Idle,
    /// A code was presented; waiting for the phone.
    AwaitingConfirmation,
    /// Paying out.
    Dispensing,
    /// Cannot serve customers.
    OutOfService,
}

/// A cassette's fill state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CassetteState {
    /// Enough notes.
    Ok,
    /// Near end.
    Low,
    /// Empty.
    Empty,
    /// Not detected.
    Missing,
}

/// One cassette in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassetteStatus {
    /// Face value of its notes.
    pub denomination: u64,
    /// The agent's count of notes left.
    pub notes: u32,
    /// The device's view.
    pub state: CassetteState,
}

/// Periodic ATM status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// What it is doing.
    pub state: AtmState,
    /// Cassettes.
    pub cassettes: Vec<CassetteStatus>,
    /// Messages waiting in the outbox.
    pub outbox: u32,
    /// Agent software version.
    pub software: String,
}

// ---------------------------------------------------------------------------------------
// Hub → ATM (`qrcash/v1/atm/{atm}/down`)
// ---------------------------------------------------------------------------------------

/// Messages the hub sends to an ATM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AtmDown {
    /// The code is valid; the customer must confirm on the phone.
    AwaitConfirmation(AwaitConfirmation),
    /// Pay out.
    DispenseOrder(DispenseOrder),
    /// Stop the session for this transaction.
    Abort(Abort),
    /// These up-link messages are processed; delete them from the outbox.
    Ack(Ack),
    /// An up-link message was refused.
    Rejected(Rejected),
    /// The board's key is enrolled: here are the hub's keys.
    Enrolled(Enrolled),
}

/// The answer to an [`Enrol`]: the board's key is the ATM's key from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// The hub's keys, the signing key first: the board's new roots (`hub_keys`).
    pub hub_keys: Vec<PublicJwk>,
    /// The brokers the board should use, in order of preference (empty: keep the one it
    /// enrolled through).
    pub broker_urls: Vec<String>,
    /// The ATM's cassette denominations as the hub knows them, first cassette first.
    pub denominations: Vec<u64>,
    /// [`crate::enrol::answer_proof`] over the ATM id, the board's `kid`, the request's nonce
    /// and the `kid`s of `hub_keys` in order.
    pub proof: String,
}

/// Wait for the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitConfirmation {
    /// The transaction.
    pub tx_id: TxId,
    /// Its amount, for the ATM's screen.
    pub amount: Amount,
    /// The confirmation deadline, Unix seconds.
    pub confirm_by: u64,
}

/// An order to pay out, bound to one ATM, one transaction and one amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispenseOrder {
    /// Unique order id; executed at most once, ever.
    pub order_id: OrderId,
    /// The transaction.
    pub tx_id: TxId,
    /// The ATM that must execute it (and no other).
    pub atm_id: String,
    /// The total.
    pub amount: Amount,
    /// Notes per denomination; their value equals `amount`.
    pub notes: Vec<NoteCount>,
    /// Not to be started after this time, Unix seconds.
    pub expires_at: u64,
}

impl DispenseOrder {
    /// Whether the note breakdown adds up to the amount.
    pub fn notes_match_amount(&self) -> bool {
        self.notes
            .iter()
            .try_fold(0u64, |acc, n| {
                n.denomination
                    .checked_mul(u64::from(n.count))
                    .and_then(|v| acc.checked_add(v))
            })
            .is_some_and(|total| total == self.amount.minor)
    }
}

/// Why a session was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The customer declined on the phone.
    Declined,
    /// The account holder said "not me".
    NotMe,
    /// No confirmation before the deadline.
    Timeout,
    /// Authentication failed too often.
    AuthenticationFailed,
    /// An operator stopped it.
    Operator,
}

/// Stop the session for `tx_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// The transaction.
    pub tx_id: TxId,
    /// Why.
    pub reason: AbortReason,
}

/// Acknowledges up-link messages by `jti`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The acknowledged `jti`s.
    pub ids: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------------

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Per transaction.
    PerTransaction,
    /// Per day.
    Daily,
}

/// Machine-readable reasons for a refusal, tagged by `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case", deny_unknown_fields)]
pub enum RejectReason {
    /// Not a well-formed message.
    Malformed,
    /// Over the size limit.
    TooLarge,
    /// Signature missing or invalid, or signed by a key not enrolled for the sender.
    BadSignature,
    /// Sender id unknown or revoked.
    UnknownSender,
    /// Replayed, out of the sequence window, too old, future-dated or expired.
    Replayed,
    /// Addressed to another receiver or sent on another sender's topic.
    WrongAddress,
    /// Wrong account or password.
    BadCredentials,
    /// This device has no session on the account.
    NotLoggedIn,
    /// The device was revoked.
    DeviceRevoked,
    /// No such account.
    UnknownAccount,
    /// Not enough available balance.
    InsufficientFunds,
    /// A limit would be exceeded.
    LimitExceeded {
        /// Which limit.
        limit: LimitKind,
        /// Its value.
        max: Amount,
    },
    /// The amount cannot be paid in the notes the ATMs carry, or is zero or in the wrong
    /// currency.
    InvalidAmount,
    /// The code is not valid (forged, damaged, unknown issuer).
    CodeInvalid,
    /// The code has expired.
    CodeExpired,
    /// The code was already presented (possibly at another ATM at the same moment).
    CodeAlreadyUsed,
    /// No such transaction for this sender.
    UnknownTransaction,
    /// The transaction is not in a state that allows this.
    WrongState {
        /// Its state.
        state: String,
    },
    /// The confirmation does not match the transaction (dynamic linking).
    TransactionMismatch {
        /// The first field that differs.
        field: String,
    },
    /// The phone's position is required.
    LocationRequired,
    /// The phone's position is too coarse to tell whether it is at the ATM.
    LocationInaccurate {
        /// The reported accuracy radius, metres.
        accuracy_m: u64,
        /// The coarsest accuracy accepted, metres.
        max_m: u64,
    },
    /// The phone is too far from the ATM.
    TooFarFromAtm {
        /// Smallest possible distance given both accuracies, metres.
        distance_m: u64,
        /// The allowed radius, metres.
        allowed_m: u64,
    },
    /// Wrong PIN.
    PinWrong {
        /// Attempts left before lockout.
        attempts_left: u32,
    },
    /// Too many wrong PINs.
    PinLocked {
        /// Locked until, Unix seconds.
        until: u64,
    },
    /// Too many wrong passwords from this device or for this account: no login is evaluated
    /// before `until`.
    LoginThrottled {
        /// Unix seconds.
        until: u64,
    },
    /// PIN or biometric evidence required.
    IdentityRequired,
    /// The confirmation deadline passed.
    ConfirmationTimeout,
    /// This device may not move money out yet.
    Restricted {
        /// Until when, Unix seconds.
        until: u64,
    },
    /// The account's asset-decreasing functions are frozen until an operator clears them.
    AccountFrozen,
    /// The ATM is not enrolled.
    UnknownAtm,
    /// The order or report names another ATM.
    AtmMismatch,
    /// The idempotency key was used for a different request.
    IdempotencyConflict,
    /// No such merchant.
    UnknownMerchant,
    /// No such registered bank account.
    UnknownBankAccount,
    /// No such alert.
    UnknownAlert,
    /// The enrolment code is unknown, expired, used, locked after wrong proofs, or the
    /// proof does not match it (the message says which).
    EnrolmentRefused,
    /// The hub failed; retry later.
    Internal,
}

impl RejectReason {
    /// Whether resending the same message can never succeed. An agent moves such a message
    /// out of its outbox into dead letters instead of retrying it forever.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RejectReason::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    #[test]
    fn tags_and_unknown_fields() {
        let m = AtmDown::Ack(Ack {
            ids: vec!["a".into()],
        });
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"type":"Ack","ids":["a"]}"#);
        assert_eq!(serde_json::from_str::<AtmDown>(&json).unwrap(), m);
        assert!(serde_json::from_str::<AtmDown>(r#"{"type":"Ack","ids":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<AtmDown>(r#"{"type":"Nope"}"#).is_err());
        // A message of another direction does not parse.
        assert!(serde_json::from_str::<AtmUp>(&json).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
        let hub = crate::keys::PrivateKey::generate();
        let sealer = crate::sealed::SecretSealer::new(
            hub.public().clone(),
            "d",
            crate::keys::KeyId::from_wire("k"),
        );
        let login = Login {
            account: "a".into(),
            password: sealer
                .seal(crate::sealed::SecretField::Password, "hunter2")
                .unwrap(),
            device: DeviceInfo {
                device_id: "d".into(),
                name: "n".into(),
                public_key: crate::keys::PrivateKey::generate().public().to_jwk(),
            },
            position: None,
        };
        assert!(!format!("{login:?}").contains("hunter2"));
    }

    #[test]
    fn order_notes_must_add_up() {
        let mut o = DispenseOrder {
            order_id: OrderId([1; 16]),
            tx_id: TxId([2; 16]),
            atm_id: "atm-1".into(),
            amount: Amount::new(30_000, Currency::JPY),
            notes: vec![
                NoteCount {
                    denomination: 10_000,
                    count: 2,
                },
                NoteCount {
                    denomination: 5_000,
                    count: 2,
                },
            ],
            expires_at: 0,
        };
        assert!(o.notes_match_amount());
        o.notes[1].count = 1;
        assert!(!o.notes_match_amount());
        o.notes[0] = NoteCount {
            denomination: u64::MAX,
            count: 2,
        };
        assert!(!o.notes_match_amount());
    }

    #[test]
    fn only_internal_errors_are_transient() {
        assert!(!RejectReason::Internal.is_permanent());
        assert!(RejectReason::Replayed.is_permanent());
        let r = RejectReason::Restricted { until: 5 };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"code":"restricted","until":5}"#
        );
    }
}

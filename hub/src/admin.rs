//! Operator operations as library functions: the CLI calls them, and so do tests and the
//! demo to set up without shelling out. Each runs in its own transaction and leaves an
//! `operator` entry in the audit log (never a secret).

use qrcash_protocol::messages::ReceiptStatus;
use qrcash_protocol::{Currency, Position, PublicJwk, PublicKey, TxId, topics};

use crate::error::{AdminError, StoreError};
use crate::evidence::Evidence;
use crate::identity::{HashCost, hash_secret, valid_pin};
use crate::ledger::{LedgerAccount, LedgerReport, Posting, PostingKind};
use crate::store::audit::{self, AuditEntry, AuditRow};
use crate::store::ledger as books;
use crate::store::rows::{self, AccountRow, DeviceRow, WithdrawalRow};
use crate::store::settlement::{self, CorrectionRow, CorrectionState, ResolutionRow};
use crate::store::{Db, Store, registry};
use crate::withdrawal::{Event, Phase, transition};

fn audit_op(db: Db<'_>, at: u64, cmd: &str, detail: String) -> Result<(), StoreError> {
    audit::append(
        db,
        &AuditEntry {
            at,
            source: "operator".into(),
            msg_type: Some(cmd.into()),
            outcome: "done".into(),
            detail: Some(detail),
            ..AuditEntry::default()
        },
    )
}

/// An `operator` audit entry naming who acted (resolutions and corrections).
fn audit_by(db: Db<'_>, at: u64, who: &str, cmd: &str, detail: String) -> Result<(), StoreError> {
    audit::append(
        db,
        &AuditEntry {
            at,
            source: "operator".into(),
            sender: Some(who.to_owned()),
            msg_type: Some(cmd.into()),
            outcome: "done".into(),
            detail: Some(detail),
            ..AuditEntry::default()
        },
    )
}

/// Runs an operator command's transaction, and again from the start while it loses a race
/// with a hub instance's transaction on PostgreSQL (a serialization failure or a deadlock: the
/// loser is rolled back whole, so running it again is correct), for up to
/// [`crate::handler::RETRY_FOR`]. A lost connection is not run again: whether its `COMMIT`
/// happened is unknown, so the operator is told and looks (every command's guards refuse to
/// apply twice: a second resolution finds the withdrawal settled, a second account exists).
fn transact<T>(
    store: &mut Store,
    mut body: impl FnMut(&mut Store) -> Result<T, AdminError>,
) -> Result<T, AdminError> {
    // Store errors go to the retry loop; the command's own refusals come out as they are.
    crate::handler::retry_while(
        |e| matches!(e, StoreError::Conflict(_)),
        || match body(store) {
            Err(AdminError::Store(e)) => Err(e),
            other => Ok(other),
        },
    )?
}

fn check_id(what: &str, id: &str) -> Result<(), AdminError> {
    topics::validate_id(id).map_err(|e| AdminError::Invalid(format!("{what}: {e}")))
}

/// A new customer account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Account id.
    pub id: String,
    /// Currency.
    pub currency: Currency,
    /// Login password (hashed with argon2id; at least 8 characters).
    pub password: String,
    /// PIN (4–12 digits, hashed with argon2id).
    pub pin: String,
    /// Opening balance, booked as a top-up so the ledger balances.
    pub opening_balance: u64,
}

/// Creates an account.
pub fn create_account(
    store: &mut Store,
    a: &NewAccount,
    cost: HashCost,
    now: u64,
) -> Result<(), AdminError> {
    check_id("account id", &a.id)?;
    let min = crate::handler::MIN_PASSWORD_CHARS;
    if a.password.chars().count() < min {
        return Err(AdminError::Invalid(format!(
            "the password needs at least {min} characters"
        )));
    }
    if !valid_pin(&a.pin) {
        return Err(AdminError::Invalid("the PIN must be 4 to 12 digits".into()));
    }
    if i64::try_from(a.opening_balance).is_err() {
        return Err(AdminError::Invalid("opening balance too large".into()));
    }
    let password_hash = hash_secret(&a.password, cost).map_err(AdminError::Invalid)?;
    let pin_hash = hash_secret(&a.pin, cost).map_err(AdminError::Invalid)?;
    transact(store, |store| {
        let tx = store.begin()?;
        if rows::account(tx.db(), &a.id)?.is_some() {
            return Err(AdminError::Exists(format!("account {}", a.id)));
        }
        registry::insert_account(tx.db(), &a.id, a.currency, &password_hash, &pin_hash, now)?;
        if a.opening_balance > 0 {
            let p = Posting::movement(
                PostingKind::TopUp,
                LedgerAccount::TopUpSource(a.currency),
                LedgerAccount::Available(a.id.clone()),
                a.opening_balance,
                a.currency,
                format!("open-{}", a.id),
                "opening balance",
            )
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
            books::apply(tx.db(), &p, now)?;
        }
        audit_op(
            tx.db(),
            now,
            "account create",
            format!("{} in {} opening {}", a.id, a.currency, a.opening_balance),
        )?;
        tx.commit()?;
        Ok(())
    })
}

/// Sets a new password (the customer asked support); starts the recent-change warning
/// window and ends the session of every device of the account, which must log in again with
/// the new password. Returns the devices signed out.
pub fn change_password(
    store: &mut Store,
    id: &str,
    password: &str,
    cost: HashCost,
    now: u64,
) -> Result<Vec<String>, AdminError> {
    let min = crate::handler::MIN_PASSWORD_CHARS;
    if password.chars().count() < min {
        return Err(AdminError::Invalid(format!(
            "the password needs at least {min} characters"
        )));
    }
    let hash = hash_secret(password, cost).map_err(AdminError::Invalid)?;
    transact(store, |store| {
        let tx = store.begin()?;
        if !rows::set_password(tx.db(), id, &hash, now)? {
            return Err(AdminError::NotFound(format!("account {id}")));
        }
        let signed_out = rows::end_sessions(tx.db(), id, None)?;
        audit_op(
            tx.db(),
            now,
            "account password",
            format!("{id}; signed out: {}", signed_out.join(", ")),
        )?;
        tx.commit()?;
        Ok(signed_out)
    })
}

/// Ends the session of every device of an account ("sign out all devices", e.g. when the
/// customer reports a lost phone before it is revoked). Returns the devices signed out.
pub fn sign_out_devices(store: &mut Store, id: &str, now: u64) -> Result<Vec<String>, AdminError> {
    transact(store, |store| {
        let tx = store.begin()?;
        if rows::account(tx.db(), id)?.is_none() {
            return Err(AdminError::NotFound(format!("account {id}")));
        }
        let signed_out = rows::end_sessions(tx.db(), id, None)?;
        audit_op(
            tx.db(),
            now,
            "account sign-out",
            format!("{id}; signed out: {}", signed_out.join(", ")),
        )?;
        tx.commit()?;
        Ok(signed_out)
    })
}

/// An account with its balances and devices.
#[derive(Debug, Clone)]
pub struct AccountView {
    /// The account.
    pub account: AccountRow,
    /// Spendable.
    pub available: u64,
    /// Held for withdrawals in progress or in doubt.
    pub held: u64,
    /// Its devices.
    pub devices: Vec<DeviceRow>,
}

/// Shows an account.
pub fn show_account(store: &Store, id: &str) -> Result<AccountView, AdminError> {
    let db = store.db();
    let account =
        rows::account(db, id)?.ok_or_else(|| AdminError::NotFound(format!("account {id}")))?;
    let (available, held) = books::customer_balances(db, id)?;
    Ok(AccountView {
        account,
        available,
        held,
        devices: rows::devices(db, Some(id))?,
    })
}

/// Clears a freeze ("not me") after the operator has checked with the customer.
pub fn unfreeze_account(store: &mut Store, id: &str, now: u64) -> Result<(), AdminError> {
    transact(store, |store| {
        let tx = store.begin()?;
        let a = rows::account(tx.db(), id)?
            .ok_or_else(|| AdminError::NotFound(format!("account {id}")))?;
        if !a.frozen {
            return Err(AdminError::WrongState(format!(
                "account {id} is not frozen"
            )));
        }
        rows::set_frozen(tx.db(), id, false, None, now)?;
        audit_op(
            tx.db(),
            now,
            "account unfreeze",
            format!("{id} (was: {})", a.frozen_reason.unwrap_or_default()),
        )?;
        tx.commit()?;
        Ok(())
    })
}

/// A bank account registered for payouts.
#[derive(Debug, Clone)]
pub struct NewBankAccount {
    /// Its id (quoted by `BankWithdrawal`).
    pub id: String,
    /// The customer account it belongs to.
    pub account: String,
    /// Bank name.
    pub bank: String,
    /// Account number.
    pub number: String,
    /// Holder name.
    pub holder: String,
}

/// Registers a bank account for payouts.
pub fn add_bank_account(store: &mut Store, b: &NewBankAccount, now: u64) -> Result<(), AdminError> {
    check_id("bank account id", &b.id)?;
    transact(store, |store| {
        let tx = store.begin()?;
        if rows::account(tx.db(), &b.account)?.is_none() {
            return Err(AdminError::NotFound(format!("account {}", b.account)));
        }
        if rows::bank_account_owner(tx.db(), &b.id)?.is_some() {
            return Err(AdminError::Exists(format!("bank account {}", b.id)));
        }
        registry::insert_bank_account(
            tx.db(),
            &registry::BankAccountRow {
                id: &b.id,
                account: &b.account,
                bank: &b.bank,
                number: &b.number,
                holder: &b.holder,
            },
            now,
        )?;
        audit_op(
            tx.db(),
            now,
            "account bank-add",
            format!("{} for {} at {}", b.id, b.account, b.bank),
        )?;
        tx.commit()?;
        Ok(())
    })
}

/// An ATM to enrol.
#[derive(Debug, Clone)]
pub struct NewAtm {
    /// ATM id (its topic id and `iss`).
    pub id: String,
    /// Its public key.
    pub public_key: PublicJwk,
    /// Display name.
    pub name: String,
    /// Street address.
    pub address: String,
    /// Surveyed position.
    pub position: Position,
    /// Cassette denominations (minor units).
    pub denominations: Vec<u64>,
}

/// An id an ATM may be enrolled under: valid, and not one the broker ACL reserves.
fn check_atm_id(id: &str) -> Result<(), AdminError> {
    check_id("ATM id", id)?;
    if topics::RESERVED_IDS.contains(&id) {
        return Err(AdminError::Invalid(format!(
            "ATM id {id:?} is reserved (the broker ACL gives that certificate CN the hub's or the bridge's rights)"
        )));
    }
    Ok(())
}

/// A place on the map and cassettes that can pay.
fn check_place(position: &Position, denominations: &[u64]) -> Result<(), AdminError> {
    position
        .validate()
        .map_err(|e| AdminError::Invalid(format!("position: {e}")))?;
    if denominations.is_empty() || denominations.contains(&0) {
        return Err(AdminError::Invalid(
            "list the cassette denominations (non-zero)".into(),
        ));
    }
    Ok(())
}

/// Enrols an ATM (or replaces its key and details when re-enrolled).
pub fn enroll_atm(store: &mut Store, a: &NewAtm, now: u64) -> Result<(), AdminError> {
    check_atm_id(&a.id)?;
    check_place(&a.position, &a.denominations)?;
    let key = PublicKey::from_jwk(&a.public_key).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let jwk =
        serde_json::to_string(&key.to_jwk()).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let denoms =
        serde_json::to_string(&a.denominations).map_err(|e| AdminError::Invalid(e.to_string()))?;
    transact(store, |store| {
        let tx = store.begin()?;
        registry::enroll_atm(
            tx.db(),
            &registry::AtmEnrolment {
                id: &a.id,
                name: &a.name,
                address: &a.address,
                position: a.position,
                public_jwk: &jwk,
                kid: key.kid().as_str(),
                denominations: &denoms,
            },
            now,
        )?;
        audit_op(
            tx.db(),
            now,
            "atm enroll",
            format!("{} key {} at {}", a.id, key.kid(), a.address),
        )?;
        tx.commit()?;
        Ok(())
    })
}

/// How long an enrolment code stays valid at most (30 days).
pub const MAX_ENROLMENT_VALIDITY_S: u64 = 30 * 86_400;

/// Issues a one-time enrolment code for ATM `id` (`protocol::enrol`), valid for `valid_for_s`
/// seconds, replacing any earlier code of that ATM. An ATM not enrolled yet needs `pending`
/// (its place and cassettes, enrolled with the key the board brings); an enrolled one keeps
/// its place and gets the board's key (a replaced board, or a re-keyed one). The hub keeps
/// only the code's proof key; the code itself is returned once, for the operator to hand
/// over.
pub fn issue_enrolment_code(
    store: &mut Store,
    id: &str,
    pending: Option<registry::PendingAtm>,
    valid_for_s: u64,
    now: u64,
) -> Result<qrcash_protocol::enrol::EnrolmentCode, AdminError> {
    check_atm_id(id)?;
    if valid_for_s == 0 || valid_for_s > MAX_ENROLMENT_VALIDITY_S {
        return Err(AdminError::Invalid(format!(
            "an enrolment code is valid for 1 s to {} days",
            MAX_ENROLMENT_VALIDITY_S / 86_400
        )));
    }
    transact(store, |store| {
        let tx = store.begin()?;
        let existing = rows::atm(tx.db(), id)?;
        match (&existing, &pending) {
            (None, None) => {
                return Err(AdminError::Invalid(format!(
                    "ATM {id} is not enrolled yet: give its --name, --address, --lat, --lon and --denominations"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(AdminError::Invalid(format!(
                    "ATM {id} is enrolled: its place and cassettes stay (change them with `atm enroll`); leave out --name and the rest"
                )));
            }
            (None, Some(p)) => check_place(&p.position, &p.denominations)?,
            (Some(_), None) => {}
        }
        let code = qrcash_protocol::enrol::EnrolmentCode::generate();
        let key = qrcash_protocol::enrol::proof_key(&code);
        let expires_at = now.saturating_add(valid_for_s);
        registry::put_enrolment(
            tx.db(),
            &registry::EnrolmentRow {
                atm_id: id.to_owned(),
                proof_key: data_encoding::HEXLOWER.encode(&key),
                issued_at: now,
                expires_at,
                failures: 0,
                used: None,
                pending: pending.clone(),
            },
        )?;
        audit_op(
            tx.db(),
            now,
            "atm enrol-code",
            format!("{id}: a code valid until {expires_at}"),
        )?;
        tx.commit()?;
        Ok(code)
    })
}

/// A merchant to register.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    /// Merchant id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Currency it accepts.
    pub currency: Currency,
    /// Where it is.
    pub position: Position,
}

/// Registers a merchant.
pub fn add_merchant(store: &mut Store, m: &NewMerchant, now: u64) -> Result<(), AdminError> {
    check_id("merchant id", &m.id)?;
    m.position
        .validate()
        .map_err(|e| AdminError::Invalid(format!("position: {e}")))?;
    transact(store, |store| {
        let tx = store.begin()?;
        if rows::merchant(tx.db(), &m.id)?.is_some() {
            return Err(AdminError::Exists(format!("merchant {}", m.id)));
        }
        registry::insert_merchant(tx.db(), &m.id, &m.name, m.currency, m.position, now)?;
        audit_op(tx.db(), now, "merchant add", format!("{} {}", m.id, m.name))?;
        tx.commit()?;
        Ok(())
    })
}

/// Devices, of one account or all.
pub fn list_devices(store: &Store, account: Option<&str>) -> Result<Vec<DeviceRow>, AdminError> {
    Ok(rows::devices(store.db(), account)?)
}

/// Revokes a device.
pub fn revoke_device(
    store: &mut Store,
    id: &str,
    reason: &str,
    now: u64,
) -> Result<(), AdminError> {
    transact(store, |store| {
        let tx = store.begin()?;
        if !rows::revoke_device(tx.db(), id, reason, now)? {
            return Err(AdminError::NotFound(format!("active device {id}")));
        }
        audit_op(tx.db(), now, "device revoke", format!("{id}: {reason}"))?;
        tx.commit()?;
        Ok(())
    })
}

/// Devices under a restriction still in force at `now`.
pub fn list_restrictions(store: &Store, now: u64) -> Result<Vec<DeviceRow>, AdminError> {
    Ok(rows::devices(store.db(), None)?
        .into_iter()
        .filter(|d| d.restricted_until.is_some_and(|u| u > now))
        .collect())
}

/// Lifts a device's restriction before its time.
pub fn lift_restriction(store: &mut Store, device: &str, now: u64) -> Result<(), AdminError> {
    transact(store, |store| {
        let tx = store.begin()?;
        let d = rows::device(tx.db(), device)?
            .ok_or_else(|| AdminError::NotFound(format!("device {device}")))?;
        if d.restricted_until.is_none() {
            return Err(AdminError::WrongState(format!(
                "device {device} is not restricted"
            )));
        }
        rows::set_restriction(tx.db(), device, None, None)?;
        audit_op(
            tx.db(),
            now,
            "restriction lift",
            format!(
                "{device} ({} until {:?})",
                d.restriction_reason.unwrap_or_default(),
                d.restricted_until
            ),
        )?;
        tx.commit()?;
        Ok(())
    })
}

/// Which withdrawals to list.
#[derive(Debug, Clone, Default)]
pub struct TxFilter {
    /// Only this phase.
    pub phase: Option<Phase>,
    /// Only those flagged for reconciliation.
    pub flagged: bool,
    /// Only this account.
    pub account: Option<String>,
    /// At most this many (newest).
    pub limit: Option<usize>,
}

/// Lists withdrawals.
pub fn list_withdrawals(store: &Store, f: &TxFilter) -> Result<Vec<WithdrawalRow>, AdminError> {
    let mut list = rows::withdrawals(
        store.db(),
        &rows::Listing::Matching {
            phase: f.phase,
            flagged: f.flagged,
            account: f.account.as_deref(),
        },
    )?;
    if let Some(n) = f.limit {
        let skip = list.len().saturating_sub(n);
        list.drain(..skip);
    }
    Ok(list)
}

pub use crate::store::settlement::ReportRow;

/// One withdrawal with every dispense report received for it.
pub fn show_withdrawal(
    store: &Store,
    tx: &TxId,
) -> Result<(WithdrawalRow, Vec<ReportRow>), AdminError> {
    let db = store.db();
    let w = rows::withdrawal(db, tx)?
        .ok_or_else(|| AdminError::NotFound(format!("transaction {tx}")))?;
    let reports = settlement::received_reports(db, tx)?;
    Ok((w, reports))
}

/// An operator's settlement of a withdrawal whose cash is in doubt.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Minor units the customer received, as counted (the machine's cash count, the
    /// journal, the customer's statement).
    pub dispensed: u64,
    /// Who settles it.
    pub operator: String,
    /// Why this amount (kept with the evidence and in the audit log).
    pub reason: String,
}

/// What is known about the cash of `w`: its order's notes and every report for its order.
pub fn evidence_of(db: Db<'_>, w: &WithdrawalRow) -> Result<Evidence, AdminError> {
    let reports = match &w.order_id {
        Some(order) => settlement::reports_of(db, &w.tx_id, order)?,
        None => Vec::new(),
    };
    Ok(Evidence::new(
        w.amount,
        w.notes.as_deref().unwrap_or_default(),
        &reports,
    ))
}

/// The evidence of one withdrawal (see [`crate::evidence`]).
pub fn withdrawal_evidence(store: &Store, tx_id: &TxId) -> Result<Evidence, AdminError> {
    let w = rows::withdrawal(store.db(), tx_id)?
        .ok_or_else(|| AdminError::NotFound(format!("transaction {tx_id}")))?;
    evidence_of(store.db(), &w)
}

/// The receipt push for a settled withdrawal, to the device that confirmed it.
fn queue_receipt(
    db: Db<'_>,
    w: &WithdrawalRow,
    settled: u64,
    status: ReceiptStatus,
    now: u64,
) -> Result<(), AdminError> {
    let (device, receipt) = crate::handler::receipt_for(db, w, settled, status, now)?;
    Ok(settlement::queue_push(db, &device, &receipt, now)?)
}

/// Settles a withdrawal whose cash is in doubt with the amount the operator counted; returns
/// the final phase. Refused (nothing changes) while the order may still be executed (before
/// its expiry plus `report_grace_s`, unless the ATM reported), when the amount lies outside
/// the evidence's bounds or cannot be paid in the order's notes, and without an operator
/// and a reason. The resolution is recorded with the evidence, and a receipt is queued for
/// the customer's phone (the running service publishes it).
pub fn resolve_withdrawal(
    store: &mut Store,
    tx_id: &TxId,
    r: &Resolution,
    report_grace_s: u64,
    now: u64,
) -> Result<Phase, AdminError> {
    if r.operator.trim().is_empty() || r.reason.trim().is_empty() {
        return Err(AdminError::Invalid(
            "a resolution names the operator and the reason".into(),
        ));
    }
    transact(store, |store| {
        let tx = store.begin()?;
        let w = rows::withdrawal(tx.db(), tx_id)?
            .ok_or_else(|| AdminError::NotFound(format!("transaction {tx_id}")))?;
        if w.phase == Phase::Ordered {
            let live_until = w
                .order_expires_at
                .unwrap_or(0)
                .saturating_add(report_grace_s);
            if now < live_until {
                return Err(AdminError::WrongState(format!(
                    "{tx_id} is ordered and its ATM has not reported: the order may still be \
                 executed; resolve after {live_until} (order expiry plus report grace) or once \
                 the ATM reports"
                )));
            }
        }
        if !matches!(w.phase, Phase::Ordered | Phase::InDoubt) {
            return Err(AdminError::WrongState(format!(
                "{tx_id} is {}: only a withdrawal whose cash is in doubt is resolved",
                w.phase
            )));
        }
        let evidence = evidence_of(tx.db(), &w)?;
        evidence
            .check(r.dispensed)
            .map_err(|e| AdminError::Invalid(format!("{tx_id}: {e}")))?;
        let step = transition(
            &w.lifecycle(),
            Event::Resolve {
                dispensed: r.dispensed,
            },
        )
        .map_err(|e| AdminError::WrongState(e.to_string()))?;
        if !rows::set_phase(tx.db(), tx_id, w.phase, step.next, now)? {
            return Err(AdminError::WrongState(format!(
                "transaction {tx_id} changed concurrently"
            )));
        }
        for effect in &step.ledger {
            books::apply(tx.db(), &crate::handler::posting_for(&w, *effect)?, now)?;
        }
        let note = format!(
            "resolved by {}: {} paid out ({})",
            r.operator, r.dispensed, r.reason
        );
        rows::record_settlement(tx.db(), tx_id, step.settled, false, Some(&note))?;
        let evidence_json = evidence_json(&evidence);
        settlement::record_resolution(
            tx.db(),
            tx_id,
            &settlement::ResolutionRow {
                operator: r.operator.clone(),
                reason: r.reason.clone(),
                dispensed: r.dispensed,
                low: evidence.low,
                high: evidence.high,
                evidence: evidence_json.clone(),
                resolved_at: now,
            },
        )?;
        if let Some(status) = step.receipt {
            queue_receipt(tx.db(), &w, step.settled, status, now)?;
        }
        audit_by(
            tx.db(),
            now,
            &r.operator,
            "tx resolve",
            format!(
                "{tx_id} {} → {} ({} paid out; bounds {}..={}; reason: {}; evidence: {evidence_json})",
                w.phase, step.next, r.dispensed, evidence.low, evidence.high, r.reason
            ),
        )?;
        tx.commit()?;
        Ok(step.next)
    })
}

/// The evidence as a JSON document for the record.
fn evidence_json(e: &Evidence) -> String {
    serde_json::json!({
        "amount": e.amount,
        "planned": e.planned,
        "counted": e.counted,
        "low": e.low,
        "high": e.high,
        "conflicting": e.conflicting,
        "reports": e.reports.iter().map(|r| serde_json::json!({
            "outcome": r.outcome,
            "source": r.source,
            "counted": r.counted,
            "bounds": r.bounds,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The resolution of a withdrawal, if an operator settled it.
pub fn resolution_of(store: &Store, tx_id: &TxId) -> Result<Option<ResolutionRow>, AdminError> {
    Ok(settlement::resolution(store.db(), tx_id)?)
}

/// Corrections of one withdrawal, or of all (`None`); only waiting ones with `open`.
pub fn corrections(
    store: &Store,
    tx_id: Option<&TxId>,
    open: bool,
) -> Result<Vec<CorrectionRow>, AdminError> {
    Ok(settlement::corrections(store.db(), tx_id, open)?)
}

/// Decides a proposed correction. Approval books the difference between the customer and
/// the ATM cash account, moves the withdrawal to the phase of its new amount, clears its
/// flag and queues a corrected receipt; it is refused when the settlement changed since the
/// proposal or the customer's balance does not cover an additional charge. Rejection keeps
/// the books and the flag. Either way the decision, its operator and note are recorded.
pub fn decide_correction(
    store: &mut Store,
    id: i64,
    approve: bool,
    operator: &str,
    note: &str,
    now: u64,
) -> Result<Phase, AdminError> {
    if operator.trim().is_empty() || note.trim().is_empty() {
        return Err(AdminError::Invalid(
            "a decision names the operator and the reason".into(),
        ));
    }
    transact(store, |store| {
        let tx = store.begin()?;
        let c = settlement::correction(tx.db(), id)?
            .ok_or_else(|| AdminError::NotFound(format!("correction {id}")))?;
        if c.state != CorrectionState::Proposed {
            return Err(AdminError::WrongState(format!(
                "correction {id} was already decided"
            )));
        }
        let tx_id: TxId = c
            .tx_id
            .parse()
            .map_err(|e: String| AdminError::Store(StoreError::Corrupt(e)))?;
        let w = rows::withdrawal(tx.db(), &tx_id)?
            .ok_or_else(|| AdminError::NotFound(format!("transaction {tx_id}")))?;
        let state = if approve {
            CorrectionState::Approved
        } else {
            CorrectionState::Rejected
        };
        if !settlement::decide_correction(tx.db(), id, state, operator, note, now)? {
            return Err(AdminError::WrongState(format!(
                "correction {id} changed concurrently"
            )));
        }
        if !approve {
            audit_by(
                tx.db(),
                now,
                operator,
                "tx correction reject",
                format!("correction {id} of {tx_id}: {note}"),
            )?;
            tx.commit()?;
            return Ok(w.phase);
        }
        if w.settled != c.from_settled || !w.phase.is_final() {
            return Err(AdminError::WrongState(format!(
                "{tx_id} is now {} settled {}, not {} as when correction {id} was proposed",
                w.phase, w.settled, c.from_settled
            )));
        }
        if c.to_settled > w.amount.minor {
            return Err(AdminError::Invalid(format!(
                "correction {id} exceeds the amount of {tx_id}"
            )));
        }
        let cur = w.amount.currency;
        let cash = LedgerAccount::AtmCash(w.atm_id.clone().unwrap_or_else(|| "?".into()), cur);
        let (from, to, v, text) = if c.to_settled > c.from_settled {
            (
                LedgerAccount::Available(w.account.clone()),
                cash,
                c.to_settled - c.from_settled,
                format!("correction {id}: more cash left the ATM than was settled"),
            )
        } else {
            (
                cash,
                LedgerAccount::Available(w.account.clone()),
                c.from_settled - c.to_settled,
                format!("correction {id}: less cash left the ATM than was settled"),
            )
        };
        if v > 0 {
            let posting = Posting::movement(
                PostingKind::Correction,
                from,
                to,
                v,
                cur,
                tx_id.to_string(),
                text,
            )
            .map_err(|e| AdminError::Store(StoreError::Unbalanced(e.to_string())))?;
            match books::apply(tx.db(), &posting, now) {
                Ok(_) => {}
                Err(StoreError::Overdraft(account)) => {
                    return Err(AdminError::WrongState(format!(
                        "{account} does not cover the additional {v}: settle with the customer \
                     first (top-up), then approve"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (phase, status) = if c.to_settled == w.amount.minor {
            (Phase::Dispensed, ReceiptStatus::Completed)
        } else if c.to_settled == 0 {
            (Phase::Failed, ReceiptStatus::Failed)
        } else {
            (Phase::Partial, ReceiptStatus::Partial)
        };
        if phase != w.phase && !rows::set_phase(tx.db(), &tx_id, w.phase, phase, now)? {
            return Err(AdminError::WrongState(format!(
                "transaction {tx_id} changed concurrently"
            )));
        }
        let record = format!(
            "corrected by {operator} (correction {id}): {} → {} paid out ({note})",
            c.from_settled, c.to_settled
        );
        rows::record_settlement(tx.db(), &tx_id, c.to_settled, false, Some(&record))?;
        queue_receipt(tx.db(), &w, c.to_settled, status, now)?;
        audit_by(
            tx.db(),
            now,
            operator,
            "tx correction approve",
            format!("{tx_id}: {record}"),
        )?;
        tx.commit()?;
        Ok(phase)
    })
}

/// Clears the reconciliation flag of a withdrawal in a final phase after the operator
/// looked into it (e.g. a late report that disagreed), with a note for the record.
pub fn clear_flag(store: &mut Store, tx_id: &TxId, note: &str, now: u64) -> Result<(), AdminError> {
    transact(store, |store| {
        let tx = store.begin()?;
        let w = rows::withdrawal(tx.db(), tx_id)?
            .ok_or_else(|| AdminError::NotFound(format!("transaction {tx_id}")))?;
        if !w.needs_reconciliation {
            return Err(AdminError::WrongState(format!("{tx_id} is not flagged")));
        }
        if !w.phase.is_final() {
            return Err(AdminError::WrongState(format!(
                "{tx_id} is {}: settle it with `tx resolve`",
                w.phase
            )));
        }
        let note = format!("reconciled by operator: {note}");
        rows::record_settlement(tx.db(), tx_id, w.settled, false, Some(&note))?;
        audit_op(tx.db(), now, "tx clear-flag", format!("{tx_id}: {note}"))?;
        tx.commit()?;
        Ok(())
    })
}

/// Checks the books (see [`books::check`]).
pub fn ledger_check(store: &Store) -> Result<LedgerReport, AdminError> {
    Ok(books::check(store.db())?)
}

/// Reconciles ATM `id`'s reported cassette counts with the notes its dispense reports say were
/// picked: one interval per change of counts, oldest first (`reconcile`).
pub fn reconcile_atm(
    store: &Store,
    id: &str,
) -> Result<Vec<crate::reconcile::Interval>, AdminError> {
    let db = store.db();
    if rows::atm(db, id)?.is_none() {
        return Err(AdminError::Invalid(format!("no ATM {id}")));
    }
    let history = rows::atm_count_history(db, id)?;
    let mut out = Vec::new();
    for pair in history.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let picked = rows::picked_notes_between(db, id, before.reports_upto, after.reports_upto)?;
        out.push(crate::reconcile::Interval {
            from: before.at,
            to: after.at,
            cassettes: crate::reconcile::judge(&before.counts, &after.counts, &picked),
        });
    }
    Ok(out)
}

/// The latest audit entries.
pub fn audit_tail(store: &Store, n: usize) -> Result<Vec<AuditRow>, AdminError> {
    Ok(audit::tail(store.db(), n)?)
}

/// Withdrawals still in a non-final phase, or flagged (for tests and monitoring).
pub fn unsettled(store: &Store) -> Result<Vec<WithdrawalRow>, AdminError> {
    Ok(rows::withdrawals(store.db(), &rows::Listing::Unsettled)?)
}

/// The hub's outgoing sequence counter (tests: strictly increasing across restarts).
pub fn hub_seq(store: &Store) -> Result<u64, AdminError> {
    Ok(crate::store::current_seq(store.db())?)
}
